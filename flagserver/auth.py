"""Tokens: minting, hashing, verifying (in constant time) and per-request checks.

A token reads `fsa_<id>_<secret>` (admin) or `fss_<id>_<secret>` (SDK key). Only
the SHA-256 of the secret is stored; verification looks the record up by id and
compares hashes with `hmac.compare_digest`. Verified tokens are remembered for
`TOKEN_CACHE_SECONDS` so that the SDK's hot endpoint reads no storage for them.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, TypeVar

from flask import current_app, g, request

from .errors import APIError
from .storage import Store, StoreUnavailable

PREFIXES = {"admin": "fsa", "sdk": "fss"}
KINDS = {v: k for k, v in PREFIXES.items()}

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's kind, its environment (SDK keys) and a name for the audit log."""

    kind: str
    environment: str | None
    actor: str


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def mint_token(kind: str) -> tuple[str, str, str]:
    """A new token: `(token_id, full_token, secret_hash)`."""
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return token_id, f"{PREFIXES[kind]}_{token_id}_{secret}", hash_secret(secret)


def create_token(store: Store, kind: str, name: str, environment: str | None, actor: str) -> dict[str, Any]:
    """Store a new token and return its record with the secret in `token` (shown once)."""
    token_id, token, secret_hash = mint_token(kind)
    record = store.create_token(
        {"id": token_id, "name": name, "kind": kind, "environment": environment, "created_at": time.time()},
        secret_hash, actor=actor)
    return {**record, "token": token}


class TokenVerifier:
    """Verifies bearer tokens against the store, remembering good ones briefly."""

    def __init__(self, store: Store, bootstrap_admin_token: str | None, cache_seconds: float) -> None:
        self._store = store
        self._bootstrap = bootstrap_admin_token
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[Principal, float]] = {}
        self._lock = threading.Lock()

    def verify(self, token: str) -> Principal | None:
        """Who `token` belongs to; None when it is malformed, unknown, revoked or of the
        wrong kind (the caller answers 401). When storage is unavailable, a token
        verified before is still trusted and any other raises `StoreUnavailable`
        (a 503), so an outage never turns into "everyone is logged out"."""
        cached = self._cache.get(token)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        try:
            principal = self._verify_uncached(token)
        except StoreUnavailable:
            if cached is not None:
                # Storage is down: a token verified before stays trusted, so SDKs keep getting
                # the last config. Revoking a token needs storage too, so nothing is missed.
                return cached[0]
            raise
        if principal is not None:
            with self._lock:
                if len(self._cache) > 10_000:
                    self._cache.clear()
                self._cache[token] = (principal, now + self._cache_seconds)
        return principal

    def forget(self, token_id: str) -> None:
        """Drop a revoked token from this process's cache at once."""
        with self._lock:
            for token in [t for t in self._cache if t.split("_", 2)[1:2] == [token_id]]:
                del self._cache[token]

    def _verify_uncached(self, token: str) -> Principal | None:
        if self._bootstrap and hmac.compare_digest(token.encode(), self._bootstrap.encode()):
            return Principal("admin", None, "admin:bootstrap")
        parts = token.split("_", 2)
        if len(parts) != 3 or parts[0] not in KINDS:
            return None
        found = self._store.find_token(parts[1])
        if found is None:
            return None
        record, stored_hash = found
        if not hmac.compare_digest(hash_secret(parts[2]), stored_hash) or record["kind"] != KINDS[parts[0]]:
            return None
        return Principal(record["kind"], record.get("environment"), f"{record['kind']}:{record['name']}")


def bearer_token() -> str | None:
    """The token of the request's `Authorization: Bearer <token>` header; None when the
    header is missing, of another scheme or empty. Never raises."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def authenticate() -> Principal:
    """The caller, or a 401."""
    token = bearer_token()
    verifier: TokenVerifier = current_app.extensions["flagserver.tokens"]
    principal = verifier.verify(token) if token else None
    if principal is None:
        raise APIError(401, "unauthorized", "a valid token is required: Authorization: Bearer <token>",
                       headers={"WWW-Authenticate": 'Bearer realm="flagserver"'})
    g.principal = principal
    return principal


def require_admin(view: F) -> F:
    """Admin tokens only: 401 without a valid token, 403 for an SDK key."""
    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if authenticate().kind != "admin":
            raise APIError(403, "forbidden", "this endpoint needs an admin token; SDK keys may only read "
                           "their environment's config and post events")
        return view(*args, **kwargs)
    return wrapper  # type: ignore[return-value]


def actor() -> str:
    principal: Principal | None = g.get("principal")
    return principal.actor if principal is not None else "system"
