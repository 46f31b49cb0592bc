"""Who is signed in to the pages, and the CSRF token of their session.

Signing in checks an admin token once with the app's `TokenVerifier`; the
session cookie then holds the principal (kind, actor), the token's id (never its
secret) and a random CSRF token. The cookie is signed with the app's secret key,
HttpOnly, SameSite=Lax, Secure when the request came over https, and scoped to
the pages' path. Each request re-reads the token's record by id, so revoking a
token ends the sessions it opened.
"""

from __future__ import annotations

import hmac
import secrets
import time
from typing import Any

from flask import Flask, current_app, request, session
from flask.sessions import SecureCookieSessionInterface

from ..auth import Principal, TokenVerifier

COOKIE_NAME = "flagserver_admin"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
DEFAULT_SESSION_SECONDS = 12 * 3600


class AdminSessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie session with the pages' cookie settings: HttpOnly
    (Flask's default), SameSite=Lax unless configured, Secure on https requests."""

    def get_cookie_name(self, app: Flask) -> str:
        return COOKIE_NAME

    def get_cookie_path(self, app: Flask) -> str:
        # Only the pages read the session; the API authenticates with bearer tokens.
        return f"{request.script_root.rstrip('/')}/admin"

    def get_cookie_samesite(self, app: Flask) -> str:
        return app.config["SESSION_COOKIE_SAMESITE"] or "Lax"  # type: ignore[no-any-return]

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"] or request.is_secure)


def csrf_token() -> str:
    """This session's CSRF token, made on first use."""
    token = session.get("csrf")
    if not isinstance(token, str) or len(token) < 32:
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


def csrf_ok() -> bool:
    """Whether the request carries the session's CSRF token (form field or header),
    compared in constant time. False when the session has no token."""
    expected = session.get("csrf")
    given = request.form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER) or ""
    if not isinstance(expected, str) or not expected or not given:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


def sign_in(token: str) -> Principal | None:
    """Verify `token`; for an admin token, start a fresh session holding its principal.
    Returns the principal (an SDK key's too, so the caller can say why it was refused),
    or None for an unknown token."""
    verifier: TokenVerifier = current_app.extensions["flagserver.tokens"]
    principal = verifier.verify(token)
    if principal is None or principal.kind != "admin":
        return principal
    parts = token.split("_", 2)
    bootstrap = principal.actor == "admin:bootstrap"
    session.clear()  # no state carries over from before signing in (session fixation)
    session["principal"] = {"kind": principal.kind, "environment": principal.environment, "actor": principal.actor}
    session["token_id"] = None if bootstrap else parts[1]
    session["signed_in_at"] = time.time()
    csrf_token()
    return principal


def sign_out() -> None:
    session.clear()


def current_principal() -> Principal | None:
    """The signed-in principal, or None (ending the session) when there is none, it
    has expired, or its token was revoked."""
    data: Any = session.get("principal")
    if not isinstance(data, dict):
        return None
    max_age = float(current_app.config.get("ADMIN_SESSION_SECONDS", DEFAULT_SESSION_SECONDS))
    signed_in_at = session.get("signed_in_at")
    if not isinstance(signed_in_at, (int, float)) or time.time() - signed_in_at > max_age:
        sign_out()
        return None
    token_id = session.get("token_id")
    if token_id is None:
        still_valid = bool(current_app.config.get("ADMIN_TOKEN"))
    else:
        found = current_app.extensions["flagserver.store"].find_token(str(token_id))
        still_valid = found is not None and found[0]["kind"] == "admin"
    if not still_valid:
        sign_out()
        return None
    return Principal(str(data.get("kind")), data.get("environment"), str(data.get("actor")))
