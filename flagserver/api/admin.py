"""Environments, tokens, the audit log and remote evaluation."""

from __future__ import annotations

import dataclasses

from flask import Blueprint, Response, current_app, jsonify, request

from ..auth import actor, create_token, require_admin
from ..errors import APIError, field_error
from ..schemas import EnvironmentSchema, EvaluateSchema, TokenSchema
from ..sdk_config import ConfigCache
from ..storage import NotFound
from ._common import load, require_environment, store

bp = Blueprint("admin_api", __name__, url_prefix="/api/v1")

_environment_schema = EnvironmentSchema()
_token_schema = TokenSchema()
_evaluate_schema = EvaluateSchema()


@bp.get("/envs")
@require_admin
def list_environments() -> Response:
    return jsonify(environments=store().list_environments())


@bp.post("/envs")
@require_admin
def create_environment() -> tuple[Response, int]:
    body = load(_environment_schema)
    record = store().create_environment(body["key"], body.get("name") or body["key"], actor=actor())
    return jsonify(record), 201


@bp.get("/envs/<env>")
@require_admin
def get_environment(env: str) -> Response:
    record = store().get_environment(env)
    if record is None:
        raise NotFound("environment", env)
    return jsonify(record)


@bp.get("/envs/<env>/config")
@require_admin
def environment_config(env: str) -> Response:
    """The config document SDKs of `env` receive (for people and tools)."""
    cache: ConfigCache = current_app.extensions["flagserver.config_cache"]
    return jsonify(cache.get(env).document)


@bp.post("/envs/<env>/evaluate")
@require_admin
def evaluate(env: str) -> Response:
    """Evaluate a flag for a user with the engine SDKs use (the pages' preview)."""
    require_environment(env)
    body = load(_evaluate_schema)
    cache: ConfigCache = current_app.extensions["flagserver.config_cache"]
    result = cache.get(env).snapshot().evaluate(body["flag"], body["user"], body["default"])
    return jsonify(dataclasses.asdict(result))


@bp.get("/tokens")
@require_admin
def list_tokens() -> Response:
    return jsonify(tokens=store().list_tokens())


@bp.post("/tokens")
@require_admin
def create_token_view() -> tuple[Response, int]:
    body = load(_token_schema)
    env = body.get("environment")
    if body["kind"] == "sdk":
        if not env:
            raise field_error("environment", "an SDK key belongs to one environment")
        require_environment(env)
    elif env:
        raise field_error("environment", "admin tokens are not bound to an environment")
    record = create_token(store(), body["kind"], body["name"], env, actor())
    return jsonify(record), 201


@bp.delete("/tokens/<token_id>")
@require_admin
def delete_token(token_id: str) -> Response:
    store().delete_token(token_id, actor=actor())
    current_app.extensions["flagserver.tokens"].forget(token_id)
    return Response(status=204)


@bp.get("/audit")
@require_admin
def audit() -> Response:
    try:
        limit = int(request.args.get("limit", 100))
        before = request.args.get("before")
        before_id = int(before) if before else None
    except ValueError:
        raise APIError(400, "bad_request", "limit and before must be whole numbers") from None
    if before_id is not None and not 0 <= before_id < 2**62:
        raise APIError(400, "bad_request", "before must be an audit entry id")
    if not 1 <= limit <= 1000:
        raise APIError(400, "bad_request", "limit must be from 1 to 1000")
    entries = store().list_audit(environment=request.args.get("environment"), target_key=request.args.get("key"),
                                 limit=limit, before_id=before_id)
    return jsonify(entries=entries)
