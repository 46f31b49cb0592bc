"""The pages' blueprint and what every page shares: the sign-in and CSRF checks that
run before each view, error pages, security headers, template helpers, and
`attempt`, which runs one write the way the API would and sorts its failures into
what a form can show (messages per field, a stale version, a conflict)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    current_app,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException

from ..errors import APIError, _flatten
from ..storage import AlreadyExists, InvalidReference, NotFound, Store, StoreUnavailable, VersionConflict
from ._auth import CSRF_FIELD, csrf_ok, csrf_token, current_principal

log = logging.getLogger(__name__)

bp = Blueprint("admin", __name__, url_prefix="/admin", template_folder="templates",
               static_folder="static", static_url_path="/static")

PUBLIC_ENDPOINTS = frozenset({"admin.sign_in", "admin.static"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")

T = TypeVar("T")


def store() -> Store:
    return current_app.extensions["flagserver.store"]  # type: ignore[no-any-return]


def now() -> float:
    return float(current_app.config["CLOCK"]())


def actor() -> str:
    return str(g.admin_principal.actor)


def wants_json() -> bool:
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return request.is_json or best == "application/json"


def error_page(status: int, title: str, message: str) -> Response:
    if wants_json():
        response = jsonify(error={"status": status, "code": title.lower().replace(" ", "_"), "message": message})
    else:
        response = Response(render_template("admin_error.html", status=status, title=title, message=message))
    response.status_code = status
    return response


@bp.before_request
def _check_request() -> ResponseReturnValue | None:
    # CSRF first: a state-changing request without the session's token is refused
    # whoever sends it, signed in or not (the sign-in form carries one too).
    if request.method not in SAFE_METHODS and not csrf_ok():
        return error_page(400, "Bad request", "This form is missing its security token or it has expired. "
                          "Go back, reload the page and try again (the pages need cookies).")
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    principal = current_principal()
    if principal is None:
        if request.method in SAFE_METHODS:
            return redirect(url_for("admin.sign_in", next=request.full_path.rstrip("?")))
        return error_page(401, "Signed out", "Your session has ended. Sign in again and repeat the change.")
    g.admin_principal = principal
    return None


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if request.endpoint != "admin.static":
        response.headers["Cache-Control"] = "no-store"
    return response


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    titles = {404: "Not found", 405: "Not allowed", 413: "Too large"}
    status = exc.code or 500
    return error_page(status, titles.get(status, exc.name), exc.description or exc.name)


@bp.errorhandler(NotFound)
def _not_found(exc: NotFound) -> Response:
    return error_page(404, "Not found", f"There is no {exc.kind} {exc.key!r}.")


@bp.errorhandler(StoreUnavailable)
def _unavailable(exc: StoreUnavailable) -> Response:
    response = error_page(503, "Storage unavailable", f"Storage does not answer ({exc}). Try again in a moment.")
    response.headers["Retry-After"] = "1"
    return response


@bp.errorhandler(Exception)
def _unexpected(exc: Exception) -> Response:
    log.exception("admin page failed")
    return error_page(500, "Something went wrong", "The server log has the details.")


@bp.route("/<path:anything>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
def not_found(anything: str) -> Response:
    """Unknown paths under /admin get the pages' 404, not the API's JSON."""
    return error_page(404, "Not found", "There is no page here.")


# -- template helpers ----------------------------------------------------------------------------


def safe_next(target: str | None) -> str | None:
    """`target` when it is a path of the pages (never another site), else None."""
    if not target:
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/admin") or "\\" in target:
        return None
    return target


def environments() -> list[dict[str, Any]]:
    if "admin_environments" not in g:
        g.admin_environments = store().list_environments()
    return g.admin_environments  # type: ignore[no-any-return]


def static_url(filename: str) -> str:
    """The URL of a static file with a content hash, so browsers never run stale JS."""
    versions: dict[str, str] = current_app.extensions.setdefault("flagserver.admin_static", {})
    version = versions.get(filename)
    if version is None:
        path = os.path.join(bp.static_folder or "", filename)
        with open(path, "rb") as f:
            version = hashlib.sha256(f.read()).hexdigest()[:10]
        versions[filename] = version
    return url_for("admin.static", filename=filename, v=version)


def when(timestamp: float | None) -> str:
    if timestamp is None:
        return "—"
    moment = dt.datetime.fromtimestamp(float(timestamp), tz=dt.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def iso(timestamp: float | None) -> str:
    if timestamp is None:
        return ""
    return dt.datetime.fromtimestamp(float(timestamp), tz=dt.timezone.utc).isoformat(timespec="seconds")


def ago(timestamp: float | None) -> str:
    if timestamp is None:
        return ""
    seconds = max(0.0, now() - float(timestamp))
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min ago"
    if seconds < 86400:
        return f"{seconds // 3600:.0f} h ago"
    return f"{seconds // 86400:.0f} days ago"


def pct(value: Any, digits: int = 2) -> str:
    """25 → "25%", 12.5 → "12.5%", None → "—"."""
    if value is None:
        return "—"
    text = f"{float(value):.{digits}f}".rstrip("0").rstrip(".")
    return f"{text}%"


def rate(value: Any, digits: int = 1) -> str:
    """A share 0.123 → "12.3%"."""
    if value is None:
        return "—"
    return f"{float(value) * 100:.{digits}f}%"


def rollout_text(rollout: Any, variants: list[str] | None = None) -> str:
    if isinstance(rollout, dict):
        return ", ".join(f"{k} {pct(v / 100)}" for k, v in rollout.items())
    return pct(rollout)


def to_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


@bp.app_template_global("admin_field_id")
def field_id(name: str) -> str:
    """An HTML id for the input named `name` (`rules[0].serve` → `f-rules-0-serve`)."""
    out = "".join(ch if (ch.isascii() and ch.isalnum()) or ch in "_-" else "-" for ch in name)
    return "f-" + "-".join(part for part in out.split("-") if part)


def error_anchor(name: str) -> str:
    """The id of the input an error names; an item of a list input (`variants[2]`,
    `...values[1]`) points at the list's input, a form-wide error at the form."""
    while name.endswith("]") and "[" in name:
        name = name[:name.rindex("[")]
    return field_id(name or "_schema")


def field_messages(errors: dict[str, list[str]], name: str, nested: bool = False) -> list[str]:
    """Messages for the input `name`; with `nested`, also those of its items and
    members (`variants[1]`, `rollout.blue`), for inputs that edit a whole list or map."""
    out = list(errors.get(name, []))
    if nested:
        for key, messages in errors.items():
            if key != name and (key.startswith(name + "[") or key.startswith(name + ".")):
                out.extend(f"{key[len(name):].lstrip('.')}: {m}" for m in messages)
    return out


@bp.context_processor
def _template_context() -> dict[str, Any]:
    return {
        "csrf_token": csrf_token, "csrf_field_name": CSRF_FIELD, "principal": g.get("admin_principal"),
        "environments": environments if g.get("admin_principal") else (lambda: []),
        "static_url": static_url, "when": when, "iso": iso, "ago": ago, "pct": pct, "rate": rate,
        "rollout_text": rollout_text, "to_json": to_json, "field_id": field_id,
        "error_anchor": error_anchor, "field_messages": field_messages,
    }


# -- writes ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class Outcome:
    """What one write came to: `value` on success; otherwise messages per field
    (`fields`, the API's 422 map), a `stale` version (412), or a `message` (409...)."""

    value: Any = None
    fields: dict[str, list[str]] = field(default_factory=dict)
    stale: int | None = None
    message: str | None = None
    status: int = 200

    @property
    def ok(self) -> bool:
        return not self.fields and self.stale is None and self.message is None


def attempt(write: Callable[[], T]) -> Outcome:
    """Run `write` and sort what it raises the way the API's error handlers do.
    `NotFound` and `StoreUnavailable` propagate (they become error pages)."""
    try:
        return Outcome(value=write())
    except ValidationError as exc:
        return Outcome(fields=_flatten(exc.messages), status=422)
    except VersionConflict as exc:
        return Outcome(stale=exc.current_version, status=412)
    except InvalidReference as exc:
        return Outcome(fields={exc.field: [exc.message]}, status=409 if exc.field == "key" else 422)
    except AlreadyExists as exc:
        return Outcome(fields={"key": [str(exc)]}, status=409)
    except APIError as exc:
        if exc.fields:
            return Outcome(fields=dict(exc.fields), status=exc.status)
        return Outcome(message=exc.message, status=exc.status)


def form_version() -> int | None:
    """The version a form was loaded at (its `version` field), None when absent."""
    raw = request.form.get("version", "")
    return int(raw) if raw.isdigit() and len(raw) < 18 else None


def confirmed() -> bool:
    return request.form.get("confirmed") == "1"


def confirm_step(title: str, message: str, action_label: str, *, danger: bool = True,
                 back: str | None = None) -> Response:
    """The second step of a change that asks for confirmation (when JavaScript did not
    ask already): the same form again, with `confirmed=1`."""
    fields = [(k, v) for k, v in request.form.items(multi=True) if k not in (CSRF_FIELD, "confirmed")]
    return Response(render_template("admin_confirm.html", title=title, message=message, fields=fields,
                                    action=request.path, action_label=action_label, danger=danger,
                                    back=safe_next(back) or url_for("admin.index")))
