"""Defaults, then FLAGSERVER_* environment variables, then the test config."""

from __future__ import annotations

import os
import time
from typing import Any

from flask import Flask

DEFAULTS: dict[str, Any] = {
    # sqlite:///path, redis://host:port/db; None means an SQLite file in the instance folder.
    "DATABASE_URL": None,
    "SECRET_KEY": None,
    # An optional admin token accepted without being stored (bootstrap, automation).
    "ADMIN_TOKEN": None,
    # Request bodies above this get 413.
    "MAX_CONTENT_LENGTH": 1024 * 1024,
    # How long a verified token stays verified in this process (revocation delay).
    "TOKEN_CACHE_SECONDS": 5.0,
    # Redis key prefix when DATABASE_URL is a redis:// URL.
    "REDIS_PREFIX": "flagserver:",
    # Rollout webhooks: URLs (a list, or one string of comma-separated URLs) and the HMAC secret.
    "WEBHOOK_URLS": [],
    "WEBHOOK_SECRET": "",
    # The clock of people's rollout actions (tests replace it).
    "CLOCK": time.time,
}


STRING_SETTINGS = ("DATABASE_URL", "SECRET_KEY", "ADMIN_TOKEN", "REDIS_PREFIX", "WEBHOOK_URLS", "WEBHOOK_SECRET")


def load_config(app: Flask, test_config: dict[str, Any] | None) -> None:
    """Fill `app.config`: defaults, then `FLAGSERVER_*` variables, then `test_config`."""
    app.config.from_mapping(DEFAULTS)
    app.config.from_prefixed_env("FLAGSERVER")
    for name in STRING_SETTINGS:  # from_prefixed_env reads JSON: a token of digits would become an int
        raw = os.environ.get(f"FLAGSERVER_{name}")
        if raw is not None:
            app.config[name] = raw
    if test_config:
        app.config.update(test_config)
    if not app.config["DATABASE_URL"]:
        os.makedirs(app.instance_path, exist_ok=True)
        app.config["DATABASE_URL"] = f"sqlite:///{os.path.join(app.instance_path, 'flagserver.db')}"
    if not app.config["SECRET_KEY"]:
        app.config["SECRET_KEY"] = _instance_secret(app.instance_path)
    urls = app.config["WEBHOOK_URLS"]
    if isinstance(urls, str):
        app.config["WEBHOOK_URLS"] = [u.strip() for u in urls.split(",") if u.strip()]


def _instance_secret(instance_path: str) -> str:
    """A secret kept in the instance folder, made once, so that every worker and
    every restart on this machine signs sessions alike. Several machines must set
    FLAGSERVER_SECRET_KEY instead."""
    os.makedirs(instance_path, exist_ok=True)
    path = os.path.join(instance_path, "secret_key")
    if not os.path.exists(path):
        tmp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(os.urandom(32).hex())
        try:
            os.link(tmp, path)  # atomic create-if-absent: concurrent workers agree on one secret
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    with open(path, encoding="ascii") as f:
        return f.read().strip()
