"""`POST /api/v1/sdk/events`: a batch is stored all or nothing, then 202; bad batches are 4xx
naming `events[i].field`, and leave nothing behind."""

from __future__ import annotations

import gzip
import json
import time
from typing import Any

import pytest

BACKENDS = ["sqlite", pytest.param("redis", marks=pytest.mark.redis)]
EVENTS = "/api/v1/sdk/events"


@pytest.fixture
def flag(client: Any, admin: dict[str, str]) -> dict[str, Any]:
    response = client.post("/api/v1/envs/production/flags", json={"key": "new-checkout", "enabled": True,
                                                                    "rollout": 50}, headers=admin)
    assert response.status_code == 201
    return dict(response.get_json())


def exposure(user: str, variant: str = "on", **changes: Any) -> dict[str, Any]:
    return {"kind": "exposure", "flag": "new-checkout", "variant": variant, "rule_id": None, "reason": "SPLIT",
            "randomized": True, "flag_version": 1, "user": user, "at": time.time() - 10, **changes}


def track(user: str, **changes: Any) -> dict[str, Any]:
    return {"kind": "track", "event": "checkout", "user": user, "value": 10.0, "at": time.time() - 5, **changes}


def post(client: Any, sdk_key: str, body: Any, *, compress: bool = False) -> Any:
    data = json.dumps(body).encode() if not isinstance(body, bytes) else body
    headers = {"Authorization": f"Bearer {sdk_key}", "Content-Type": "application/json"}
    if compress:
        data = gzip.compress(data)
        headers["Content-Encoding"] = "gzip"
    return client.post(EVENTS, data=data, headers=headers)


def counts(client: Any, admin: dict[str, str]) -> Any:
    response = client.get("/api/v1/envs/production/flags/new-checkout/stats", headers=admin)
    assert response.status_code == 200
    return [stage["arms"] for stage in response.get_json()["stages"]]


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_a_gzipped_batch_is_stored_then_acknowledged_and_a_resend_is_counted_once(client, admin, sdk_key, flag):
    # Given a batch of two exposures and a conversion, gzipped as the SDK sends it
    batch = {"batch_id": "batch-0001", "events": [exposure("u1", "on"), exposure("u2", "off"), track("u1")]}

    # When it is posted twice (a resend after a timeout)
    first = post(client, sdk_key, batch, compress=True)
    second = post(client, sdk_key, batch, compress=True)

    # Then both are 202, the second says duplicate, and the counts are those of one batch
    assert (first.status_code, first.get_json()["duplicate"]) == (202, False)
    assert (second.status_code, second.get_json()["duplicate"]) == (202, True)
    arms = counts(client, admin)[0]
    assert (arms["on"]["exposed"], arms["off"]["exposed"]) == (1, 1)
    assert arms["on"]["events"]["checkout"]["users"] == 1
    assert arms["on"]["events"]["checkout"]["value_sum"] == 10.0


BAD_EVENTS = [
    ("wrong-kind", exposure("u9", kind="click"), "events[1].kind"),
    ("unknown-flag", exposure("u9", flag="no-such-flag"), "events[1].flag"),
    ("missing-user-key", {k: v for k, v in exposure("u9").items() if k != "user"}, "events[1].user"),
    ("user-key-a-number", exposure(7), "events[1].user"),  # type: ignore[arg-type]
    ("randomized-a-string", exposure("u9", randomized="yes"), "events[1].randomized"),
    ("reason-unknown", exposure("u9", reason="LUCK"), "events[1].reason"),
    ("version-negative", exposure("u9", flag_version=-1), "events[1].flag_version"),
    ("version-beyond-doubles", exposure("u9", flag_version=2**60), "events[1].flag_version"),
    ("time-in-the-future", exposure("u9", at=time.time() + 3600), "events[1].at"),
    ("time-a-string", exposure("u9", at="now"), "events[1].at"),
    ("value-a-string", track("u9", value="10"), "events[1].value"),
    ("value-huge", track("u9", value=10**400), "events[1].value"),
    ("event-name-missing", track("u9", event=""), "events[1].event"),
]


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize(("case", "bad", "field"), BAD_EVENTS, ids=[c[0] for c in BAD_EVENTS])
def test_a_batch_with_one_bad_event_is_refused_whole(client, admin, sdk_key, flag, case, bad, field):
    # Given a batch whose second event is bad
    batch = {"batch_id": f"batch-{case}", "events": [exposure("u1"), bad, track("u1")]}

    # When it is posted
    response = post(client, sdk_key, batch)

    # Then it is a 422 naming the event and its field, and nothing of the batch was counted
    assert response.status_code == 422, response.get_data(as_text=True)
    assert field in response.get_json()["error"]["fields"]
    assert counts(client, admin)[0] == {}
    # and the batch id was not used up: the good events alone go through under it
    assert post(client, sdk_key, {"batch_id": f"batch-{case}", "events": [exposure("u1")]}).status_code == 202


@pytest.mark.parametrize(("body", "status"), [
    (b"", 400),
    (b"not json", 400),
    (b"[1, 2]", 422),
    (b'{"batch_id": "short", "events": []}', 422),
    (b'{"batch_id": "batch-0002", "events": {}}', 422),
    (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, (400, 413)),
])
def test_a_body_that_is_not_a_batch_is_a_client_error(client, admin, sdk_key, flag, body, status):
    response = post(client, sdk_key, body)
    assert response.status_code in (status if isinstance(status, tuple) else (status,))
    assert response.get_json()["error"]["status"] == response.status_code
    assert counts(client, admin)[0] == {}


def test_a_huge_batch_is_refused_and_nothing_is_stored(client, admin, sdk_key, flag):
    # Given more events than a batch may hold, gzipped so that the body itself is small
    batch = {"batch_id": "batch-huge", "events": [exposure(f"u{i}") for i in range(5_001)]}

    response = post(client, sdk_key, batch, compress=True)

    assert response.status_code == 413
    assert counts(client, admin)[0] == {}


def test_a_gzip_bomb_is_refused(client, admin, sdk_key, flag):
    # Given a small gzip body that inflates past the server's bound (8 MiB)
    bomb = gzip.compress(b'{"batch_id": "batch-bomb", "events": [' + b" " * (9 * 1024 * 1024) + b"]}")

    response = client.post(EVENTS, data=bomb, headers={"Authorization": f"Bearer {sdk_key}",
                                                       "Content-Encoding": "gzip"})

    assert response.status_code == 413
    assert counts(client, admin)[0] == {}


def test_only_sdk_keys_of_an_environment_post_its_events(client, admin, sdk_key, flag):
    batch = {"batch_id": "batch-auth", "events": [exposure("u1")]}
    assert client.post(EVENTS, json=batch).status_code == 401
    assert client.post(EVENTS, json=batch, headers={"Authorization": "Bearer fss_nope_nope"}).status_code == 401
    # an admin token must name the environment
    assert client.post(EVENTS, json=batch, headers=admin).status_code == 400
    assert counts(client, admin)[0] == {}
