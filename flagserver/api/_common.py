"""What every admin view does: read JSON, honour If-Match, answer with an ETag."""

from __future__ import annotations

import json
from typing import Any

from flask import Response, current_app, jsonify, request
from marshmallow import Schema

from ..errors import APIError
from ..storage import NotFound, Store


def store() -> Store:
    return current_app.extensions["flagserver.store"]  # type: ignore[no-any-return]


def json_body() -> Any:
    """The parsed JSON body, or a 400 naming the problem (413 comes first for oversized bodies)."""
    body = parse_json(request.get_data(cache=True))
    try:  # JSON may escape lone surrogates, which no storage can encode.
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise APIError(400, "bad_request", "the request body holds invalid Unicode (a lone surrogate)") from None
    return body


def parse_json(raw: bytes) -> Any:
    """Parse a request body; a 400 for an empty, unreadable or absurdly nested one."""
    if not raw:
        raise APIError(400, "bad_request", "the request body must be JSON (it is empty)")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise APIError(400, "bad_request", "the request body is not valid JSON") from None


def load(schema: Schema, *, partial: bool | tuple[str, ...] = False, replacing: bool = False) -> dict[str, Any]:
    """Validate the JSON body with `schema`; a body that is not an object is a 422.
    With `replacing` (a PUT), the read-only fields of a GET's body are ignored, so an
    object can be read, edited and put back."""
    body = json_body()
    if not isinstance(body, dict):
        raise APIError(422, "validation_error", "the body must be a JSON object", {"_schema": ["must be an object"]})
    if replacing:
        for read_only in ("version", "updated_at", "created_at"):
            if type(body.get(read_only)) in (int, float):
                del body[read_only]
    return schema.load(body, partial=partial)  # type: ignore[no-any-return]


def if_match() -> int | None:
    """The version named by `If-Match`, None when absent or `*`; 412 when it names no version."""
    header = request.headers.get("If-Match")
    if header is None or header.strip() == "*":
        return None
    tag = header.strip()
    if tag.startswith("W/"):
        tag = tag[2:]
    tag = tag.strip('"')
    if not tag.isdigit() or len(tag) > 18:
        raise APIError(412, "version_mismatch", f"If-Match {header!r} names no version of this object")
    return int(tag)


def with_etag(record: dict[str, Any], status: int = 200) -> Response:
    response = jsonify(record)
    response.status_code = status
    response.headers["ETag"] = f'"{record["version"]}"'
    return response


def require_environment(env: str) -> None:
    if store().get_environment(env) is None:
        raise NotFound("environment", env)

