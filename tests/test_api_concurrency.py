"""Writers racing through the real server over HTTP (threaded WSGI server, real sockets).

With the same If-Match exactly one writer wins and the other gets 412; without
If-Match every write is applied in turn and none is lost.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import requests

from tests.api_helpers import BACKENDS, audit_entries

pytestmark = pytest.mark.parametrize("backend", BACKENDS, indirect=True)

FLAG = "/api/v1/envs/production/flags"
SEGMENT = "/api/v1/envs/production/segments"
TIMEOUT = 15


def race(base_url: str, headers: dict[str, str], requests_to_send: list[Callable[[requests.Session], Any]]
         ) -> list[requests.Response]:
    """Send each request from its own thread and connection, all released together."""
    barrier = threading.Barrier(len(requests_to_send))
    results: list[Any] = [None] * len(requests_to_send)

    def run(i: int) -> None:
        with requests.Session() as session:
            session.headers.update(headers)
            try:
                session.get(f"{base_url}/healthz", timeout=TIMEOUT).raise_for_status()  # connect first
                barrier.wait(timeout=TIMEOUT)
                results[i] = requests_to_send[i](session)
            except Exception as exc:  # reported by the assertion below, with the others
                results[i] = exc

    threads = [threading.Thread(target=run, args=(i,), name=f"writer-{i}") for i in range(len(requests_to_send))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=2 * TIMEOUT)
    assert not any(thread.is_alive() for thread in threads), "a writer hung"
    assert all(isinstance(r, requests.Response) for r in results), results
    return results


@pytest.fixture
def http(live_server, admin):
    """A session on the live server as an admin, and its base URL."""
    with requests.Session() as session:
        session.headers.update(admin)
        yield session, live_server.url


@pytest.mark.parametrize(("kind", "method"), [("flag", "patch"), ("flag", "put"), ("segment", "patch")])
def test_two_writers_with_the_same_if_match_one_wins_one_gets_412(app, http, admin, kind, method):
    session, url = http
    base = FLAG if kind == "flag" else SEGMENT
    field = "rollout" if kind == "flag" else "percentage"
    created = session.post(f"{url}{base}", json={"key": "contested", field: 1}, timeout=TIMEOUT)
    assert created.status_code == 201

    for round_ in range(5):  # several rounds: each one a fresh race
        current = session.get(f"{url}{base}/contested", timeout=TIMEOUT)
        version = int(current.headers["ETag"].strip('"'))
        audited = len(audit_entries(app, target_key="contested"))
        values = [10 + round_, 60 + round_]

        responses = race(url, admin, [
            lambda s, v=v, version=version: getattr(s, method)(
                f"{url}{base}/contested", json={field: v}, headers={"If-Match": f'"{version}"'}, timeout=TIMEOUT)
            for v in values])

        statuses = [r.status_code for r in responses]
        assert sorted(statuses) == [200, 412], [r.text for r in responses]
        winner = values[statuses.index(200)]
        loser = responses[statuses.index(412)].json()["error"]
        assert loser["current_version"] == version + 1
        stored = session.get(f"{url}{base}/contested", timeout=TIMEOUT)
        assert stored.json()[field] == winner
        assert stored.json()["version"] == version + 1
        assert stored.headers["ETag"] == f'"{version + 1}"'
        entries = audit_entries(app, target_key="contested")
        assert len(entries) == audited + 1
        assert entries[0]["after"][field] == winner and entries[0]["before"]["version"] == version


def test_writers_without_if_match_lose_no_update(app, http, admin):
    session, url = http
    session.post(f"{url}{FLAG}", json={"key": "busy", "enabled": True}, timeout=TIMEOUT).raise_for_status()
    writers = 24

    for _ in range(3):  # several rounds: each one a fresh race
        initial = session.get(f"{url}{FLAG}/busy", timeout=TIMEOUT).json()["version"]

        responses = race(url, admin, [
            lambda s, i=i: s.patch(f"{url}{FLAG}/busy", json={"rollout": i}, timeout=TIMEOUT)
            for i in range(writers)])

        assert [r.status_code for r in responses] == [200] * writers, {r.status_code: r.text for r in responses}
        final = session.get(f"{url}{FLAG}/busy", timeout=TIMEOUT).json()
        assert final["version"] == initial + writers
        updates = sorted((e for e in audit_entries(app, target_key="busy")
                          if e["action"] == "update" and e["before"]["version"] >= initial), key=lambda e: e["id"])
        assert len(updates) == writers
        # One after the other: each write started from the version the previous one left.
        assert [e["before"]["version"] for e in updates] == list(range(initial, initial + writers))
        assert [e["after"]["version"] for e in updates] == list(range(initial + 1, initial + writers + 1))
        assert final["rollout"] == updates[-1]["after"]["rollout"]
        assert sorted(r.json()["version"] for r in responses) == list(range(initial + 1, initial + writers + 1))


def test_writers_of_different_fields_without_if_match_all_land(http, admin):
    session, url = http
    session.post(f"{url}{FLAG}", json={"key": "many"}, timeout=TIMEOUT).raise_for_status()
    changes: list[dict[str, Any]] = [
        {"description": "the new checkout"},
        {"tags": ["checkout", "q3"]},
        {"owner": "ada"},
        {"rollout": 35},
        {"enabled": True},
        {"salt": "shared-salt"},
        {"bucket_by": "account_id"},
        {"rules": [{"id": "staff", "conditions": [{"attribute": "email", "op": "ends_with",
                                                    "values": ["@company.com"]}], "serve": "on"}]},
    ]

    responses = race(url, admin, [
        lambda s, c=c: s.patch(f"{url}{FLAG}/many", json=c, timeout=TIMEOUT) for c in changes])

    assert [r.status_code for r in responses] == [200] * len(changes), [r.text for r in responses]
    final = session.get(f"{url}{FLAG}/many", timeout=TIMEOUT).json()
    for change in changes:
        for name, value in change.items():
            assert final[name] == value, name  # a lost update would have put back the old value
    assert final["version"] == 1 + len(changes)


@pytest.mark.parametrize("what", ["flag", "environment"])
def test_creators_of_the_same_key_one_gets_201_the_others_409(app, http, admin, what):
    session, url = http
    collection = f"{url}{FLAG}" if what == "flag" else f"{url}/api/v1/envs"

    for round_ in range(5):
        key = f"{what}-{round_}"
        responses = race(url, admin, [lambda s, k=key: s.post(collection, json={"key": k}, timeout=TIMEOUT)] * 4)

        assert sorted(r.status_code for r in responses) == [201, 409, 409, 409], [r.text for r in responses]
        created = [e for e in audit_entries(app, target_key=key) if e["action"] == "create"]
        assert len(created) == 1


def test_a_segment_deleted_while_a_flag_starts_using_it_never_leaves_a_dangling_rule(http, admin):
    session, url = http

    for round_ in range(5):
        segment, flag = f"seg-{round_}", f"uses-{round_}"
        session.post(f"{url}{SEGMENT}", json={"key": segment, "included": ["u1"]}, timeout=TIMEOUT).raise_for_status()

        create, delete = race(url, admin, [
            lambda s, flag=flag, segment=segment: s.post(f"{url}{FLAG}", timeout=TIMEOUT, json={
                "key": flag, "rules": [{"id": "r", "segments": [segment], "serve": "on"}]}),
            lambda s, segment=segment: s.delete(f"{url}{SEGMENT}/{segment}", timeout=TIMEOUT)])

        # Either the delete went first (the flag is refused) or the flag did (the delete is refused).
        assert (create.status_code, delete.status_code) in {(422, 204), (201, 409)}, (create.text, delete.text)
        exists = session.get(f"{url}{SEGMENT}/{segment}", timeout=TIMEOUT).status_code == 200
        assert exists == (create.status_code == 201)
        config = session.get(f"{url}/api/v1/envs/production/config", timeout=TIMEOUT).json()
        for wire in config["flags"].values():
            for rule in wire["rules"]:
                assert set(rule.get("segments", [])) <= set(config["segments"])


def test_an_environment_created_while_a_flag_is_created_receives_the_flag(http, admin):
    session, url = http

    for round_ in range(5):
        env, flag = f"qa-{round_}", f"new-{round_}"
        responses = race(url, admin, [
            lambda s, env=env: s.post(f"{url}/api/v1/envs", json={"key": env}, timeout=TIMEOUT),
            lambda s, flag=flag: s.post(f"{url}{FLAG}", json={"key": flag}, timeout=TIMEOUT)])

        assert [r.status_code for r in responses] == [201, 201]
        in_new_env = session.get(f"{url}/api/v1/envs/{env}/flags/{flag}", timeout=TIMEOUT)
        assert in_new_env.status_code == 200
        assert in_new_env.json()["enabled"] is False
