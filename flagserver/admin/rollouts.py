"""A flag's automatic rollout: the plan editor, people's actions (start, pause,
resume, approve, roll back, abort), the stage ladder, per-arm evidence with 95%
intervals, and the decision log. Uses `flagserver.rollout.actions` like the API
and the CLI, and the stats API's `stage_report` for the numbers."""

from __future__ import annotations

from typing import Any

from flask import Response, current_app, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from ..api.stats import stage_report
from ..rollout import RolloutPlanSchema
from ..rollout.actions import ACTIONS, act, allowed_actions, can_replace_plan, describe, put_plan, rollback_target
from ..rollout.controller import Rollout, RolloutService, plan_stages
from ..rollout.plan import DEFAULT_PERCENTAGES, DEFAULT_SOAK_INTERVALS, default_margin
from ..writes import read_flag
from . import _charts, _forms
from ._blueprint import Outcome, actor, attempt, bp, confirm_step, confirmed, form_version, now, store

_plan_schema = RolloutPlanSchema()

STATUS_WORDS = {
    "draft": "Not started", "running": "Running", "waiting_for_approval": "Waiting for approval",
    "paused": "Paused", "rolled_back": "Rolled back", "completed": "Completed", "aborted": "Aborted",
}
CONFIRM = {
    "rollback": ("Roll back {key}?", "The flag goes back to {target} now and the plan stops.", "Roll back"),
    "abort": ("Abort the rollout of {key}?", "The plan stops and the flag stays at {current} until someone "
              "changes it.", "Abort the rollout"),
}
MAX_STAGES_SHOWN = 8


def service() -> RolloutService:
    return current_app.extensions["flagserver.rollouts"]  # type: ignore[no-any-return]


def default_plan() -> dict[str, Any]:
    return {"stages": [{"percentage": p} for p in DEFAULT_PERCENTAGES],
            "guardrails": [{"event": "", "kind": "conversion"}], "mode": "auto", "interval_seconds": 60,
            "rollback_to": "zero", "on_srm": "rollback"}


def ladder(rollout: Rollout | None) -> list[dict[str, Any]]:
    """The plan's stages with where the rollout stands: done, current or to come."""
    if rollout is None:
        return []
    state = rollout.plan_state
    out = []
    for i, stage in enumerate(rollout.config.stages):
        if state is None:
            where = "pending"
        elif i < state.stage_index or (i == state.stage_index and state.status == "completed"):
            where = "done"
        elif i == state.stage_index:
            where = {"rolled_back": "failed", "aborted": "stopped"}.get(state.status, "current")
        else:
            where = "pending"
        out.append({"percentage": stage.percentage, "where": where, "index": i,
                    "min_duration_seconds": stage.min_duration_seconds,
                    "min_users_per_arm": stage.min_users_per_arm, "margin": stage.margin})
    return out


def evidence(env: str, key: str, flag: dict[str, Any], rollout: Rollout | None) -> list[dict[str, Any]]:
    """Stage reports (newest first): the plan's stages, or the flag's current stage
    when there is no plan yet; with the current flag stage first."""
    stages = plan_stages(store(), rollout) if rollout and rollout.flag_stages else store().list_stages(env, key)[-1:]
    by_number = {s["stage"]: s for s in stages}
    numbers = list(by_number)[-MAX_STAGES_SHOWN:]
    guardrails = [g.event for g in rollout.config.guardrails] if rollout else []
    kinds = {g.event: g.kind for g in rollout.config.guardrails} if rollout else {}
    reports = []
    for position, number in enumerate(reversed(numbers)):
        stage = by_number[number]
        counts = store().stage_counts(env, key, number)
        # A guardrail nobody has sent yet is a rate of 0 (with its interval), not a missing row.
        for arm in counts.values():
            for population in arm.values():
                for event in guardrails:
                    population["events"].setdefault(event, {"users": 0, "value_sum": 0.0})
        report = stage_report(stage, counts, flag["variants"])
        seen = sorted({e for arm in report["arms"].values() for e in arm["events"]})
        events = [e for e in guardrails if e in seen] + [e for e in seen if e not in guardrails]
        following = [s for s in stages if s["stage"] > number]
        report["ended_at"] = following[0]["started_at"] if following else None
        report["current"] = number == stages[-1]["stage"]
        report["events"] = events
        report["chart"] = _charts.stage_chart(report, flag["variants"], events, f"chart-{number}", kinds)
        report["arm_order"] = _charts.arms_in_order(report, flag["variants"])
        report["open"] = position == 0
        reports.append(report)
    return reports


def rollout_page(env: str, key: str, *, status: int = 200, outcome: Outcome | None = None,
                 draft: dict[str, Any] | None = None) -> Response:
    flag = read_flag(store(), env, key)
    record = store().get_rollout(env, key)
    rollout = Rollout.from_record(record) if record is not None else None
    view = describe(service(), rollout) if rollout is not None else None
    state = rollout.plan_state if rollout is not None else None
    editable = rollout is None or can_replace_plan(rollout.status)
    rollback_to = rollback_target(rollout.config, state) if rollout is not None and state is not None else 0.0
    plan = draft if draft is not None and (outcome is None or outcome.stale is None) else (
        rollout.config.to_dict() if rollout is not None else default_plan())
    response = Response(render_template(
        "admin_rollout.html", env=env, flag=flag, rollout=rollout, view=view, state=state,
        status_words=STATUS_WORDS, allowed=allowed_actions(rollout.status) if rollout is not None else (),
        ladder=ladder(rollout), reports=evidence(env, key, flag, rollout), plan=plan, editable=editable,
        rollback_to=rollback_to,
        errors=(outcome.fields if outcome is not None and outcome.stale is None else {}),
        stale=outcome.stale if outcome is not None else None,
        message=outcome.message if outcome is not None else None, now=now(), forms=_forms,
        default_margin=default_margin, soak_intervals=DEFAULT_SOAK_INTERVALS, page="flags"))
    response.status_code = status
    return response


@bp.get("/envs/<env>/flags/<key>/rollout")
def rollout(env: str, key: str) -> ResponseReturnValue:
    return rollout_page(env, key)


@bp.post("/envs/<env>/flags/<key>/rollout/plan")
def save_plan(env: str, key: str) -> ResponseReturnValue:
    body = _forms.plan(request.form)
    outcome = attempt(lambda: put_plan(service(), env, key, _plan_schema.load(body), actor=actor(),
                                       expected_version=form_version()))
    if outcome.ok:
        flash("Rollout plan saved. Start it when you are ready.", "success")
        return redirect(url_for("admin.rollout", env=env, key=key))
    return rollout_page(env, key, status=outcome.status, outcome=outcome, draft=body)


@bp.post("/envs/<env>/flags/<key>/rollout/<action>")
def rollout_action(env: str, key: str, action: str) -> ResponseReturnValue:
    if action not in ACTIONS:
        return rollout_page(env, key, status=404, outcome=Outcome(message=f"There is no rollout action {action!r}."))
    if action in CONFIRM and not confirmed():
        current = service().load(env, key)
        flag = read_flag(store(), env, key)
        state = current.plan_state
        target = rollback_target(current.config, state) if state is not None else 0.0
        title, message, label = CONFIRM[action]
        words = {"key": key, "target": f"{target:g}%", "current": f"{flag['rollout']}%"}
        return confirm_step(title.format(**words), message.format(**words), label,
                            back=url_for("admin.rollout", env=env, key=key))
    outcome = attempt(lambda: act(service(), env, key, action, actor=actor(), now=now()))
    if outcome.ok:
        result: Rollout = outcome.value
        flash(f"Rollout of {key}: {STATUS_WORDS[result.status].lower()}"
              + (f" at {result.config.stages[result.plan_state.stage_index].percentage:g}%."
                 if result.plan_state is not None and result.status != "rolled_back" else "."), "success")
    else:
        flash(outcome.message or "; ".join(m for ms in outcome.fields.values() for m in ms), "error")
    return redirect(url_for("admin.rollout", env=env, key=key))
