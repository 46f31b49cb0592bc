"""One place that turns exceptions into JSON error bodies.

Every error body has the shape
`{"error": {"status": 422, "code": "validation_error", "message": "...",
"fields": {"rules[0].serve": ["must be one of the flag's variants"]}}}`;
`fields` appears when the error concerns named fields.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException

from .storage import AlreadyExists, InvalidReference, NotFound, StoreUnavailable, VersionConflict

log = logging.getLogger(__name__)


class APIError(Exception):
    """An error answered as JSON with `status`; raise it from views."""

    def __init__(self, status: int, code: str, message: str, fields: dict[str, list[str]] | None = None,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields
        self.headers = headers or {}
        self.extra = extra


def field_error(field: str, message: str) -> APIError:
    """A 422 naming one field."""
    return APIError(422, "validation_error", f"{field}: {message}" if field else message,
                    {field or "_schema": [message]})


def validation_error(fields: dict[str, list[str]]) -> APIError:
    """A 422 naming every field in `fields`."""
    name, messages = next(iter(fields.items()))
    return APIError(422, "validation_error", f"{name}: {messages[0]}", fields)


def error_response(status: int, code: str, message: str, fields: dict[str, Any] | None = None,
                   headers: dict[str, str] | None = None, **extra: Any) -> Response:
    """The JSON error response of the module docstring's shape, with `extra` keys added
    to the error object and `headers` set. Needs an app context; raises TypeError
    when `fields` or `extra` hold something JSON cannot encode."""
    body: dict[str, Any] = {"status": status, "code": code, "message": message}
    if fields:
        body["fields"] = fields
    body.update(extra)
    response = jsonify(error=body)
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _flatten(messages: Any, prefix: str = "") -> dict[str, list[str]]:
    """marshmallow's nested messages as `{"rules[0].serve": [...]}`."""
    out: dict[str, list[str]] = {}
    if isinstance(messages, dict):
        for key, value in messages.items():
            if isinstance(key, int):
                name = f"{prefix}[{key}]"
            elif key == "_schema":
                name = prefix or "_schema"
            else:
                name = f"{prefix}.{key}" if prefix else str(key)
            out.update(_flatten(value, name))
    elif isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        out[prefix or "_schema"] = list(messages)
    elif isinstance(messages, list):
        for i, value in enumerate(messages):
            out.update(_flatten(value, f"{prefix}[{i}]"))
    else:
        out[prefix or "_schema"] = [str(messages)]
    return out


def init_app(app: Flask) -> None:
    @app.errorhandler(APIError)
    def api_error(exc: APIError) -> Response:
        return error_response(exc.status, exc.code, exc.message, exc.fields, exc.headers, **exc.extra)

    @app.errorhandler(ValidationError)
    def validation_error(exc: ValidationError) -> Response:
        fields = _flatten(exc.messages)
        first = next(iter(fields.items()), ("_schema", ["invalid"]))
        return error_response(422, "validation_error", f"{first[0]}: {first[1][0]}", fields)

    @app.errorhandler(NotFound)
    def not_found(exc: NotFound) -> Response:
        return error_response(404, "not_found", str(exc), kind=exc.kind, key=exc.key)

    @app.errorhandler(AlreadyExists)
    def already_exists(exc: AlreadyExists) -> Response:
        return error_response(409, "conflict", str(exc), {"key": [str(exc)]})

    @app.errorhandler(VersionConflict)
    def version_conflict(exc: VersionConflict) -> Response:
        return error_response(412, "version_mismatch",
                              f"{exc.kind} {exc.key!r} was changed by someone else: it is now at "
                              f"version {exc.current_version}", current_version=exc.current_version)

    @app.errorhandler(InvalidReference)
    def invalid_reference(exc: InvalidReference) -> Response:
        status = 409 if exc.field == "key" else 422
        code = "in_use" if status == 409 else "validation_error"
        return error_response(status, code, exc.message, {exc.field: [exc.message]})

    @app.errorhandler(StoreUnavailable)
    def store_unavailable(exc: StoreUnavailable) -> Response:
        return error_response(503, "storage_unavailable", f"storage is unavailable: {exc}",
                              headers={"Retry-After": "1"})

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        code = (exc.name or "error").lower().replace(" ", "_")
        response = error_response(exc.code or 500, code, exc.description or exc.name)
        valid_methods = getattr(exc, "valid_methods", None)
        if exc.code == 405 and valid_methods:
            response.headers["Allow"] = ", ".join(valid_methods)
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal error; the server log has the details")
