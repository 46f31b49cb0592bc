"""HTTP for the SDK: one `requests.Session` per owner, a timeout on every call, and
which failures are worth retrying.

Nothing here retries or sleeps; the callers (`_sync.ConfigSync`, `_events.EventProcessor`)
own the schedule.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import requests
import requests.auth

log = logging.getLogger(__name__)

# A 401 or a 403 will not go away by asking again: the key is wrong or not allowed.
PERMANENT_STATUSES = frozenset({401, 403})


def is_retryable_status(status: int) -> bool:
    """True for statuses that mean "try again later": 408, 429 and every 5xx."""
    return status in (408, 429) or 500 <= status <= 599


def user_agent() -> str:
    # Imported here, not at module level, so that importing this module never
    # depends on the order in which `flagsdk/__init__.py` defines its names.
    from . import __version__

    return f"flagsdk/{__version__}"


def check_base_url(url: str) -> str:
    """Return `url` without a trailing slash; raise `ValueError` unless it is an
    absolute http(s) URL (a programmer error, caught in the constructor)."""
    if not isinstance(url, str):
        raise ValueError(f"the server url must be a string, not {type(url).__name__}")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"the server url must be an absolute http(s) URL, not {url!r}")
    return url.rstrip("/")


def safe_url(url: str) -> str:
    """`url` without any user:password part, for log lines."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


class TransportError(Exception):
    """The request got no HTTP answer (connection refused, timeout, broken body...).

    `retryable` says whether asking again later may help; the message never
    contains the SDK key.
    """

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    body: bytes
    etag: str | None
    retry_after: float | None  # seconds, from a Retry-After header (429, 503)


class _BearerAuth(requests.auth.AuthBase):
    """`Authorization: Bearer <key>`. Set as the session's `auth` (rather than as a
    default header) so that a ~/.netrc entry for the host cannot replace it, and
    so that requests drops it on a redirect to another host."""

    def __init__(self, key: str) -> None:
        self._key = key

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._key}"
        return request

    def __repr__(self) -> str:  # never show the key
        return "_BearerAuth(<hidden>)"


# Failures of the transport that a later attempt may not meet again.
_RETRYABLE_EXCEPTIONS: tuple[type[Exception], ...] = (
    requests.ConnectionError,  # refused, reset, DNS, TLS handshake, connect timeout
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


class SdkHttp:
    """An HTTP client for one SDK key: a single `requests.Session` (its connection
    pool is reused across polls), `User-Agent: flagsdk/<version>`, and `timeout`
    seconds for connecting and for each read on every call.

    Not shared between threads by its owner; `close()` is idempotent.
    """

    def __init__(self, sdk_key: str, *, timeout: float) -> None:
        self._timeout = timeout
        self._session = requests.Session()
        self._session.auth = _BearerAuth(sdk_key)
        self._session.headers["User-Agent"] = user_agent()
        self._session.headers["Accept"] = "application/json"

    def get(self, url: str, *, etag: str | None = None) -> HttpResponse:
        """GET `url` (with `If-None-Match: etag` when given) and read the whole body.

        Any HTTP status is returned, never raised; a request that gets no answer
        raises `TransportError`.
        """
        return self.request("GET", url, headers={"If-None-Match": etag} if etag else None)

    def request(self, method: str, url: str, *, data: bytes | None = None,
                headers: dict[str, str] | None = None) -> HttpResponse:
        """One request on the session with the timeout (a POST of events, say); any
        HTTP status is returned, never raised; a request that gets no answer raises
        `TransportError`."""
        try:
            with self._session.request(method, url, data=data, headers=headers, timeout=self._timeout) as response:
                return HttpResponse(
                    status=response.status_code,
                    body=response.content,
                    etag=response.headers.get("ETag"),
                    retry_after=parse_retry_after(response.headers.get("Retry-After")),
                )
        except _RETRYABLE_EXCEPTIONS as exc:
            raise TransportError(_describe(exc), retryable=True) from None
        except requests.RequestException as exc:  # invalid URL, too many redirects, ...
            raise TransportError(_describe(exc), retryable=False) from None

    def close(self) -> None:
        self._session.close()


def _describe(exc: Exception) -> str:
    # requests' messages repeat urllib3's nested reprs; the class and the first
    # line of the innermost reason are what a person needs.
    reason = exc.args[0] if exc.args else exc
    reason = getattr(reason, "reason", reason)
    return f"{type(exc).__name__}: {str(reason).splitlines()[0] if str(reason) else ''}".rstrip(": ")


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or an HTTP date);
    None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
