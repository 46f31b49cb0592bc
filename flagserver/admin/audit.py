"""The audit log: who changed what, when, with a field-level before/after diff."""

from __future__ import annotations

from flask import Response, render_template, request

from . import _diff
from ._blueprint import bp, environments, store

PAGE_SIZE = 50


@bp.get("/audit")
def audit() -> Response:
    env = request.args.get("environment") or None
    if env is not None and env not in {e["key"] for e in environments()}:
        env = None
    key = request.args.get("key", "").strip() or None
    before_raw = request.args.get("before", "")
    before = int(before_raw) if before_raw.isdigit() and len(before_raw) < 18 else None
    # One more than a page: whether there are older entries to link to.
    entries = store().list_audit(environment=env, target_key=key, limit=PAGE_SIZE + 1, before_id=before)
    older = entries[PAGE_SIZE - 1]["id"] if len(entries) > PAGE_SIZE else None
    rows = [{**entry, "changes": _diff.diff(entry.get("before"), entry.get("after"))}
            for entry in entries[:PAGE_SIZE]]
    return Response(render_template(
        "admin_audit.html", rows=rows, environment=env, key=key or "", older=older,
        show_field=_diff.show_field, show_items=_diff.show_items, page="audit"))
