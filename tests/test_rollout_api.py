"""The rollout-plan endpoints through the test client, and the `flagserver rollout` commands.

`PUT/GET /api/v1/envs/{env}/flags/{key}/rollout-plan`, `POST .../rollout-plan/{action}`
(start, pause, resume, approve, rollback, abort) and `GET /api/v1/envs/{env}/rollouts`.
States a person cannot reach by hand (waiting for approval, completed) are reached
for real: simulated users and the controller, with the app's CLOCK injected.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient

from flagserver.cli import main
from flagserver.rollout.controller import Controller
from tests.api_helpers import BACKENDS, assert_error, audit_entries, create_flag
from tests.rollout_helpers import CHECKOUT, Clock, Traffic, act, plan_url, put_plan, run_until

ROLLOUTS = "/api/v1/envs/production/rollouts"


@pytest.fixture
def flag(client: FlaskClient, admin: dict[str, str]) -> dict[str, Any]:
    """Flag f, off and at 0%."""
    return create_flag(client, admin, key="f")


def flag_state(store: Any, key: str = "f") -> tuple[Any, bool]:
    record = store.get_flag("production", key)
    return record["rollout"], record["enabled"]


def get_plan(client: FlaskClient, admin: dict[str, str], key: str = "f") -> Any:
    response = client.get(plan_url(key), headers=admin)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response


def wait_for_approval(app: Flask, store: Any, clock: Clock) -> None:
    """Healthy users and the controller until the (manual) plan asks for approval."""
    controller = Controller(store, holder="test")
    run_until(controller, Traffic(store), clock,
              lambda: store.get_rollout("production", "f")["state"]["plan_state"]["status"] != "running")
    assert store.get_rollout("production", "f")["state"]["plan_state"]["status"] == "waiting_for_approval"


def complete(app: Flask, store: Any, clock: Clock) -> None:
    """The controller's first look at a plan already at its last stage completes it."""
    clock.now += 60
    assert Controller(store, holder="test").run_once(clock.now) is not None


# --- PUT and GET -------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_put_creates_the_plan_then_replaces_it(client, admin, flag):
    created = client.put(plan_url(), json={"guardrails": [CHECKOUT]}, headers=admin)

    assert created.status_code == 201
    assert created.headers["ETag"] == '"1"'
    body = created.get_json()
    assert (body["status"], body["stage_index"], body["version"]) == ("draft", None, 1)
    assert body["stages"] == [5, 25, 50, 100]
    assert body["plan"]["mode"] == "auto" and body["plan"]["interval_seconds"] == 60
    assert [s["min_duration_seconds"] for s in body["plan"]["stages"]] == [600] * 4  # defaults resolved
    assert body["decisions"] == [] and body["state"] is None

    replaced = client.put(plan_url(), json={"guardrails": [CHECKOUT], "mode": "manual",
                                            "stages": [{"percentage": 10}, {"percentage": 100}]}, headers=admin)

    assert replaced.status_code == 200
    assert replaced.headers["ETag"] == '"2"'
    assert (replaced.get_json()["plan"]["mode"], replaced.get_json()["stages"]) == ("manual", [10, 100])
    assert get_plan(client, admin).get_json() == replaced.get_json()


@pytest.mark.parametrize(("url", "kind"), [
    ("/api/v1/envs/production/flags/nope/rollout-plan", "flag"),
    ("/api/v1/envs/nope/flags/f/rollout-plan", "environment"),
])
def test_a_plan_for_an_unknown_flag_or_environment_is_404(client, admin, flag, url, kind):
    for response in (client.put(url, json={"guardrails": [CHECKOUT]}, headers=admin),
                     client.get(url, headers=admin), client.post(f"{url}/start", headers=admin)):
        assert assert_error(response, 404)["code"] == "not_found"
        assert response.get_json()["error"]["kind"] == kind


def test_get_of_a_flag_without_a_plan_is_404(client, admin, flag):
    error = assert_error(client.get(plan_url(), headers=admin), 404)
    assert error["kind"] == "rollout plan"
    assert assert_error(client.post(plan_url(action="start"), headers=admin), 404)["kind"] == "rollout plan"


BAD_PLANS = [
    ({"guardrails": []}, "guardrails"),
    ({}, "guardrails"),
    ({"guardrails": [{"event": "error", "kind": "error"}]}, "guardrails"),
    ({"guardrails": [{"event": "checkout", "kind": "revenue"}]}, "guardrails[0].kind"),
    ({"guardrails": [CHECKOUT, CHECKOUT]}, "guardrails[1].event"),
    ({"guardrails": [CHECKOUT], "stages": [{"percentage": 50}, {"percentage": 25}, {"percentage": 100}]},
     "stages[1].percentage"),
    ({"guardrails": [CHECKOUT], "stages": [{"percentage": 5}, {"percentage": 50}]}, "stages[1].percentage"),
    ({"guardrails": [CHECKOUT], "stages": [{"percentage": 5, "min_users_per_arm": -1}, {"percentage": 100}]},
     "stages[0].min_users_per_arm"),
    ({"guardrails": [CHECKOUT], "mode": "yolo"}, "mode"),
    ({"guardrails": [CHECKOUT], "interval_seconds": 0.5}, "interval_seconds"),
    ({"guardrails": [CHECKOUT], "interval_seconds": "60"}, "interval_seconds"),
    ({"guardrails": [CHECKOUT], "rollback_to": "yesterday"}, "rollback_to"),
    ({"guardrails": [CHECKOUT], "alpha": 1.5}, "alpha"),
    ({"guardrails": [CHECKOUT], "colour": "red"}, "colour"),
]


@pytest.mark.parametrize(("body", "field"), BAD_PLANS)
def test_an_invalid_plan_is_422_naming_the_field_and_stores_nothing(client, admin, flag, body, field):
    error = assert_error(client.put(plan_url(), json=body, headers=admin), 422, field)

    assert error["code"] == "validation_error"
    assert_error(client.get(plan_url(), headers=admin), 404)


def test_every_bad_field_is_named_at_once(client, admin, flag):
    body = {"guardrails": [{"event": "", "kind": "conversion"}], "mode": "yolo", "interval_seconds": 0,
            "stages": [{"percentage": 0}, {"percentage": 100}]}
    error = assert_error(client.put(plan_url(), json=body, headers=admin), 422)
    assert {"guardrails[0].event", "mode", "interval_seconds", "stages[0].percentage"} <= set(error["fields"])


@pytest.mark.parametrize("raw", ["[]", '"plan"', "null", "{"])
def test_a_body_that_is_not_a_plan_object_is_refused(client, admin, flag, raw):
    response = client.put(plan_url(), data=raw, content_type="application/json", headers=admin)
    assert_error(response, (400, 422))
    assert_error(client.get(plan_url(), headers=admin), 404)


# --- actions and the states that allow them -----------------------------------------------------

def reach(status: str, app: Flask, client: FlaskClient, admin: dict[str, str], store: Any, clock: Clock) -> None:
    """Put flag f's rollout in `status`."""
    if status == "completed":
        put_plan(client, admin, stages=[{"percentage": 100}])
    else:
        put_plan(client, admin, mode="manual")
    if status == "draft":
        return
    act(client, admin, "start")
    if status == "waiting_for_approval":
        wait_for_approval(app, store, clock)
    elif status == "completed":
        complete(app, store, clock)
    elif status in ("paused", "rolled_back", "aborted"):
        act(client, admin, {"paused": "pause", "rolled_back": "rollback", "aborted": "abort"}[status])
    assert get_plan(client, admin).get_json()["status"] == status


STATUSES = ["draft", "running", "waiting_for_approval", "paused", "rolled_back", "completed", "aborted"]
# action -> the statuses that allow it, and the status it leads to
ALLOWED = {
    "start": ({"draft", "rolled_back", "completed", "aborted"}, "running"),
    "pause": ({"running", "waiting_for_approval"}, "paused"),
    "resume": ({"paused"}, "running"),
    "approve": ({"waiting_for_approval"}, "running"),
    "rollback": ({"running", "waiting_for_approval", "paused"}, "rolled_back"),
    "abort": ({"running", "waiting_for_approval", "paused"}, "aborted"),
}
REFUSAL_WORDS = {"start": "already", "pause": "only a running rollout", "resume": "not paused",
                 "approve": "not waiting for approval", "rollback": "already", "abort": "already"}


@pytest.mark.parametrize("status", STATUSES)
@pytest.mark.parametrize("action", list(ALLOWED))
def test_each_action_is_allowed_or_refused_by_the_status(app, client, admin, store, clock, flag, status, action):
    reach(status, app, client, admin, store, clock)
    before = get_plan(client, admin).get_json()
    flag_before = store.get_flag("production", "f")
    audit_before = len(audit_entries(app))
    allowed, leads_to = ALLOWED[action]

    response = client.post(plan_url(action=action), headers=admin)

    if status in allowed:
        assert response.status_code == 200, response.get_data(as_text=True)
        body = response.get_json()
        assert body["status"] == leads_to
        assert body["version"] == before["version"] + 1
        assert response.headers["ETag"] == f'"{body["version"]}"'
        assert body["decisions"][0]["action"] == ("promote" if action == "approve" else action)
        assert body["decisions"][0]["actor"] == "admin:test-admin"
        assert len(audit_entries(app)) > audit_before
    else:
        error = assert_error(response, 409)
        assert error["code"] == "invalid_state"
        words = "has not started" if status == "draft" else REFUSAL_WORDS[action]
        assert words in error["message"], error["message"]
        # A refused action changes nothing: not the plan, not the flag, not the audit log.
        assert get_plan(client, admin).get_json() == before
        assert store.get_flag("production", "f") == flag_before
        assert len(audit_entries(app)) == audit_before


def test_an_unknown_action_is_404_naming_the_actions(client, admin, flag):
    put_plan(client, admin)
    error = assert_error(client.post(plan_url(action="promote"), headers=admin), 404)
    assert "start, pause, resume, approve, rollback, abort" in error["message"]


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_approve_promotes_the_waiting_plan_to_the_next_stage(app, client, admin, store, clock, flag):
    reach("waiting_for_approval", app, client, admin, store, clock)
    assert flag_state(store) == (5, True)

    body = act(client, admin, "approve")

    assert (body["status"], body["stage_index"]) == ("running", 1)
    assert flag_state(store) == (25, True)
    assert body["decisions"][0]["reason"] == "promoted to 25%: approved by test-admin"
    assert body["state"]["stage_started_at"] == clock.now
    assert body["flag_stages"][-1] == store.list_stages("production", "f")[-1]["stage"]
    assert assert_error(client.post(plan_url(action="approve"), headers=admin), 409)  # approved once only


@pytest.mark.parametrize(("rollback_to", "at_first_stage", "at_second_stage"),
                         [("zero", 0, 0), ("previous_stage", 0, 5)])
def test_rollback_goes_to_zero_or_to_the_previous_stage(app, client, admin, store, clock, flag, rollback_to,
                                                        at_first_stage, at_second_stage):
    put_plan(client, admin, rollback_to=rollback_to)
    act(client, admin, "start")
    body = act(client, admin, "rollback")
    assert body["status"] == "rolled_back"
    assert flag_state(store) == (at_first_stage, True)
    assert body["decisions"][0]["reason"] == f"rolled back to {at_first_stage}% by test-admin"

    put_plan(client, admin, mode="manual", rollback_to=rollback_to)
    act(client, admin, "start")
    wait_for_approval(app, store, clock)
    act(client, admin, "approve")
    assert flag_state(store) == (25, True)
    body = act(client, admin, "rollback")

    assert body["status"] == "rolled_back"
    assert flag_state(store) == (at_second_stage, True)
    assert body["decisions"][0]["reason"] == f"rolled back to {at_second_stage}% by test-admin"
    assert body["decisions"][0]["numbers"]["target_percentage"] == at_second_stage


def test_abort_leaves_the_flag_where_it_is(app, client, admin, store, clock, flag):
    reach("waiting_for_approval", app, client, admin, store, clock)
    act(client, admin, "approve")
    flag_before = store.get_flag("production", "f")

    body = act(client, admin, "abort")

    assert body["status"] == "aborted"
    assert store.get_flag("production", "f") == flag_before
    assert flag_state(store) == (25, True)
    assert "the flag stays where it is" in body["decisions"][0]["reason"]
    clock.now += 3600
    assert Controller(store, holder="test").run_once(clock.now) == []  # nobody looks at it any more


def test_a_running_plan_cannot_be_replaced(app, client, admin, store, clock, flag):
    put_plan(client, admin)
    act(client, admin, "start")
    for status in ("running", "paused"):
        if status == "paused":
            act(client, admin, "pause")
        version = get_plan(client, admin).get_json()["version"]
        error = assert_error(client.put(plan_url(), json={"guardrails": [CHECKOUT], "mode": "manual"},
                                        headers=admin), 409)
        assert error["code"] == "invalid_state"
        assert f"the rollout is {status}; abort it" in error["message"]
        assert get_plan(client, admin).get_json()["version"] == version

    act(client, admin, "abort")
    replaced = client.put(plan_url(), json={"guardrails": [CHECKOUT], "mode": "manual"}, headers=admin)
    assert replaced.status_code == 200
    assert (replaced.get_json()["status"], replaced.get_json()["plan"]["mode"]) == ("draft", "manual")
    assert flag_state(store) == (5, True)  # a new plan does not move the flag


def test_a_plan_waiting_for_approval_cannot_be_replaced(app, client, admin, store, clock, flag):
    reach("waiting_for_approval", app, client, admin, store, clock)
    error = assert_error(client.put(plan_url(), json={"guardrails": [CHECKOUT]}, headers=admin), 409)
    assert "waiting for approval" in error["message"]


# --- audit, ETag, GET ---------------------------------------------------------------------------------

def test_every_action_and_state_change_is_in_the_audit_log(app, client, admin, store, clock, flag):
    put_plan(client, admin)
    for action in ("start", "pause", "resume"):
        act(client, admin, action)
    clock.now += 60
    looked = Controller(store, holder="test").run_once(clock.now)
    assert looked is not None and [d.action for _, _, d in looked] == ["hold"]
    act(client, admin, "rollback")

    response = client.get("/api/v1/audit?key=f", headers=admin)
    assert response.status_code == 200
    entries = list(reversed(response.get_json()["entries"]))
    rollout = [(e["action"], e["actor"]) for e in entries if e["target_type"] == "rollout"]
    assert rollout == [("rollout.plan", "admin:test-admin"), ("rollout.start", "admin:test-admin"),
                       ("rollout.pause", "admin:test-admin"), ("rollout.resume", "admin:test-admin"),
                       ("rollout.rollback", "admin:test-admin")]
    statuses = [(e["before"] or {}).get("state", {}).get("plan_state") for e in entries
                if e["target_type"] == "rollout"]
    assert [s and s["status"] for s in statuses] == [None, None, "running", "paused", "running"]
    assert entries[-1]["after"]["state"]["plan_state"]["status"] == "rolled_back"
    # The controller's hold changed no status: the decision log has it, the audit log does not.
    assert [(d["action"], d["actor"]) for d in store.list_decisions("production", "f")][:2] == [
        ("rollback", "admin:test-admin"), ("hold", "controller")]
    # The flag's own changes: created, started at 5%, rolled back to 0%, each by the person.
    flag_changes = [(e["action"], e["after"]["rollout"], e["actor"]) for e in entries if e["target_type"] == "flag"]
    assert flag_changes == [("create", 0, "admin:test-admin"), ("update", 5, "admin:test-admin"),
                            ("update", 0, "admin:test-admin")]


def test_the_controllers_promotion_is_audited_under_its_name(app, client, admin, store, clock, flag):
    put_plan(client, admin)
    act(client, admin, "start")
    run_until(Controller(store, holder="test"), Traffic(store), clock,
              lambda: store.get_flag("production", "f")["rollout"] == 25)

    entries = audit_entries(app, target_key="f")
    promote = next(e for e in entries if e["action"] == "rollout.promote")
    update = next(e for e in entries if e["target_type"] == "flag" and e["after"]["rollout"] == 25)
    assert promote["actor"] == update["actor"] == "controller"
    assert (promote["before"]["state"]["plan_state"]["stage_index"],
            promote["after"]["state"]["plan_state"]["stage_index"]) == (0, 1)


def test_if_match_guards_the_plan_and_its_actions(client, admin, store, flag):
    put_plan(client, admin)
    response = get_plan(client, admin)
    assert response.headers["ETag"] == '"1"'

    stale = client.put(plan_url(), json={"guardrails": [CHECKOUT], "mode": "manual"},
                       headers={**admin, "If-Match": '"7"'})
    assert assert_error(stale, 412)["code"] == "version_mismatch"
    assert stale.get_json()["error"]["current_version"] == 1
    assert get_plan(client, admin).get_json()["plan"]["mode"] == "auto"

    assert assert_error(client.post(plan_url(action="start"), headers={**admin, "If-Match": '"2"'}), 412)
    assert assert_error(client.post(plan_url(action="start"), headers={**admin, "If-Match": "banana"}), 412)
    assert flag_state(store) == (0, False)  # the refused start moved nothing
    assert get_plan(client, admin).get_json()["status"] == "draft"

    started = client.post(plan_url(action="start"), headers={**admin, "If-Match": '"1"'})
    assert started.status_code == 200
    assert started.headers["ETag"] == '"2"'
    paused = client.post(plan_url(action="pause"), headers={**admin, "If-Match": 'W/"2"'})
    assert paused.status_code == 200 and paused.headers["ETag"] == '"3"'
    # A second person acting on what they saw at version 2 is told it changed.
    assert assert_error(client.post(plan_url(action="rollback"), headers={**admin, "If-Match": '"2"'}), 412)
    assert flag_state(store) == (5, True)
    assert client.post(plan_url(action="resume"), headers={**admin, "If-Match": "*"}).status_code == 200


def test_get_shows_the_plan_status_ladder_and_decisions(app, client, admin, store, clock, flag):
    create_flag(client, admin, key="g")
    put_plan(client, admin, key="g")
    put_plan(client, admin, stages=[{"percentage": 10}, {"percentage": 50}, {"percentage": 100}])
    act(client, admin, "start")
    traffic = Traffic(store)
    clock.now += 60
    traffic.visit(500, clock.now - 1)
    Controller(store, holder="test").run_once(clock.now)

    body = get_plan(client, admin).get_json()

    assert (body["environment"], body["flag"], body["status"]) == ("production", "f", "running")
    assert (body["stage_index"], body["stages"]) == (0, [10, 50, 100])
    assert body["plan"]["stages"][0]["percentage"] == 10 and body["plan"]["guardrails"] == [
        {"event": "checkout", "kind": "conversion", "margin": 0.1}]
    assert body["state"]["status"] == "running" and body["state"]["last_tick_at"] == clock.now
    assert body["flag_stages"] == [store.list_stages("production", "f")[-1]["stage"]]
    hold, started = body["decisions"]  # newest first
    assert started["action"] == "start" and started["reason"] == "started by test-admin at 10%"
    assert hold["action"] == "hold" and hold["reason"].startswith("held at 10%")
    assert hold["at"] == clock.now and hold["actor"] == "controller"
    assert hold["numbers"]["users"]["canary"] == traffic.seen["on"] > 0

    listing = client.get(ROLLOUTS, headers=admin)
    assert listing.status_code == 200
    assert listing.get_json()["rollouts"] == [
        {"flag": "f", "status": "running", "version": 3, "stage_index": 0, "stages": [10, 50, 100]},
        {"flag": "g", "status": "draft", "version": 1, "stage_index": None, "stages": [5, 25, 50, 100]},
    ]
    assert client.get("/api/v1/envs/staging/rollouts", headers=admin).get_json() == {"rollouts": []}
    assert_error(client.get("/api/v1/envs/nope/rollouts", headers=admin), 404)


# --- the CLI ------------------------------------------------------------------------------------------

@pytest.fixture
def cli(app: Flask, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Callable[..., Any]:
    """`flagserver ...` in-process on the `app` fixture's database; returns the Result."""
    monkeypatch.setenv("FLAGSERVER_DATABASE_URL", app.config["DATABASE_URL"])
    monkeypatch.setenv("FLAGSERVER_INSTANCE_PATH", str(tmp_path / "instance"))
    monkeypatch.setenv("FLAGSERVER_SECRET_KEY", "test")
    monkeypatch.delenv("FLAGSERVER_WEBHOOK_URLS", raising=False)
    runner = CliRunner()

    def run(*args: str) -> Any:
        return runner.invoke(main, list(args), catch_exceptions=False)
    return run


def test_the_rollout_commands(app, client, admin, store, clock, flag, cli, monkeypatch):
    monkeypatch.setattr("getpass.getuser", lambda: "alice")
    put_plan(client, admin, mode="manual")

    started = cli("rollout", "start", "f", "--env", "production")
    assert started.exit_code == 0, started.output
    assert started.output.strip() == "f in production: running at 5%"
    assert flag_state(store) == (5, True)

    status = cli("rollout", "status", "f", "--env", "production")
    assert status.exit_code == 0
    lines = status.output.splitlines()
    assert lines[0] == "f in production: running   [5%] -> 25% -> 50% -> 100%"
    assert lines[1].endswith("started by alice at 5%")

    refused = cli("rollout", "approve", "f", "--env", "production")
    assert refused.exit_code == 1
    assert refused.output.strip() == "error: the rollout is running, not waiting for approval"

    assert cli("rollout", "pause", "f").output.strip() == "f in production: paused at 5%"  # --env defaults
    assert cli("rollout", "resume", "f").output.strip() == "f in production: running at 5%"
    wait_for_approval(app, store, clock)
    assert cli("rollout", "status", "f").output.startswith("f in production: waiting for approval   [5%] -> 25%")
    approved = cli("rollout", "approve", "f")
    assert approved.exit_code == 0
    assert approved.output.strip() == "f in production: running at 25%"
    assert flag_state(store) == (25, True)

    rolled = cli("rollout", "rollback", "f")
    assert rolled.output.strip() == "f in production: rolled back at 25%"
    assert flag_state(store) == (0, True)
    assert cli("rollout", "abort", "f").exit_code == 1

    as_json = json.loads(cli("rollout", "status", "f", "--json").output)
    assert as_json["status"] == "rolled_back"
    assert [d["action"] for d in as_json["decisions"]][:3] == ["rollback", "promote", "wait_for_approval"]
    assert as_json["decisions"][0]["actor"] == "cli:alice"
    people = {e["actor"] for e in audit_entries(app, target_key="f") if e["action"].startswith("rollout.")}
    assert "cli:alice" in people


@pytest.mark.parametrize("args", [["rollout", "start", "nope"], ["rollout", "status", "nope"],
                                  ["rollout", "start", "f", "--env", "nope"], ["rollout", "pause", "f"]])
def test_the_rollout_commands_fail_with_one_line(client, admin, flag, cli, args):
    result = cli(*args)
    assert result.exit_code == 1
    assert result.output.startswith("error: ") and result.output.count("\n") == 1
