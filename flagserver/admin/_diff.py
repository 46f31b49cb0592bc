"""Field-level differences between an audit entry's `before` and `after` records."""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass
from typing import Any

# Bookkeeping that changes with every write and says nothing to a person: the version
# and time are shown beside each entry, and the controller's running sums would turn
# every tick into a wall of numbers.
IGNORED = frozenset({
    "version", "updated_at", "state.plan_state.last_counts", "state.plan_state.error_log_lr",
    "state.plan_state.tau", "state.plan_state.srm_log_bayes_factor", "state.plan_state.ticks_in_stage",
    "state.plan_state.last_tick_at", "state.plan_state.status_since",
})
MAX_ITEMS_SHOWN = 20
MAX_TEXT = 300


@dataclass(frozen=True, slots=True)
class Change:
    """One field: `kind` is added, removed or changed; for lists of plain values,
    `added_items` and `removed_items` say which items came and went."""

    path: str
    kind: str
    before: Any = None
    after: Any = None
    added_items: tuple[Any, ...] = ()
    removed_items: tuple[Any, ...] = ()

    @property
    def is_list_edit(self) -> bool:
        return bool(self.added_items or self.removed_items)


def _scalar_list(value: Any) -> bool:
    return isinstance(value, list) and all(not isinstance(v, (dict, list)) for v in value)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Leaves of a record by path (`rules[0].conditions[1].values`). Lists of plain
    values are leaves; an empty dict or list is a leaf too."""
    out: dict[str, Any] = {}
    if isinstance(value, dict) and value:
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(value, list) and value and not _scalar_list(value):
        for i, item in enumerate(value):
            out.update(flatten(item, f"{prefix}[{i}]"))
    else:
        out[prefix] = value
    return out


def _ignored(path: str) -> bool:
    return any(path == name or path.startswith(name + ".") or path.startswith(name + "[") for name in IGNORED)


def _has_children(paths: dict[str, Any], path: str) -> bool:
    return any(p.startswith(path + ".") or p.startswith(path + "[") for p in paths)


def diff(before: Any, after: Any) -> list[Change]:
    """The fields that differ, in the order of `after` (removed ones last). A value that
    became an object (null → {...}) shows as the object's fields; one that stopped being
    an object shows as one change."""
    old = flatten(before) if before is not None else {}
    new = flatten(after) if after is not None else {}
    changes: list[Change] = []
    collapsed: list[str] = []
    for path, value in new.items():
        if _ignored(path) or not path:
            continue
        if path not in old:
            if _has_children(old, path):
                collapsed.append(path)
                changes.append(Change(path, "changed", "{…}", value))
            else:
                changes.append(Change(path, "added", after=value))
        elif old[path] != value:
            previous = old[path]
            if _scalar_list(previous) and _scalar_list(value) and sorted(map(repr, previous)) != sorted(
                    map(repr, value)):
                added = tuple(v for v in value if v not in previous)
                removed = tuple(v for v in previous if v not in value)
                changes.append(Change(path, "changed", previous, value, added, removed))
            else:
                changes.append(Change(path, "changed", previous, value))
    for path, value in old.items():
        if path in new or not path or _ignored(path) or _has_children(new, path):
            continue
        if any(path.startswith(c + ".") or path.startswith(c + "[") for c in collapsed):
            continue
        changes.append(Change(path, "removed", before=value))
    return changes


def show(value: Any) -> str:
    """A value in a diff: JSON, shortened."""
    if value == "":
        return "(empty)"
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT - 1] + "…"


def show_field(path: str, value: Any) -> str:
    """`show`, with times (`..._at` fields, epoch seconds) as UTC dates."""
    name = path.rsplit(".", 1)[-1]
    if name.endswith("_at") and isinstance(value, (int, float)) and not isinstance(value, bool):
        return _dt.datetime.fromtimestamp(value, tz=_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return show(value)


def show_items(items: tuple[Any, ...]) -> str:
    shown = ", ".join(show(v) for v in items[:MAX_ITEMS_SHOWN])
    more = len(items) - MAX_ITEMS_SHOWN
    return f"{shown} and {more:,} more" if more > 0 else shown
