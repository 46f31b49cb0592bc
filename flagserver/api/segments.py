"""Segments of an environment: `/api/v1/envs/{env}/segments[/{key}]`."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from ..auth import actor, require_admin
from ..errors import APIError
from ..schemas import SegmentPatchSchema, SegmentSchema, check_segment
from ..writes import change_segment, read_segment
from ._common import if_match, load, require_environment, store, with_etag

bp = Blueprint("segments", __name__, url_prefix="/api/v1/envs/<env>/segments")

_segment_schema = SegmentSchema()
_patch_schema = SegmentPatchSchema()


@bp.get("")
@require_admin
def list_segments(env: str) -> Response:
    require_environment(env)
    return jsonify(segments=store().list_segments(env))


@bp.post("")
@require_admin
def create_segment(env: str) -> Response:
    require_environment(env)
    record = check_segment(load(_segment_schema))
    return with_etag(store().create_segment(env, record, actor=actor()), 201)


@bp.get("/<key>")
@require_admin
def get_segment(env: str, key: str) -> Response:
    return with_etag(_current(env, key))


@bp.put("/<key>")
@require_admin
def replace_segment(env: str, key: str) -> Response:
    body = load(_segment_schema, partial=("key",), replacing=True)
    if body.setdefault("key", key) != key:
        raise APIError(422, "validation_error", "key: does not match the URL", {"key": ["does not match the URL"]})
    return with_etag(change_segment(store(), env, key, body, actor=actor(), expected_version=if_match()))


@bp.patch("/<key>")
@require_admin
def patch_segment(env: str, key: str) -> Response:
    body = load(_patch_schema, partial=True)
    return with_etag(change_segment(store(), env, key, body, actor=actor(), expected_version=if_match()))


@bp.delete("/<key>")
@require_admin
def delete_segment(env: str, key: str) -> Response:
    require_environment(env)
    store().delete_segment(env, key, expected_version=if_match(), actor=actor())
    return Response(status=204)


def _current(env: str, key: str) -> dict[str, Any]:
    return read_segment(store(), env, key)
