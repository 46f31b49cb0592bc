"""What people do to a rollout (API and CLI): set the plan, start, pause, resume,
approve, roll back, abort. Each is audited by the store and logged as a decision."""

from __future__ import annotations

from typing import Any

from ..errors import APIError
from ..storage import VersionConflict
from ..writes import change_flag, read_flag
from .controller import ACTIVE_STATUSES, Rollout, RolloutService, plan_stages
from .plan import PlanConfig, RolloutPlan
from .policy import Decision, _rollback_target, approve, resume
from .state import PlanState

ACTIONS = ("start", "pause", "resume", "approve", "rollback", "abort")
# What a person may do in each status ("draft": the plan has not started).
_ALLOWED = {
    "draft": ("start",),
    "running": ("pause", "rollback", "abort"),
    "waiting_for_approval": ("approve", "pause", "rollback", "abort"),
    "paused": ("resume", "rollback", "abort"),
    "rolled_back": ("start",),
    "completed": ("start",),
    "aborted": ("start",),
}


def allowed_actions(status: str) -> tuple[str, ...]:
    """The actions `act` allows on a rollout in `status` (a rollout's status, "draft"
    before it starts); none for an unknown status."""
    return _ALLOWED.get(status, ())


def can_replace_plan(status: str) -> bool:
    """Whether `put_plan` may replace the plan of a rollout in `status`: not while it
    runs, waits for approval or is paused (it must be aborted first)."""
    return status not in (*ACTIVE_STATUSES, "paused")


def rollback_target(config: PlanConfig, state: PlanState) -> float:
    """The percentage a rollback from `state` sets the flag to: 0, or the previous
    stage's when the plan says `rollback_to: previous_stage` and there is one. The
    same rule as the controller's rollbacks."""
    # policy's own rule, so that a person's rollback and the controller's cannot differ.
    return _rollback_target(config, state)


def _conflict(message: str) -> APIError:
    return APIError(409, "invalid_state", message)


def _check_version(rollout: Rollout, expected_version: int | None) -> None:
    if expected_version is not None and rollout.version != expected_version:
        raise VersionConflict("rollout plan", rollout.flag, rollout.version)


def put_plan(service: RolloutService, env: str, flag: str, config: PlanConfig, *, actor: str,
             expected_version: int | None = None) -> Rollout:
    """Create or replace a flag's plan (as a draft). A plan that is running, waiting
    or paused cannot be replaced: abort it first (409)."""
    read_flag(service.store, env, flag)
    record = service.store.get_rollout(env, flag)
    if record is None:
        state: dict[str, Any] = {"plan_state": None, "flag_stages": []}
        return Rollout.from_record(service.store.put_rollout(env, flag, config.to_dict(), state,
                                                             expected_version=None, actor=actor,
                                                             action="rollout.plan"))
    rollout = Rollout.from_record(record)
    _check_version(rollout, expected_version)
    if not can_replace_plan(rollout.status):
        raise _conflict(f"the rollout is {rollout.status.replace('_', ' ')}; abort it before replacing its plan")
    new = service.store.put_rollout(env, flag, config.to_dict(), rollout.state_record(None, ()),
                                    expected_version=rollout.version, actor=actor, action="rollout.plan")
    return Rollout.from_record(new)


def act(service: RolloutService, env: str, flag: str, action: str, *, actor: str, now: float,
        expected_version: int | None = None) -> Rollout:
    """Carry out a person's `action`. Raises a 404 `APIError` for an unknown action,
    a 409 when the rollout's status does not allow it (`allowed_actions`), NotFound
    without a plan, VersionConflict when `expected_version` is not the plan's."""
    if action not in ACTIONS:
        raise APIError(404, "not_found", f"no rollout action {action!r}; one of {', '.join(ACTIONS)}")
    rollout = service.load(env, flag)
    _check_version(rollout, expected_version)
    if action not in allowed_actions(rollout.status):
        raise _conflict(_refusal(action, rollout.status))
    state = rollout.plan_state
    who = actor.split(":", 1)[-1]
    if action == "start":
        first = rollout.config.stages[0].percentage
        value: float | int = int(first) if float(first).is_integer() else first
        change_flag(service.store, env, flag, {"rollout": value, "enabled": True}, actor=actor)
        started = RolloutPlan.start(rollout.config, now).state
        stage = service.store.list_stages(env, flag)[-1]["stage"]
        decision = _said("start", f"started by {who} at {value}%", started, value)
        return _store(service, rollout, decision, (stage,), now, actor)
    assert state is not None  # only "start" is allowed before the rollout starts
    plan = RolloutPlan(rollout.config, state)
    stage_pct = rollout.config.stages[state.stage_index].percentage
    try:
        if action == "pause":
            paused = state.with_status("paused", f"paused by {who}", now)
            return _store(service, rollout, _said("pause", f"paused by {who}", paused, stage_pct),
                          rollout.flag_stages, now, actor)
        if action == "resume":
            resumed = resume(plan, now)
            return _store(service, rollout, _said("resume", f"resumed by {who}", resumed, stage_pct),
                          rollout.flag_stages, now, actor)
        if action == "approve":
            decision = approve(plan, now)
            decision = Decision(decision.action, f"{decision.reason} by {who}", decision.numbers, decision.state,
                                True)
            return service.apply(rollout, decision, now, actor)
    except ValueError as exc:
        raise _conflict(str(exc)) from None
    if action == "rollback":
        target = rollback_target(rollout.config, state)
        rolled = state.with_status("rolled_back", f"rolled back by {who}", now)
        decision = Decision("rollback", f"rolled back to {target:g}% by {who}",
                            {"action": "rollback", "target_percentage": target}, rolled, True)
        return service.apply(rollout, decision, now, actor)
    aborted = state.with_status("aborted", f"aborted by {who}", now)
    return _store(service, rollout, _said("abort", f"aborted by {who}; the flag stays where it is", aborted,
                                          stage_pct), rollout.flag_stages, now, actor)


def _refusal(action: str, status: str) -> str:
    """Why `action` is not allowed in `status` (see `allowed_actions`)."""
    words = status.replace("_", " ")
    if action == "start":
        return f"the rollout is already {words}"
    if status == "draft":
        return "the rollout has not started"
    if action == "pause":
        return f"only a running rollout can be paused; it is {words}"
    if action == "resume":
        return f"the rollout is {words}, not paused"
    if action == "approve":
        return f"the rollout is {words}, not waiting for approval"
    return f"the rollout {words} already"  # rollback, abort: it has ended


def _said(action: str, reason: str, state: PlanState, percentage: float | None) -> Decision:
    return Decision(action, reason, {"action": action, "target_percentage": percentage}, state,  # type: ignore[arg-type]
                    action in ("pause", "start"))


def _store(service: RolloutService, rollout: Rollout, decision: Decision, flag_stages: tuple[int, ...],
           now: float, actor: str) -> Rollout:
    record = service.store.put_rollout(rollout.environment, rollout.flag, rollout.config.to_dict(),
                                       rollout.state_record(decision.state, flag_stages),
                                       expected_version=rollout.version, actor=actor,
                                       action=f"rollout.{decision.action}")
    service.record(rollout, decision, now, actor)
    service.notify(rollout, decision, decision.state, now)
    return Rollout.from_record(record)


def describe(service: RolloutService, rollout: Rollout, decisions_limit: int = 50) -> dict[str, Any]:
    """The API's view of a rollout: plan, state, where it stands, recent decisions."""
    state = rollout.plan_state
    stages = [s.percentage for s in rollout.config.stages]
    return {
        "environment": rollout.environment,
        "flag": rollout.flag,
        "version": rollout.version,
        "plan": rollout.config.to_dict(),
        "status": rollout.status,
        "stage_index": state.stage_index if state is not None else None,
        "stages": stages,
        "state": state.to_dict() if state is not None else None,
        "flag_stages": [s["stage"] for s in plan_stages(service.store, rollout)] if state is not None else [],
        "decisions": service.store.list_decisions(rollout.environment, rollout.flag, limit=decisions_limit),
    }
