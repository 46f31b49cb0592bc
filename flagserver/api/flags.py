"""Flags of an environment: `/api/v1/envs/{env}/flags[/{key}]`."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from ..auth import actor, require_admin
from ..errors import APIError
from ..schemas import FlagPatchSchema, FlagSchema, check_flag
from ..storage import NotFound
from ..storage.base import ENV_FLAG_FIELDS, GLOBAL_FLAG_FIELDS
from ._common import if_match, load, require_environment, store, versioned_write, with_etag

bp = Blueprint("flags", __name__, url_prefix="/api/v1/envs/<env>/flags")

WRITABLE = ("key",) + GLOBAL_FLAG_FIELDS + ENV_FLAG_FIELDS
_flag_schema = FlagSchema()
_patch_schema = FlagPatchSchema()


def _writable(record: dict[str, Any]) -> dict[str, Any]:
    return {name: record[name] for name in WRITABLE if name in record}


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
    body = load(_flag_schema, partial=("key",))
    if body.setdefault("key", key) != key:
        raise APIError(422, "validation_error", "key: does not match the URL", {"key": ["does not match the URL"]})
    return with_etag(_write(env, key, lambda current: body))


@bp.patch("/<key>")
@require_admin
def patch_flag(env: str, key: str) -> Response:
    body = load(_patch_schema, partial=True)
    # A partial load fills no defaults, so only the fields sent are merged.
    return with_etag(_write(env, key, lambda current: {**_writable(current), **body}))


@bp.delete("/<key>")
@require_admin
def delete_flag(env: str, key: str) -> Response:
    require_environment(env)
    store().delete_flag(env, key, expected_version=if_match(), actor=actor())
    return Response(status=204)


def _current(env: str, key: str) -> dict[str, Any]:
    require_environment(env)
    flag = store().get_flag(env, key)
    if flag is None:
        raise NotFound("flag", key)
    return flag


def _write(env: str, key: str, build: Any) -> dict[str, Any]:
    def write(current: dict[str, Any], version: int) -> dict[str, Any]:
        record = check_flag({**build(current), "key": key})
        return store().update_flag(env, key, record, expected_version=version, actor=actor())
    return versioned_write("flag", key, lambda: _current(env, key), write)
