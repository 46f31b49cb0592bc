"""Segments of an environment: list, create, edit (included and excluded users,
conditions, percentage), delete. Writes go through the API's schemas,
`check_segment` and `flagserver.writes.change_segment`."""

from __future__ import annotations

from typing import Any

from flask import Response, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from ..schemas import SegmentPatchSchema, SegmentSchema, check_segment
from ..writes import change_segment, read_segment
from . import _forms
from ._blueprint import Outcome, actor, attempt, bp, confirm_step, confirmed, form_version, store
from .flags import require_env

_segment_schema = SegmentSchema()
_patch_schema = SegmentPatchSchema()


def users_of(env: str) -> dict[str, list[str]]:
    """Segment key → the flags whose rules name it."""
    out: dict[str, list[str]] = {}
    for flag in store().list_flags(env):
        for rule in flag["rules"]:
            for key in rule.get("segments", []):
                if flag["key"] not in out.setdefault(key, []):
                    out[key].append(flag["key"])
    return out


@bp.get("/envs/<env>/segments")
def segments(env: str) -> ResponseReturnValue:
    require_env(env)
    return Response(render_template("admin_segments.html", env=env, segments=store().list_segments(env),
                                    used_by=users_of(env), page="segments"))


def segment_page(env: str, key: str | None, *, draft: dict[str, Any] | None = None, status: int = 200,
                 outcome: Outcome | None = None) -> Response:
    current = read_segment(store(), env, key) if key is not None else None
    stale = outcome.stale if outcome is not None else None
    shown = current if draft is None or stale is not None else {**(current or {}), **draft}
    if shown is None:
        shown = {"key": "", "description": "", "included": [], "excluded": [], "conditions": [],
                 "percentage": None, "bucket_by": "key"}
    response = Response(render_template(
        "admin_segment.html", env=env, segment=shown, current=current, is_new=key is None,
        used_by=users_of(env).get(key or "", []), errors=outcome.fields if outcome and stale is None else {},
        stale=stale, message=outcome.message if outcome else None, operators=_forms.OPERATORS, forms=_forms,
        page="segments"))
    response.status_code = status
    return response


@bp.route("/envs/<env>/segments/new", methods=["GET", "POST"])
def new_segment(env: str) -> ResponseReturnValue:
    require_env(env)
    if request.method == "GET":
        return segment_page(env, None)
    draft = _forms.segment(request.form, with_key=True)
    outcome = attempt(lambda: store().create_segment(env, check_segment(_segment_schema.load(draft)),
                                                     actor=actor()))
    if outcome.ok:
        flash(f"Segment {outcome.value['key']} created.", "success")
        return redirect(url_for("admin.segment", env=env, key=outcome.value["key"]))
    return segment_page(env, None, draft=draft, status=outcome.status, outcome=outcome)


@bp.route("/envs/<env>/segments/<key>", methods=["GET", "POST"])
def segment(env: str, key: str) -> ResponseReturnValue:
    if request.method == "GET":
        return segment_page(env, key)
    draft = _forms.segment(request.form, with_key=False)
    outcome = attempt(lambda: change_segment(store(), env, key, _patch_schema.load(draft, partial=True),
                                             actor=actor(), expected_version=form_version()))
    if outcome.ok:
        flash(f"Segment {key} saved.", "success")
        return redirect(url_for("admin.segment", env=env, key=key))
    return segment_page(env, key, draft=draft, status=outcome.status, outcome=outcome)


@bp.post("/envs/<env>/segments/<key>/delete")
def delete_segment(env: str, key: str) -> ResponseReturnValue:
    if not confirmed():
        return confirm_step(f"Delete the segment {key}?", f"Flags in {env} can no longer target it.",
                            "Delete the segment", back=url_for("admin.segment", env=env, key=key))
    outcome = attempt(lambda: store().delete_segment(env, key, expected_version=form_version(), actor=actor()))
    if outcome.ok:
        flash(f"Segment {key} deleted.", "success")
        return redirect(url_for("admin.segments", env=env))
    if outcome.fields.get("key"):  # in use by a rule: a 409 naming the flags
        outcome = Outcome(message=outcome.fields["key"][0], status=409)
    return segment_page(env, key, status=outcome.status, outcome=outcome)
