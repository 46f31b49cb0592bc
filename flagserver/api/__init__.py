"""The HTTP API's blueprints: thin views that parse, call one function and dump."""

from __future__ import annotations

from flask import Flask

from . import admin, flags, health, openapi, sdk, segments


def init_app(app: Flask) -> None:
    for module in (health, admin, flags, segments, sdk, openapi):
        app.register_blueprint(module.bp)
