"""The admin pages for product managers, served by Flask under `/admin`.

Server-rendered Jinja templates, a little plain JavaScript (`static/admin.js`,
written here: no library, no build step, no CDN), signed-cookie sessions opened
with an admin token, and a CSRF token on every state-changing request. The views
call the same functions as the JSON API (`flagserver.writes`, the schemas, the
rollout actions, the stats report), so the pages can do nothing the API would
refuse.
"""

from __future__ import annotations

from flask import Flask

from . import account, audit, flags, rollouts, segments  # noqa: F401  (they add their views to `bp`)
from ._auth import DEFAULT_SESSION_SECONDS, AdminSessionInterface
from ._blueprint import bp

__all__ = ["bp", "init_app"]


def init_app(app: Flask) -> None:
    """Register the pages. Sessions use the pages' cookie settings (HttpOnly,
    SameSite=Lax, Secure over https, path /admin); `ADMIN_SESSION_SECONDS` (default
    12 hours) bounds how long a sign-in lasts."""
    app.config.setdefault("ADMIN_SESSION_SECONDS", DEFAULT_SESSION_SECONDS)
    app.session_interface = AdminSessionInterface()
    app.register_blueprint(bp)
