"""Flags of an environment: `/api/v1/envs/{env}/flags[/{key}]`."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from ..auth import actor, require_admin
from ..errors import APIError
from ..schemas import FlagPatchSchema, FlagSchema, check_flag
from ..writes import change_flag, read_flag
from ._common import if_match, load, require_environment, store, with_etag

bp = Blueprint("flags", __name__, url_prefix="/api/v1/envs/<env>/flags")

_flag_schema = FlagSchema()
_patch_schema = FlagPatchSchema()


@bp.get("")
@require_admin
def list_flags(env: str) -> Response:
    require_environment(env)
    flags = store().list_flags(env)
    text = request.args.get("q", "").lower()
    tag = request.args.get("tag")
    if text:
        flags = [f for f in flags if text in f["key"].lower() or text in f.get("description", "").lower()]
    if tag:
        flags = [f for f in flags if tag in f.get("tags", [])]
    return jsonify(flags=flags)


@bp.post("")
@require_admin
def create_flag(env: str) -> Response:
    require_environment(env)
    record = check_flag(load(_flag_schema))
    return with_etag(store().create_flag(env, record, actor=actor()), 201)


@bp.get("/<key>")
@require_admin
def get_flag(env: str, key: str) -> Response:
    return with_etag(_current(env, key))


@bp.put("/<key>")
@require_admin
def replace_flag(env: str, key: str) -> Response:
    body = load(_flag_schema, partial=("key",), replacing=True)
    if body.setdefault("key", key) != key:
        raise APIError(422, "validation_error", "key: does not match the URL", {"key": ["does not match the URL"]})
    return with_etag(change_flag(store(), env, key, body, actor=actor(), expected_version=if_match()))


@bp.patch("/<key>")
@require_admin
def patch_flag(env: str, key: str) -> Response:
    body = load(_patch_schema, partial=True)  # a partial load fills no defaults: only what was sent changes
    return with_etag(change_flag(store(), env, key, body, actor=actor(), expected_version=if_match()))


@bp.delete("/<key>")
@require_admin
def delete_flag(env: str, key: str) -> Response:
    require_environment(env)
    store().delete_flag(env, key, expected_version=if_match(), actor=actor())
    return Response(status=204)


def _current(env: str, key: str) -> dict[str, Any]:
    return read_flag(store(), env, key)
