"""Rollout plans: `/api/v1/envs/{env}/flags/{key}/rollout-plan[/{action}]`."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify

from ..auth import actor, require_admin
from ..rollout import RolloutPlanSchema
from ..rollout.actions import act, describe, put_plan
from ..rollout.controller import Rollout, RolloutService
from ._common import if_match, load, require_environment, store

bp = Blueprint("rollouts", __name__, url_prefix="/api/v1/envs/<env>")

_plan_schema = RolloutPlanSchema()


def service() -> RolloutService:
    return current_app.extensions["flagserver.rollouts"]  # type: ignore[no-any-return]


def now() -> float:
    return float(current_app.config["CLOCK"]())


def _respond(rollout: Rollout, status: int = 200) -> Response:
    response = jsonify(describe(service(), rollout))
    response.status_code = status
    response.headers["ETag"] = f'"{rollout.version}"'
    return response


@bp.get("/rollouts")
@require_admin
def list_rollouts(env: str) -> Response:
    require_environment(env)
    rollouts = [Rollout.from_record(r) for r in store().list_rollouts(env)]
    return jsonify(rollouts=[{"flag": r.flag, "status": r.status, "version": r.version,
                              "stage_index": r.plan_state.stage_index if r.plan_state else None,
                              "stages": [s.percentage for s in r.config.stages]} for r in rollouts])


@bp.get("/flags/<key>/rollout-plan")
@require_admin
def get_plan(env: str, key: str) -> Response:
    return _respond(service().load(env, key))


@bp.put("/flags/<key>/rollout-plan")
@require_admin
def set_plan(env: str, key: str) -> Response:
    require_environment(env)
    config: Any = load(_plan_schema)  # the schema's post_load makes a PlanConfig
    existed = store().get_rollout(env, key) is not None
    rollout = put_plan(service(), env, key, config, actor=actor(), expected_version=if_match())
    return _respond(rollout, 200 if existed else 201)


@bp.post("/flags/<key>/rollout-plan/<action>")
@require_admin
def rollout_action(env: str, key: str, action: str) -> Response:
    require_environment(env)
    return _respond(act(service(), env, key, action, actor=actor(), now=now(), expected_version=if_match()))
