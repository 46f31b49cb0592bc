"""The audit log: who changed what, when, with a field-level before/after diff."""

from __future__ import annotations

from typing import Any

from flask import Response, render_template, request

from . import _diff
from ._blueprint import bp, environments, store

PAGE_SIZE = 50
CHUNK = 200
MAX_CHUNKS = 10
NOISE_ACTIONS = frozenset({"rollout.tick"})


@bp.get("/audit")
def audit() -> Response:
    env = request.args.get("environment") or None
    if env is not None and env not in {e["key"] for e in environments()}:
        env = None
    key = request.args.get("key", "").strip() or None
    # The controller stores its state at every tick; those entries are hidden unless asked for.
    filtered = request.args.get("filtered") == "1"
    show_ticks = filtered and request.args.get("ticks") == "1"
    before_raw = request.args.get("before", "")
    before = int(before_raw) if before_raw.isdigit() and len(before_raw) < 18 else None
    entries: list[dict[str, Any]] = []
    exhausted = False
    cursor = before
    for _ in range(MAX_CHUNKS):
        chunk = store().list_audit(environment=env, target_key=key, limit=CHUNK, before_id=cursor)
        for entry in chunk:
            if show_ticks or entry["action"] not in NOISE_ACTIONS:
                entries.append(entry)
            cursor = entry["id"]
            if len(entries) == PAGE_SIZE:
                break
        if len(entries) == PAGE_SIZE:
            break
        if len(chunk) < CHUNK:
            exhausted = True
            break
    rows = [{**entry, "changes": _diff.diff(entry.get("before"), entry.get("after"))} for entry in entries]
    older = None if exhausted or not entries else entries[-1]["id"]
    return Response(render_template(
        "admin_audit.html", rows=rows, environment=env, key=key or "", show_ticks=show_ticks, older=older,
        before=before, show_field=_diff.show_field, show_items=_diff.show_items, page="audit"))
