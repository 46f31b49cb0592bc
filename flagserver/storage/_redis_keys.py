"""The Redis key layout of `RedisStore` (docs/redis.md describes it).

Every key starts with the store's prefix. A variable part (an environment key or a
target key) only ever comes last, after a fixed word, so two different names can
never produce the same Redis key whatever characters they contain. Keys naming two
variable parts (an environment and a batch id or a flag) give the first one's
length before it (`batch:10:production:<id>`), which keeps them unambiguous too.
"""

from __future__ import annotations

from dataclasses import dataclass

# 2: rollout stages, exposures and rollouts (`initialize` gives the flags of a
# layout-1 prefix their stage 1).
SCHEMA_VERSION = 2


def _pair(first: str, second: str) -> str:
    return f"{len(first)}:{first}:{second}"


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str

    @property
    def schema(self) -> str:
        """String: the layout version (`SCHEMA_VERSION`), set by `initialize`."""
        return f"{self.prefix}schema"

    @property
    def environments(self) -> str:
        """Hash: environment key -> JSON `{name, created_at}`."""
        return f"{self.prefix}envs"

    @property
    def flag_globals(self) -> str:
        """Hash: flag key -> JSON of the flag's global fields (one per flag, all environments)."""
        return f"{self.prefix}flagdefs"

    def flags(self, env: str) -> str:
        """Hash: flag key -> JSON `{enabled, rules, rollout, version, updated_at}` in `env`."""
        return f"{self.prefix}flags:{env}"

    def segments(self, env: str) -> str:
        """Hash: segment key -> JSON segment record (without its key) in `env`.
        It is also the segment index that flag writes naming segments WATCH."""
        return f"{self.prefix}segs:{env}"

    def config_version(self, env: str) -> str:
        """String counter: `env`'s config version, INCR'd by every write that changes its document."""
        return f"{self.prefix}cfgver:{env}"

    @property
    def tokens(self) -> str:
        """Hash: token id -> JSON `{name, kind, environment, created_at, secret_hash}`."""
        return f"{self.prefix}tokens"

    @property
    def audit_seq(self) -> str:
        """String counter: the id of the newest audit entry."""
        return f"{self.prefix}audit:seq"

    @property
    def audit(self) -> str:
        """Hash: audit id -> JSON audit entry."""
        return f"{self.prefix}audit"

    def audit_by_env(self, env: str) -> str:
        """Sorted set: ids of the audit entries of `env` (member = score = id)."""
        return f"{self.prefix}audit:env:{env}"

    def audit_by_target(self, target_key: str) -> str:
        """Sorted set: ids of the audit entries whose target_key is `target_key`."""
        return f"{self.prefix}audit:key:{target_key}"

    # events (docs/storage-events.md)

    def stages(self, env: str) -> str:
        """Hash: flag key -> JSON list of the flag's stages in `env`, oldest first:
        `[{id, stage, start_version, started_at, rollout, enabled}, ...]`."""
        return f"{self.prefix}stages:{env}"

    @property
    def stage_seq(self) -> str:
        """String counter: the last stage id handed out (ids are never reused)."""
        return f"{self.prefix}stage:seq"

    @property
    def stage_prefix(self) -> str:
        """What `stage_counts_of` puts before a stage id (the events script builds those keys)."""
        return f"{self.prefix}stage:"

    def stage_counts_of(self, stage_id: int | str) -> str:
        """Hash: the counters of one stage (field names in `_redis_events`)."""
        return f"{self.prefix}stage:{stage_id}"

    def exposed(self, env: str) -> str:
        """Hash: user key -> that user's exposures in `env`, one entry per stage
        (`stage id,arm id,flags,first_at[,event id...]`, `;` between entries)."""
        return f"{self.prefix}exposed:{env}"

    def names(self, env: str) -> str:
        """Hash: the small ids of arm and event names in `env` (`n:<name>` -> id,
        `i:<id>` -> name, `#` -> the last id)."""
        return f"{self.prefix}names:{env}"

    def batch(self, env: str, batch_id: str) -> str:
        """String with a TTL: `batch_id` was recorded in `env`."""
        return f"{self.prefix}batch:{_pair(env, batch_id)}"

    # rollouts

    def rollouts(self, env: str) -> str:
        """Hash: flag key -> JSON `{plan, state, version, updated_at}` in `env`."""
        return f"{self.prefix}rollouts:{env}"

    def decisions(self, env: str, flag: str) -> str:
        """List: a rollout's decisions as JSON, newest first, at most `DECISIONS_KEPT`."""
        return f"{self.prefix}decisions:{_pair(env, flag)}"

    def lease(self, name: str) -> str:
        """String `<expires_at> <holder>` with a TTL: who holds the lease `name`, until when."""
        return f"{self.prefix}lease:{name}"

    @property
    def config_channel(self) -> str:
        """Pub/sub channel: the name of an environment whose config document changed."""
        return f"{self.prefix}config"
