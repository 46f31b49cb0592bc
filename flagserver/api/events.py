"""Event ingestion: `POST /api/v1/sdk/events` (SDK key), a batch all or nothing.

The batch is validated here by hand rather than with marshmallow: it is the
server's hottest write path (hundreds of events per request), and the checks are
few and flat. Every error still names the event's index and field.
"""

from __future__ import annotations

import math
import time
import zlib
from typing import Any

from flagsdk.engine.model import is_text
from flask import Blueprint, Response, current_app, jsonify, request

from ..errors import APIError, field_error
from ..sdk_config import ConfigCache
from ..storage.events import Conversion, Exposure
from ._common import parse_json, store
from .sdk import sdk_environment

bp = Blueprint("events", __name__, url_prefix="/api/v1/sdk")

MAX_EVENTS_PER_BATCH = 5_000
MAX_DECOMPRESSED_BYTES = 8 * 1024 * 1024
MAX_NAME = 200
MAX_USER_KEY = 512
MAX_VERSION = 2**53  # what every JSON reader (and Redis' Lua) holds exactly
REASONS = frozenset({"DEFAULT", "DISABLED", "TARGETING_MATCH", "SPLIT", "ERROR", "STALE"})
# Events may be delivered late (an SDK buffers through outages), never from the future.
OLDEST_EVENT_SECONDS = 30 * 24 * 3600
CLOCK_SKEW_SECONDS = 300


def _body() -> Any:
    raw = request.get_data(cache=False)
    encoding = request.headers.get("Content-Encoding", "").lower()
    if encoding == "gzip":
        try:
            decompressor = zlib.decompressobj(wbits=31)
            raw = decompressor.decompress(raw, MAX_DECOMPRESSED_BYTES + 1)
        except zlib.error:
            raise APIError(400, "bad_request", "the body is not valid gzip") from None
        if len(raw) > MAX_DECOMPRESSED_BYTES:
            raise APIError(413, "request_entity_too_large",
                           f"the batch is over {MAX_DECOMPRESSED_BYTES} bytes uncompressed")
    elif encoding not in ("", "identity"):
        raise APIError(415, "unsupported_media_type", f"Content-Encoding {encoding!r} is not supported; use gzip")
    return parse_json(raw)


def _text(event: dict[str, Any], name: str, where: str, limit: int = MAX_NAME, optional: bool = False) -> Any:
    value = event.get(name)
    if value is None and optional:
        return None
    if type(value) is not str or not value or len(value) > limit or not is_text(value):
        raise field_error(f"{where}.{name}", f"must be a non-empty string of at most {limit} characters")
    return value


def _time(event: dict[str, Any], where: str, now: float) -> float:
    value: Any = event.get("at")
    if type(value) not in (int, float) or not (now - OLDEST_EVENT_SECONDS <= value <= now + CLOCK_SKEW_SECONDS):
        raise field_error(f"{where}.at", "must be epoch seconds within the last 30 days")  # NaN fails too
    return float(value)


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int no double can hold
        return False


def parse_batch(body: Any, known_flags: Any, now: float) -> tuple[str, list[Exposure], list[Conversion]]:
    """Validate a batch; raises a 4xx `APIError` naming `events[i].field`."""
    if not isinstance(body, dict):
        raise field_error("", "the batch must be a JSON object")
    batch_id = body.get("batch_id")
    if type(batch_id) is not str or not 8 <= len(batch_id) <= 100:
        raise field_error("batch_id", "must be a string of 8 to 100 characters")
    events = body.get("events")
    if not isinstance(events, list):
        raise field_error("events", "must be a list")
    if len(events) > MAX_EVENTS_PER_BATCH:
        raise APIError(413, "request_entity_too_large",
                       f"a batch may hold at most {MAX_EVENTS_PER_BATCH} events", {"events": ["too many events"]})
    exposures: list[Exposure] = []
    conversions: list[Conversion] = []
    for i, event in enumerate(events):
        where = f"events[{i}]"
        if not isinstance(event, dict):
            raise field_error(where, "must be an object")
        kind = event.get("kind")
        user = _text(event, "user", where, MAX_USER_KEY)
        at = _time(event, where, now)
        if kind == "exposure":
            flag = _text(event, "flag", where)
            if flag not in known_flags:
                raise field_error(f"{where}.flag", f"no flag {flag!r} in this environment")
            reason = event.get("reason")
            if reason not in REASONS:
                raise field_error(f"{where}.reason", f"must be one of {sorted(REASONS)}")
            randomized = event.get("randomized")
            if type(randomized) is not bool:
                raise field_error(f"{where}.randomized", "must be a boolean")
            version = event.get("flag_version")
            if type(version) is not int or not 0 <= version < MAX_VERSION:
                raise field_error(f"{where}.flag_version", "must be a whole number, 0 or more")
            exposures.append(Exposure(
                flag=flag, variant=_text(event, "variant", where), rule_id=_text(event, "rule_id", where,
                                                                                   optional=True),
                reason=reason, randomized=randomized, flag_version=version, user=user, at=at))
        elif kind == "track":
            value = event.get("value")
            if value is not None and (type(value) not in (int, float) or not _finite(value)):
                raise field_error(f"{where}.value", "must be a finite number or null")
            conversions.append(Conversion(event=_text(event, "event", where), user=user,
                                          value=None if value is None else float(value), at=at))
        else:
            raise field_error(f"{where}.kind", "must be 'exposure' or 'track'")
    return batch_id, exposures, conversions


@bp.post("/events")
def post_events() -> tuple[Response, int]:
    """Store a batch, then answer 202; a batch id seen before is acknowledged, not counted."""
    env = sdk_environment()
    body = _body()
    cache: ConfigCache = current_app.extensions["flagserver.config_cache"]
    known_flags = cache.get(env).document["flags"]
    batch_id, exposures, conversions = parse_batch(body, known_flags, time.time())
    recorded = store().record_events(env, batch_id, exposures, conversions)
    return jsonify(batch_id=batch_id, accepted=len(exposures) + len(conversions), duplicate=not recorded), 202
