"""The Redis key layout of `RedisStore` (docs/redis.md describes it).

Every key starts with the store's prefix. A variable part (an environment key or a
target key) only ever comes last, after a fixed word, so two different names can
never produce the same Redis key whatever characters they contain.
"""

from __future__ import annotations

from dataclasses import dataclass

SCHEMA_VERSION = 1


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

    @property
    def config_channel(self) -> str:
        """Pub/sub channel: the name of an environment whose config document changed."""
        return f"{self.prefix}config"
