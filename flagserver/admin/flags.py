"""The flags of an environment, and one flag: kill switch, percentage, rules,
variants and settings, the "who gets what" preview, history.

Every change goes through `flagserver.writes.change_flag` (or the store's create
and delete) after the API's marshmallow schema, exactly as the JSON API does;
forms carry the version they were loaded at as the expected version, so a stale
edit is refused (412) and the page shows the current state instead.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flask import Response, current_app, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from ..rollout.controller import ACTIVE_STATUSES, Rollout
from ..schemas import FlagPatchSchema, FlagSchema, check_flag
from ..sdk_config import ConfigCache
from ..storage import NotFound
from ..writes import change_flag, read_flag
from . import _diff, _forms
from ._blueprint import Outcome, actor, attempt, bp, confirm_step, confirmed, form_version, store

_flag_schema = FlagSchema()
_patch_schema = FlagPatchSchema()


def require_env(env: str) -> None:
    if store().get_environment(env) is None:
        raise NotFound("environment", env)


def rollouts_by_flag(env: str) -> dict[str, Rollout]:
    out = {}
    for record in store().list_rollouts(env):
        try:
            out[record["flag"]] = Rollout.from_record(record)
        except ValueError:  # an unreadable plan must not take the list down
            continue
    return out


def last_changes(env: str) -> dict[str, dict[str, Any]]:
    """The newest audit entry per flag of `env` (one read of recent entries)."""
    out: dict[str, dict[str, Any]] = {}
    for entry in store().list_audit(environment=env, limit=500):
        if entry["target_type"] in ("flag", "rollout") and entry["target_key"] not in out:
            out[entry["target_key"]] = entry
    return out


@bp.get("/envs/<env>/flags")
def flags(env: str) -> ResponseReturnValue:
    require_env(env)
    records = store().list_flags(env)
    all_tags = sorted({t for f in records for t in f.get("tags", [])})
    text = request.args.get("q", "").strip()
    tag = request.args.get("tag", "")
    shown = records
    if text:
        low = text.lower()
        shown = [f for f in shown if low in f["key"].lower() or low in f.get("description", "").lower()]
    if tag:
        shown = [f for f in shown if tag in f.get("tags", [])]
    return Response(render_template(
        "admin_flags.html", env=env, flags=shown, total=len(records), tags=all_tags, q=text, tag=tag,
        rollouts=rollouts_by_flag(env), changes=last_changes(env), page="flags"))


@bp.route("/envs/<env>/flags/new", methods=["GET", "POST"])
def new_flag(env: str) -> ResponseReturnValue:
    require_env(env)
    draft: dict[str, Any] = {"key": "", "description": "", "tags": [], "variants": ["off", "on"], "enabled": False}
    errors: dict[str, list[str]] = {}
    status = 200
    if request.method == "POST":
        draft = _forms.new_flag(request.form)
        outcome = attempt(lambda: store().create_flag(env, check_flag(_flag_schema.load(draft)), actor=actor()))
        if outcome.ok:
            flash(f"Flag {outcome.value['key']} created. It is {'on' if outcome.value['enabled'] else 'off'} "
                  f"at 0% in {env}, and off in the other environments.", "success")
            return redirect(url_for("admin.flag", env=env, key=outcome.value["key"]))
        errors, status = outcome.fields or {"_schema": [outcome.message or "not saved"]}, outcome.status
    response = Response(render_template("admin_flag_new.html", env=env, draft=draft, errors=errors, page="flags"))
    response.status_code = status
    return response


def flag_page(env: str, key: str, *, status: int = 200, form: str | None = None, outcome: Outcome | None = None,
              draft: dict[str, Any] | None = None, preview: dict[str, Any] | None = None,
              preview_user: str | None = None) -> Response:
    """The flag page; after a refused change, the form named `form` shows `draft` (what
    was submitted) with the messages of `outcome` beside its fields, or, when the flag
    was changed meanwhile, the current state and a notice."""
    flag = read_flag(store(), env, key)
    rollout_record = store().get_rollout(env, key)
    rollout = Rollout.from_record(rollout_record) if rollout_record is not None else None
    segments = store().list_segments(env)
    history = [{**entry, "changes": _diff.diff(entry.get("before"), entry.get("after"))}
               for entry in store().list_audit(environment=env, target_key=key, limit=6)]
    stale = outcome.stale if outcome is not None else None
    drafts: dict[str, Any] = {name: None for name in ("rollout", "rules", "settings")}
    if form in drafts and stale is None:
        drafts[form] = draft
    attributes = sorted({c["attribute"] for rule in flag["rules"] for c in rule.get("conditions", [])}
                        | {c["attribute"] for s in segments for c in s.get("conditions", [])
                           if any(s["key"] in rule.get("segments", []) for rule in flag["rules"])})
    response = Response(render_template(
        "admin_flag.html", env=env, flag=flag, rollout=rollout, segments=segments, history=history,
        form=form, errors=(outcome.fields if outcome is not None and stale is None else {}),
        message=(outcome.message if outcome is not None else None), stale=stale, drafts=drafts,
        preview=preview, preview_user=preview_user or f'{{"key": "user-123"{_example_attributes(attributes)}}}',
        attributes=attributes, operators=_forms.OPERATORS, show=_diff.show, split=_forms.SPLIT, forms=_forms,
        page="flags", active_rollout=rollout is not None and rollout.status in ACTIVE_STATUSES))
    response.status_code = status
    return response


def _example_attributes(attributes: list[str]) -> str:
    return "".join(f', "{a}": ""' for a in attributes[:3] if a != "key" and '"' not in a and "\\" not in a)


@bp.get("/envs/<env>/flags/<key>")
def flag(env: str, key: str) -> ResponseReturnValue:
    return flag_page(env, key)


def _after(env: str, key: str, form: str, outcome: Outcome, done: str, draft: Any = None) -> ResponseReturnValue:
    if outcome.ok:
        flash(done, "success")
        return redirect(url_for("admin.flag", env=env, key=key) + f"#{form}")
    return flag_page(env, key, status=outcome.status, form=form, outcome=outcome, draft=draft)


@bp.post("/envs/<env>/flags/<key>/enabled")
def set_enabled(env: str, key: str) -> ResponseReturnValue:
    """The kill switch. It states an absolute intent (on, or off for everyone), so it is
    applied whatever changed meanwhile: an emergency stop must never bounce as stale."""
    enabled = request.form.get("enabled") == "true"
    outcome = attempt(lambda: change_flag(store(), env, key, _patch_schema.load({"enabled": enabled}, partial=True),
                                          actor=actor()))
    words = "on: users get it by its rules and percentage" if enabled else "off for everyone (kill switch)"
    return _after(env, key, "switch", outcome, f"{key} is now {words}.")


@bp.post("/envs/<env>/flags/<key>/rollout")
def set_rollout(env: str, key: str) -> ResponseReturnValue:
    current = read_flag(store(), env, key)
    value = _forms.flag_rollout(request.form, current["variants"])
    if value in (0, 100) and value != current["rollout"] and not confirmed():
        first, last = current["variants"][0], current["variants"][-1]
        what = (f"Every user in {env} whom no rule matches will get {last!r}." if value == 100 else
                f"Nobody in {env} will get {last!r} through the percentage: users whom no rule matches "
                f"get {first!r}.")
        return confirm_step(f"Set {key} to {value}%?", what, f"Set to {value}%",
                            back=url_for("admin.flag", env=env, key=key))
    outcome = attempt(lambda: change_flag(store(), env, key, _patch_schema.load({"rollout": value}, partial=True),
                                          actor=actor(), expected_version=form_version()))
    shown = f"{value}%" if not isinstance(value, dict) else "the new weights"
    return _after(env, key, "rollout", outcome, f"{key} is now at {shown} in {env}.",
                  draft={"rollout": value, "kind": request.form.get("rollout_kind", "percentage")})


@bp.post("/envs/<env>/flags/<key>/rules")
def set_rules(env: str, key: str) -> ResponseReturnValue:
    rules = _forms.rules(request.form)
    outcome = attempt(lambda: change_flag(store(), env, key, _patch_schema.load({"rules": rules}, partial=True),
                                          actor=actor(), expected_version=form_version()))
    return _after(env, key, "rules", outcome, f"Rules of {key} saved ({len(rules)} rules).", draft=rules)


@bp.post("/envs/<env>/flags/<key>/settings")
def set_settings(env: str, key: str) -> ResponseReturnValue:
    changes = _forms.flag_settings(request.form)
    outcome = attempt(lambda: change_flag(store(), env, key, _patch_schema.load(changes, partial=True),
                                          actor=actor(), expected_version=form_version()))
    return _after(env, key, "settings", outcome, f"Settings of {key} saved (in every environment).",
                  draft=changes)


@bp.post("/envs/<env>/flags/<key>/preview")
def preview(env: str, key: str) -> ResponseReturnValue:
    """Who gets what: the engine SDKs use evaluates the saved flag for the typed user."""
    text = request.form.get("user", "")
    user, problem = _forms.user(text)
    if problem is not None:
        return flag_page(env, key, status=422, form="preview", outcome=Outcome(fields={"user": [problem]}),
                         preview_user=text)
    read_flag(store(), env, key)
    cache: ConfigCache = current_app.extensions["flagserver.config_cache"]
    result = dataclasses.asdict(cache.get(env).snapshot().evaluate(key, user, None))
    return flag_page(env, key, form="preview", preview=result, preview_user=text)


@bp.post("/envs/<env>/flags/<key>/delete")
def delete_flag(env: str, key: str) -> ResponseReturnValue:
    if not confirmed():
        return confirm_step(f"Delete {key}?", "The flag is deleted in every environment, with its rollout plan "
                            "and its counts. SDKs then answer with their default.", "Delete the flag",
                            back=url_for("admin.flag", env=env, key=key))
    outcome = attempt(lambda: store().delete_flag(env, key, expected_version=form_version(), actor=actor()))
    if outcome.ok:
        flash(f"Flag {key} deleted.", "success")
        return redirect(url_for("admin.flags", env=env))
    return flag_page(env, key, status=outcome.status, form="delete", outcome=outcome)
