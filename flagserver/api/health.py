"""Liveness and readiness."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from ..storage import StoreUnavailable
from ._common import store

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """The process is alive (says nothing of storage)."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> Response | tuple[Response, int]:
    """Storage answers; 503 otherwise."""
    try:
        store().ping()
    except StoreUnavailable as exc:
        return jsonify(status="unavailable", reason=str(exc)), 503
    return jsonify(status="ready")
