"""The storage protocol every backend meets, and the errors it raises.

Records cross this boundary as plain JSON-compatible dicts:

- environment: `{"key", "name", "created_at"}`
- flag, as one environment sees it: the global fields `key, description, tags,
  owner, variants, salt, bucket_by, hash_version` and the per-environment fields
  `enabled, rules, rollout`, plus `version` (per environment, from 1) and
  `updated_at`. `rules` and `rollout` are in the wire form of DESIGN.md.
- segment (per environment): `key, description, included, excluded, conditions,
  percentage, bucket_by, version, updated_at`.
- token: `{"id", "name", "kind" ("admin" | "sdk"), "environment" (sdk only, else
  None), "created_at"}`; the secret itself is never stored, only its hash.
- audit entry: `{"id", "at", "actor", "action", "environment", "target_type",
  "target_key", "before", "after"}`, `before`/`after` being records or None.

Every write happens in one transaction together with its audit entry, and bumps
the `config_version` of each environment whose config document it changes.
Writes that name an `expected_version` compare it atomically with the stored one
and raise `VersionConflict` without changing anything when they differ.

Conventions both backends keep (pinned by tests/storage/test_store_contract.py):
- methods scoped to an environment raise `NotFound("environment")` for an unknown
  one, reads included; `get_flag`/`get_segment` return None only for a missing
  flag or segment of a known environment;
- create fills absent fields with defaults; update replaces the fields present
  in its dict and keeps the others; each successful update adds 1 to the version;
- a rule naming a missing segment, or a variant the flag lacks, is
  `InvalidReference` (field `rules[i].segments`, `rules[i].serve`,
  `rules[i].rollout`, `rollout`), and so is removing a variant another
  environment still uses (field `variants`);
- lists are sorted by key (tokens by id); audit `action` is create, update or
  delete, newest entry first; token writes do not change config versions.
"""

from __future__ import annotations

from typing import Any, Protocol

from .events import EventStore
from .rollouts import RolloutStore

GLOBAL_FLAG_FIELDS = ("description", "tags", "owner", "variants", "salt", "bucket_by", "hash_version")
ENV_FLAG_FIELDS = ("enabled", "rules", "rollout")
SEGMENT_FIELDS = ("description", "included", "excluded", "conditions", "percentage", "bucket_by")

Record = dict[str, Any]


class StoreError(Exception):
    """Base of the errors a store raises on purpose."""


class NotFound(StoreError):
    def __init__(self, kind: str, key: str) -> None:
        super().__init__(f"no {kind} {key!r}")
        self.kind = kind
        self.key = key


class AlreadyExists(StoreError):
    def __init__(self, kind: str, key: str) -> None:
        super().__init__(f"{kind} {key!r} already exists")
        self.kind = kind
        self.key = key


class VersionConflict(StoreError):
    """The stored version is not the expected one; nothing was written."""

    def __init__(self, kind: str, key: str, current_version: int) -> None:
        super().__init__(f"{kind} {key!r} is at version {current_version}")
        self.kind = kind
        self.key = key
        self.current_version = current_version


class InvalidReference(StoreError):
    """A write would leave a dangling reference (a rule naming a missing segment,
    a segment deleted while a rule uses it). `field` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class StoreUnavailable(StoreError):
    """The backend cannot be reached; the operation may be retried later."""


class Store(EventStore, RolloutStore, Protocol):
    """What the server needs from storage (with the events and rollouts protocols
    of `events.py` and `rollouts.py`). Methods raise the errors above."""

    def initialize(self) -> None:
        """Create or migrate the schema. Idempotent."""

    def close(self) -> None: ...

    def ping(self) -> None:
        """Return if the backend answers; raise `StoreUnavailable` otherwise."""

    # environments
    def list_environments(self) -> list[Record]: ...
    def get_environment(self, key: str) -> Record | None: ...
    def create_environment(self, key: str, name: str, *, actor: str) -> Record:
        """Also creates every existing flag in the new environment, disabled and at 0%."""

    # flags
    def list_flags(self, env: str) -> list[Record]: ...
    def get_flag(self, env: str, key: str) -> Record | None: ...
    def create_flag(self, env: str, flag: Record, *, actor: str) -> Record:
        """Create in every environment: as given in `env`, disabled with no rules and
        rollout 0 (or all weight on the first variant) elsewhere. Version 1 everywhere."""

    def update_flag(self, env: str, key: str, flag: Record, *, expected_version: int, actor: str) -> Record:
        """Replace the writable fields. Changed global fields apply to every
        environment and bump the flag's version there too."""

    def delete_flag(self, env: str, key: str, *, expected_version: int | None, actor: str) -> None:
        """Delete the flag from every environment."""

    # segments
    def list_segments(self, env: str) -> list[Record]: ...
    def get_segment(self, env: str, key: str) -> Record | None: ...
    def create_segment(self, env: str, segment: Record, *, actor: str) -> Record: ...
    def update_segment(self, env: str, key: str, segment: Record, *, expected_version: int, actor: str) -> Record: ...
    def delete_segment(self, env: str, key: str, *, expected_version: int | None, actor: str) -> None:
        """Raises `InvalidReference` while a flag rule in `env` names the segment."""

    # the SDK's view
    def config_version(self, env: str) -> int:
        """A number that changes with every write to `env`'s config; one cheap read."""

    def config_document(self, env: str) -> Record:
        """The config document of DESIGN.md for `env`, its `version` the config version."""

    # tokens
    def create_token(self, token: Record, secret_hash: str, *, actor: str) -> Record: ...
    def find_token(self, token_id: str) -> tuple[Record, str] | None:
        """The token record and its secret hash, or None."""

    def list_tokens(self) -> list[Record]: ...
    def delete_token(self, token_id: str, *, actor: str) -> None: ...

    # audit
    def list_audit(
        self,
        *,
        environment: str | None = None,
        target_key: str | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> list[Record]:
        """Newest first."""
