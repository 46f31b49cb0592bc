"""The HTTP API's blueprints: thin views that parse, call one function and dump."""

from __future__ import annotations

from flask import Flask

from . import admin, events, flags, health, openapi, rollouts, sdk, segments, stats


def init_app(app: Flask) -> None:
    for module in (health, admin, flags, segments, stats, rollouts, sdk, events, openapi):
        app.register_blueprint(module.bp)
