"""The SDK API: the config document (`ETag`/`If-None-Match`) for an SDK key's environment."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, request

from ..auth import authenticate
from ..errors import APIError
from ..sdk_config import ConfigCache

bp = Blueprint("sdk", __name__, url_prefix="/api/v1/sdk")


def sdk_environment() -> str:
    """The environment of the calling SDK key (admin tokens name one with `?environment=`)."""
    principal = authenticate()
    if principal.kind == "sdk":
        assert principal.environment is not None
        return principal.environment
    env = request.args.get("environment")
    if not env:
        raise APIError(400, "bad_request", "an admin token must name ?environment=")
    return env


@bp.get("/config")
def config() -> Response:
    env = sdk_environment()
    cache: ConfigCache = current_app.extensions["flagserver.config_cache"]
    entry = cache.get(env)  # NotFound (404) for an environment that does not exist
    headers = {"ETag": entry.etag, "Cache-Control": "no-cache"}
    if entry.stale:
        headers["X-Flagserver-Stale"] = "1"
        headers["Warning"] = '110 - "storage unavailable; serving the last known config"'
    tags = _tags(request.headers.get("If-None-Match", ""))
    if entry.etag in tags or "*" in tags:
        return Response(status=304, headers=headers)
    return Response(entry.body, status=200, headers=headers, mimetype="application/json")


def _tags(header: str) -> list[str]:
    """Entity tags of If-None-Match, compared weakly (RFC 9110): a proxy that compresses
    the body marks our tag weak, and it still names the same document."""
    tags = [t.strip() for t in header.split(",") if t.strip()]
    return [t[2:] if t.startswith("W/") else t for t in tags]
