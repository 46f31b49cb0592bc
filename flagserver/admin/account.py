"""Signing in and out, the start page and the environment switcher."""

from __future__ import annotations

from flask import Response, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from ._auth import sign_in as start_session
from ._auth import sign_out as end_session
from ._blueprint import bp, environments, safe_next


@bp.get("/")
def index() -> ResponseReturnValue:
    envs = environments()
    if not envs:
        return Response(render_template("admin_no_env.html"))
    return redirect(url_for("admin.flags", env=envs[0]["key"]))


@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in() -> ResponseReturnValue:
    target = safe_next(request.values.get("next"))
    if request.method == "GET":
        return Response(render_template("admin_sign_in.html", next=target, errors={}))
    token = request.form.get("token", "").strip()
    principal = start_session(token) if token else None
    if principal is not None and principal.kind == "admin":
        return redirect(target or url_for("admin.index"))
    if not token:
        message = "Paste an admin token (it starts with fsa_)."
    elif principal is not None:
        message = "This is an SDK key: it can only read its environment's flags. Sign in with an admin token."
    else:
        message = "This token is not valid: it may have been revoked or mistyped."
    response = Response(render_template("admin_sign_in.html", next=target, errors={"token": [message]}))
    response.status_code = 401
    return response


@bp.route("/sign-out", methods=["GET", "POST"])
def sign_out() -> ResponseReturnValue:
    if request.method == "GET":
        return Response(render_template("admin_sign_out.html"))
    end_session()
    flash("You are signed out.", "info")
    return redirect(url_for("admin.sign_in"))


@bp.get("/switch")
def switch_environment() -> ResponseReturnValue:
    """The environment switcher (a GET form): the same page in another environment."""
    env = request.args.get("env", "")
    page = request.args.get("page", "flags")
    if env not in {e["key"] for e in environments()}:
        return redirect(url_for("admin.index"))
    return redirect(url_for("admin.segments" if page == "segments" else "admin.flags", env=env))
