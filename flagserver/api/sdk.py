"""The SDK API: the config document (`ETag`/`If-None-Match`) for an SDK key's environment."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, request

from ..auth import TokenVerifier, authenticate
from ..errors import APIError
from ..sdk_config import CachedConfig, ConfigCache

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
    headers = config_headers(entry)
    if not_modified(entry, request.headers.get("If-None-Match", "")):
        return Response(status=304, headers=headers)
    return Response(entry.body, status=200, headers=headers, mimetype="application/json")


def config_headers(entry: CachedConfig) -> dict[str, str]:
    headers = {"ETag": entry.etag, "Cache-Control": "no-cache"}
    if entry.stale:
        headers["X-Flagserver-Stale"] = "1"
        headers["Warning"] = '110 - "storage unavailable; serving the last known config"'
    return headers


def not_modified(entry: CachedConfig, if_none_match: str) -> bool:
    """If-None-Match compared weakly (RFC 9110): a proxy that compresses the body marks
    our tag weak, and it still names the same document."""
    for tag in if_none_match.split(","):
        tag = tag.strip()
        if tag == "*" or (tag[2:] if tag.startswith("W/") else tag) == entry.etag:
            return True
    return False


class ConfigFastPath:
    """WSGI middleware answering SDK keys' `GET /api/v1/sdk/config` from the config
    cache without Flask's per-request machinery (about a tenth of the CPU). Anything
    else, and anything unusual (no or unknown key, storage trouble, a stale document),
    goes to the Flask view, which answers it with the usual JSON errors."""

    PATH = "/api/v1/sdk/config"

    def __init__(self, wsgi_app: Any, verifier: TokenVerifier, cache: ConfigCache) -> None:
        self.wsgi_app = wsgi_app
        self.verifier = verifier
        self.cache = cache

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") == self.PATH and environ.get("REQUEST_METHOD") == "GET":
            answer = self._answer(environ)
            if answer is not None:
                status, headers, body = answer
                start_response(status, headers)
                return [body]
        return self.wsgi_app(environ, start_response)

    def _answer(self, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes] | None:
        scheme, _, token = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        if scheme.lower() != "bearer" or environ.get("QUERY_STRING"):
            return None
        try:
            principal = self.verifier.verify(token.strip())
            if principal is None or principal.kind != "sdk" or principal.environment is None:
                return None
            entry = self.cache.get(principal.environment)
        except Exception:  # the Flask view will say what is wrong, as JSON
            return None
        if entry.stale:
            return None
        headers = list(config_headers(entry).items())
        if not_modified(entry, environ.get("HTTP_IF_NONE_MATCH", "")):
            return "304 NOT MODIFIED", headers, b""
        headers += [("Content-Type", "application/json"), ("Content-Length", str(len(entry.body)))]
        return "200 OK", headers, entry.body
