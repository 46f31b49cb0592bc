"""flagserver: the flag server (Flask). `create_app(test_config=None)`; nothing else."""

from __future__ import annotations

import os
from typing import Any

from flask import Flask


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the app: config (defaults, FLAGSERVER_* variables, `test_config`),
    storage (opened and migrated), the API and the pages."""
    from . import api, errors
    from .admin import init_app as init_admin
    from .api.sdk import ConfigFastPath
    from .auth import TokenVerifier
    from .config import load_config
    from .rollout.controller import RolloutService
    from .rollout.webhooks import WebhookSender, close_at_exit
    from .sdk_config import ConfigCache
    from .storage import open_store

    # FLAGSERVER_INSTANCE_PATH moves the folder of the default SQLite file and the session secret.
    app = Flask(__name__, instance_relative_config=True, static_folder=None,  # the pages serve their own
                instance_path=os.environ.get("FLAGSERVER_INSTANCE_PATH") or None)
    load_config(app, test_config)
    app.json.sort_keys = False  # type: ignore[attr-defined]  # the order of variant weights is meaningful
    store = open_store(app.config["DATABASE_URL"], redis_prefix=app.config["REDIS_PREFIX"])
    store.initialize()
    app.extensions["flagserver.store"] = store
    app.extensions["flagserver.tokens"] = TokenVerifier(
        store, app.config["ADMIN_TOKEN"], float(app.config["TOKEN_CACHE_SECONDS"]))
    app.extensions["flagserver.config_cache"] = ConfigCache(store)
    webhooks = None
    if app.config["WEBHOOK_URLS"]:
        webhooks = WebhookSender(app.config["WEBHOOK_URLS"], app.config["WEBHOOK_SECRET"])
        # A web worker never closes its sender: deliver what rollout actions queued at exit.
        close_at_exit(webhooks)
    app.extensions["flagserver.webhooks"] = webhooks
    app.extensions["flagserver.rollouts"] = RolloutService(store, webhooks)
    errors.init_app(app)
    api.init_app(app)
    app.wsgi_app = ConfigFastPath(  # type: ignore[method-assign]
        app.wsgi_app, app.extensions["flagserver.tokens"], app.extensions["flagserver.config_cache"])
    init_admin(app)
    return app
