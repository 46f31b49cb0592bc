"""Backend-neutral rules for building and checking stored records.

Both backends use these so that they agree on defaults, on what an update
changes, and on which references are dangling; the contract tests pin them.
Nothing here does I/O.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping
from typing import Any

from .base import ENV_FLAG_FIELDS, GLOBAL_FLAG_FIELDS, SEGMENT_FIELDS, InvalidReference, Record

BUCKETS = 10_000

_GLOBAL_DEFAULTS: Record = {
    "description": "",
    "tags": [],
    "owner": None,
    "variants": ["off", "on"],
    "salt": None,  # None means "the flag key", filled in by flag_globals
    "bucket_by": "key",
    "hash_version": 1,
}
_STATE_DEFAULTS: Record = {"enabled": False, "rules": [], "rollout": 0}
_SEGMENT_DEFAULTS: Record = {
    "description": "",
    "included": [],
    "excluded": [],
    "conditions": [],
    "percentage": None,
    "bucket_by": "key",
}


def _merge(names: tuple[str, ...], given: Mapping[str, Any], base: Mapping[str, Any]) -> Record:
    # Deep copies: a caller mutating its dict afterwards must not change ours.
    return {name: copy.deepcopy(given[name] if name in given else base[name]) for name in names}


def flag_globals(key: str, given: Mapping[str, Any], current: Mapping[str, Any] | None = None) -> Record:
    """The global fields of a flag: those present in `given` replace `current`
    (or the defaults when creating); fields absent from `given` are kept.
    An empty salt means the flag key."""
    out = _merge(GLOBAL_FLAG_FIELDS, given, current if current is not None else _GLOBAL_DEFAULTS)
    if not out["salt"]:
        out["salt"] = key
    return out


def flag_state(given: Mapping[str, Any], current: Mapping[str, Any] | None = None) -> Record:
    """The per-environment fields of a flag, merged the same way as `flag_globals`."""
    return _merge(ENV_FLAG_FIELDS, given, current if current is not None else _STATE_DEFAULTS)


def placeholder_state(variants: list[str], like_rollout: Any) -> Record:
    """The state of a flag in an environment nobody configured yet: disabled, no
    rules, nobody in the rollout. A weights rollout becomes all weight on the
    first variant, so that the flag keeps the same kind of rollout everywhere."""
    rollout: Any = {variants[0]: BUCKETS} if isinstance(like_rollout, Mapping) else 0
    return {"enabled": False, "rules": [], "rollout": rollout}


def segment_fields(given: Mapping[str, Any], current: Mapping[str, Any] | None = None) -> Record:
    """The writable fields of a segment, merged the same way as `flag_globals`."""
    return _merge(SEGMENT_FIELDS, given, current if current is not None else _SEGMENT_DEFAULTS)


def check_rule_segments(env: str, rules: list[Any], segment_keys: Collection[str]) -> None:
    """Raise `InvalidReference` (field `rules[i].segments`) when a rule names a
    segment that `env` lacks."""
    for i, rule in enumerate(rules):
        for name in rule.get("segments") or ():
            if name not in segment_keys:
                raise InvalidReference(
                    f"rules[{i}].segments", f"segment {name!r} does not exist in environment {env!r}"
                )


def check_variants(env: str, rules: list[Any], rollout: Any, variants: list[str], *, field: str | None = None) -> None:
    """Raise `InvalidReference` when a rule's `serve`, a rule's weights or the
    flag's weights name a variant not in `variants`. The field is the offending
    one (`rules[0].serve`, `rules[1].rollout`, `rollout`) unless `field` is given,
    as it is when a change of `variants` would break another environment."""

    def fail(where: str, variant: Any) -> None:
        raise InvalidReference(
            field or where, f"variant {variant!r} used by {where} in environment {env!r} is not one of {variants}"
        )

    for i, rule in enumerate(rules):
        serve = rule.get("serve")
        if serve is not None and serve not in variants:
            fail(f"rules[{i}].serve", serve)
        weights = rule.get("rollout")
        if isinstance(weights, Mapping):
            for name in weights:
                if name not in variants:
                    fail(f"rules[{i}].rollout", name)
    if isinstance(rollout, Mapping):
        for name in rollout:
            if name not in variants:
                fail("rollout", name)


def rules_using(rules: list[Any], segment: str) -> list[int]:
    """Indices of the rules that name `segment`."""
    return [i for i, rule in enumerate(rules) if segment in (rule.get("segments") or ())]


def starts_stage(before: Mapping[str, Any], after: Mapping[str, Any]) -> bool:
    """Whether an update from `before` to `after` (flag records of one environment)
    begins a new rollout stage: `enabled` or `rollout` changed. Weights compare in
    their declared order, which decides who gets which variant; 25 and 25.0 are
    the same percentage."""
    if bool(before["enabled"]) != bool(after["enabled"]):
        return True
    old, new = before["rollout"], after["rollout"]
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        return list(old.items()) != list(new.items())
    return bool(isinstance(old, Mapping) != isinstance(new, Mapping) or old != new)
