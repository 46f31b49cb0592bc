"""The rollout controller in-process, with time injected: `Controller(store).run_once(now)`.

Users are bucketed by the real engine from the store's config document and their
exposures and conversions recorded through `store.record_events` (tests/rollout_helpers.py);
the statistics are the real ones. The people's clock (`CLOCK`) is the same injected clock.
Every test runs on SQLite and on Redis.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

import flagserver.rollout.controller as controller_module
from flagserver.rollout.controller import LEASE_NAME, Controller
from flagserver.storage import open_store
from tests.api_helpers import BACKENDS, create_flag
from tests.rollout_helpers import CHECKOUT, ERRORS, Clock, Traffic, act, plan_url, put_plan

pytestmark = pytest.mark.parametrize("backend", BACKENDS, indirect=True)

MINUTE = 60.0


class Notices:
    """Stands in for the WebhookSender: records what the controller would send."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def send(self, event: str, payload: dict[str, Any]) -> None:
        self.sent.append((event, payload))

    def events(self) -> list[str]:
        return [event for event, _ in self.sent]


@pytest.fixture
def notices(app: Flask) -> Notices:
    """Notices of the controller and of people's actions through the API."""
    notices = Notices()
    app.extensions["flagserver.rollouts"].webhooks = notices
    return notices


@pytest.fixture
def controller(store: Any, notices: Notices) -> Controller:
    return Controller(store, webhooks=notices, holder="controller-a")  # type: ignore[arg-type]


def start(client: FlaskClient, admin: dict[str, str], key: str = "f", **plan: Any) -> dict[str, Any]:
    """Flag `key` (off, 0%) with a plan, started at the clock's time."""
    create_flag(client, admin, key=key)
    put_plan(client, admin, key=key, **plan)
    return act(client, admin, "start", key=key)


def rollout_of(store: Any, key: str = "f") -> dict[str, Any]:
    return store.get_rollout("production", key)  # type: ignore[no-any-return]


def status_of(store: Any, key: str = "f") -> str:
    return str(rollout_of(store, key)["state"]["plan_state"]["status"])


def percentage_of(store: Any, key: str = "f") -> Any:
    return store.get_flag("production", key)["rollout"]


def drive(controller: Controller, traffic: Traffic, clock: Clock, *, users: int = 1000, ticks: int = 100,
          interval: float = MINUTE, until: Callable[[], bool] | None = None) -> list[Any]:
    """Each interval: `users` new users visit, then the controller looks. Stops after
    `ticks` intervals or once `until()` holds; returns the decisions taken for f."""
    decisions = []
    for _ in range(ticks):
        clock.now += interval
        traffic.visit(users, clock.now - 1)
        done = controller.run_once(clock.now)
        assert done is not None, "the only controller must hold the lease"
        decisions.extend(d for env, flag, d in done if flag == traffic.flag)
        if until is not None and until():
            break
    return decisions


def leaves_running(store: Any) -> Callable[[], bool]:
    return lambda: status_of(store) != "running"


# --- healthy, harmful, errors, sample ratio -------------------------------------------------------

def test_a_healthy_release_reaches_100_percent_stage_by_stage(client, admin, store, clock, controller, notices):
    start(client, admin)
    assert percentage_of(store) == 5
    traffic = Traffic(store, rates={"off": 0.3, "on": 0.3})

    decisions = drive(controller, traffic, clock, until=lambda: status_of(store) == "completed")

    assert status_of(store) == "completed"
    assert [d.action for d in decisions].count("rollback") == 0
    promotions = [d for d in decisions if d.action == "promote"]
    assert [d.numbers["target_percentage"] for d in promotions] == [25, 50, 100]
    for promotion in promotions:  # each stage left only with its soak, its users and its evidence
        assert promotion.numbers["elapsed_seconds"] >= 600
        users = promotion.numbers["users"]
        assert min(users["canary"], users["control"]) >= 200
        assert promotion.numbers["gates"] == {"soaked": True, "users": True, "evidence": True}
        assert promotion.numbers["guardrails"]["checkout"]["promotion"]["passed"] is True
    assert 30 <= len(decisions) <= 60  # three soaks of ten one-minute intervals, and not much more
    # The flag went through the ladder in order, each stage by one write of the controller.
    stages = store.list_stages("production", "f")
    assert [(s["rollout"], s["enabled"]) for s in stages] == [(0, False), (5, True), (25, True), (50, True),
                                                             (100, True)]
    flag = store.get_flag("production", "f")
    assert (flag["rollout"], flag["enabled"]) == (100, True)
    assert {traffic.snapshot().evaluate("f", {"key": f"u{i}"}).variant for i in range(1, 2000)} == {"on"}
    assert "rollout.promoted" in notices.events()
    assert notices.sent[-1][1]["status"] == "completed"

    # A completed rollout is left alone.
    kept = store.list_decisions("production", "f", limit=1000)
    assert drive(controller, traffic, clock, ticks=3) == []
    assert store.list_decisions("production", "f", limit=1000) == kept
    assert percentage_of(store) == 100


def test_a_harmful_release_is_rolled_back_to_zero(client, admin, store, clock, controller, notices):
    start(client, admin)
    traffic = Traffic(store, rates={"off": 0.3, "on": 0.15})  # the canary converts at half the rate

    decisions = drive(controller, traffic, clock, ticks=10, until=leaves_running(store))

    assert status_of(store) == "rolled_back"
    assert [d.action for d in decisions][-1] == "rollback"
    assert "promote" not in [d.action for d in decisions]
    flag = store.get_flag("production", "f")
    assert (flag["rollout"], flag["enabled"]) == (0, True)
    # Caught as soon as the test may run (200 users per arm), not after the soak.
    assert traffic.seen["on"] < 300
    rollback = decisions[-1]
    assert rollback.reason.startswith("rolled back to 0%: checkout conversion")
    checkout = rollback.numbers["guardrails"]["checkout"]
    assert checkout["harm"]["harmful"] is True
    assert checkout["harm"]["lambda"] >= checkout["harm"]["threshold"] == pytest.approx(20)
    assert checkout["canary_rate"] == pytest.approx(0.15, abs=0.01)
    assert checkout["control_rate"] == pytest.approx(0.30, abs=0.01)
    # Every user the canary served now gets off from the engine.
    canary_users = [f"u{i}" for i in range(1, traffic.users + 1)]
    assert {traffic.snapshot().evaluate("f", {"key": u}).variant for u in canary_users} == {"off"}
    assert notices.sent[-1][0] == "rollout.rolled_back"
    assert notices.sent[-1][1]["percentage"] == 0

    kept = store.list_decisions("production", "f", limit=1000)
    assert drive(controller, traffic, clock, ticks=3) == []  # a rolled-back rollout is left alone
    assert store.list_decisions("production", "f", limit=1000) == kept


def test_an_error_spike_is_rolled_back(client, admin, store, clock, controller):
    start(client, admin, guardrails=[CHECKOUT, ERRORS])
    traffic = Traffic(store, rates={"off": 0.3, "on": 0.3}, error_rates={"off": 0.005, "on": 0.05})

    decisions = drive(controller, traffic, clock, ticks=10, until=leaves_running(store))

    assert status_of(store) == "rolled_back"
    assert percentage_of(store) == 0
    rollback = decisions[-1]
    assert rollback.action == "rollback"
    assert "error rate" in rollback.reason
    assert rollback.numbers["guardrails"]["error"]["harm"]["harmful"] is True
    assert rollback.numbers["guardrails"]["checkout"]["harm"]["harmful"] is False
    assert rollback.numbers["guardrails"]["error"]["harm"]["threshold"] == pytest.approx(40)  # two guardrails


@pytest.mark.parametrize(("on_srm", "status", "percentage"), [("rollback", "rolled_back", 0), ("pause", "paused", 5)])
def test_a_sample_ratio_mismatch_stops_the_rollout(client, admin, store, clock, controller, on_srm, status,
                                                    percentage):
    start(client, admin, on_srm=on_srm)
    traffic = Traffic(store, lose_canary=0.3)  # 30% of canary users never report: a canary that crashes

    decisions = drive(controller, traffic, clock, ticks=20, until=leaves_running(store))

    assert status_of(store) == status
    assert percentage_of(store) == percentage
    assert "sample ratio mismatch" in decisions[-1].reason
    assert decisions[-1].numbers["srm"]["mismatch"] is True
    assert "promote" not in [d.action for d in decisions]


def test_a_harmful_stage_rolls_back_to_the_previous_stage_when_the_plan_says_so(client, admin, store, clock,
                                                                                controller):
    start(client, admin, rollback_to="previous_stage")
    traffic = Traffic(store)
    drive(controller, traffic, clock, until=lambda: percentage_of(store) == 25)
    assert status_of(store) == "running"

    traffic.rates["on"] = 0.15  # the release breaks at 25%
    decisions = drive(controller, traffic, clock, ticks=20, until=leaves_running(store))

    assert status_of(store) == "rolled_back"
    assert decisions[-1].reason.startswith("rolled back to 5%")
    assert percentage_of(store) == 5


# --- manual and hybrid ------------------------------------------------------------------------------

def test_manual_mode_waits_for_approval_and_promotes_on_approve(client, admin, store, clock, controller, notices):
    start(client, admin, mode="manual")
    traffic = Traffic(store)

    decisions = drive(controller, traffic, clock, until=leaves_running(store))

    assert status_of(store) == "waiting_for_approval"
    assert decisions[-1].action == "wait_for_approval"
    assert decisions[-1].reason.startswith("waiting for approval to go to 25%")
    assert notices.sent[-1][0] == "rollout.waiting_for_approval"
    # It keeps waiting, however long and however good the data.
    waiting = drive(controller, traffic, clock, ticks=15)
    assert {d.action for d in waiting} == {"hold"}
    assert all(d.reason.startswith("waiting for approval to go to 25%") for d in waiting)
    assert (status_of(store), percentage_of(store)) == ("waiting_for_approval", 5)

    body = act(client, admin, "approve")

    assert (body["status"], body["stage_index"]) == ("running", 1)
    assert percentage_of(store) == 25
    assert body["decisions"][0]["action"] == "promote"
    assert body["decisions"][0]["reason"] == "promoted to 25%: approved by test-admin"
    assert body["decisions"][0]["at"] == clock.now
    assert notices.sent[-1][0] == "rollout.promoted"
    # The next stage soaks and, again, waits for a person.
    decisions = drive(controller, traffic, clock, until=leaves_running(store))
    assert status_of(store) == "waiting_for_approval"
    assert decisions[-1].reason.startswith("waiting for approval to go to 50%")
    assert decisions[-1].numbers["elapsed_seconds"] >= 600
    assert percentage_of(store) == 25


def test_a_harmful_canary_is_rolled_back_while_waiting_for_approval(client, admin, store, clock, controller):
    start(client, admin, mode="manual", guardrails=[CHECKOUT, ERRORS])
    traffic = Traffic(store, error_rates={"off": 0.005, "on": 0.005})
    drive(controller, traffic, clock, until=leaves_running(store))
    assert status_of(store) == "waiting_for_approval"

    traffic.error_rates["on"] = 0.2  # nobody has approved yet, and the canary starts failing
    decisions = drive(controller, traffic, clock, ticks=10, until=lambda: status_of(store) != "waiting_for_approval")

    assert status_of(store) == "rolled_back"
    assert decisions[-1].action == "rollback"
    assert percentage_of(store) == 0


@pytest.mark.parametrize(("traffic_args", "action", "words"), [
    ({}, "promote", "promoted to 25%"),
    ({"rates": {"off": 0.3, "on": 0.27}}, "wait_for_approval", "checkout looks off"),
    ({"error_rates": {"off": 0.01, "on": 0.014}}, "wait_for_approval", "error looks off"),
], ids=["clean", "conversion-looks-off", "errors-look-off"])
def test_hybrid_promotes_on_its_own_unless_something_looks_off(client, admin, store, clock, controller,
                                                               traffic_args, action, words):
    start(client, admin, mode="hybrid", guardrails=[CHECKOUT, ERRORS])
    traffic = Traffic(store, **{"error_rates": {"off": 0.01, "on": 0.01}, **traffic_args})

    decisions = drive(controller, traffic, clock, until=lambda: rollout_of(store)["state"]["plan_state"]
                      ["stage_index"] > 0 or leaves_running(store)())

    assert decisions[-1].action == action
    assert words in decisions[-1].reason
    # Either way the gates had passed: hybrid only decides who takes the step.
    assert decisions[-1].numbers["gates"] == {"soaked": True, "users": True, "evidence": True}
    if action == "promote":
        assert (status_of(store), percentage_of(store)) == ("running", 25)
    else:
        assert decisions[-1].numbers["looks_off"]
        assert (status_of(store), percentage_of(store)) == ("waiting_for_approval", 5)


# --- people's changes ---------------------------------------------------------------------------------

def test_a_change_of_the_percentage_by_hand_pauses_the_plan(client, admin, store, clock, controller, notices):
    start(client, admin)
    traffic = Traffic(store)
    drive(controller, traffic, clock, ticks=3)

    changed = client.patch("/api/v1/envs/production/flags/f", json={"rollout": 40}, headers=admin)
    assert changed.status_code == 200
    decisions = drive(controller, traffic, clock, ticks=1)

    assert [d.action for d in decisions] == ["pause"]
    assert "changed by hand" in decisions[0].reason
    assert "40%" in decisions[0].reason and "5%" in decisions[0].reason
    assert status_of(store) == "paused"
    assert percentage_of(store) == 40  # the person's value stands
    assert notices.sent[-1][0] == "rollout.paused"
    assert drive(controller, traffic, clock, ticks=3) == []  # a paused plan is left alone


def test_a_change_by_hand_while_the_controller_decides_wins(client, admin, store, clock, controller, monkeypatch):
    """The person's write lands between the controller's read of the flag and its promotion."""
    start(client, admin)
    traffic = Traffic(store)
    real_decide = controller_module.decide

    def decide_while_a_person_changes_the_flag(plan: Any, stats: Any, now: float) -> Any:
        decision = real_decide(plan, stats, now)
        if decision.action == "promote":
            assert client.patch("/api/v1/envs/production/flags/f", json={"rollout": 40},
                                headers=admin).status_code == 200
        return decision

    monkeypatch.setattr(controller_module, "decide", decide_while_a_person_changes_the_flag)
    decisions = drive(controller, traffic, clock, ticks=20, until=lambda: percentage_of(store) != 5)

    assert "promote" not in [d.action for d in decisions]  # the promotion was refused, not applied
    assert percentage_of(store) == 40
    assert rollout_of(store)["state"]["plan_state"]["stage_index"] == 0
    assert status_of(store) == "running"

    decisions = drive(controller, traffic, clock, ticks=1)
    assert [d.action for d in decisions] == ["pause"]
    assert "changed by hand" in decisions[0].reason
    assert percentage_of(store) == 40


def test_a_pause_while_the_controller_promotes_wins(client, admin, store, clock, controller, monkeypatch):
    """BUG: `RolloutService.apply` moves the flag before it writes the rollout at its
    version, so a person's pause that lands while the controller decides leaves the
    flag promoted under a paused plan (and the promotion unrecorded)."""
    start(client, admin)
    traffic = Traffic(store)
    real_decide = controller_module.decide

    def decide_while_a_person_pauses(plan: Any, stats: Any, now: float) -> Any:
        decision = real_decide(plan, stats, now)
        if decision.action == "promote":
            act(client, admin, "pause")
        return decision

    monkeypatch.setattr(controller_module, "decide", decide_while_a_person_pauses)
    drive(controller, traffic, clock, ticks=20, until=lambda: status_of(store) == "paused")

    assert status_of(store) == "paused"
    assert percentage_of(store) == 5, "the flag was promoted under a plan a person had paused"


def test_a_rollback_while_a_person_pauses_is_still_recorded(client, admin, store, clock, controller, notices,
                                                            monkeypatch):
    """BUG (same cause): a rollback that meets a person's concurrent pause moves the flag
    to 0 but its decision is never stored nor notified, and the plan says paused."""
    start(client, admin)
    traffic = Traffic(store, rates={"off": 0.3, "on": 0.15})
    real_decide = controller_module.decide

    def decide_while_a_person_pauses(plan: Any, stats: Any, now: float) -> Any:
        decision = real_decide(plan, stats, now)
        if decision.action == "rollback":
            act(client, admin, "pause")
        return decision

    monkeypatch.setattr(controller_module, "decide", decide_while_a_person_pauses)
    drive(controller, traffic, clock, ticks=10, until=lambda: percentage_of(store) == 0)

    assert percentage_of(store) == 0  # the rollback itself never waits for anyone
    actions = [d["action"] for d in store.list_decisions("production", "f", limit=1000)]
    assert "rollback" in actions, "the flag went to 0 with no decision saying why"
    assert "rollout.rolled_back" in notices.events()
    assert status_of(store) == "rolled_back"


# --- decisions, interval ------------------------------------------------------------------------------

def test_decisions_are_stored_with_their_numbers_and_holds_are_deduplicated(client, admin, store, clock,
                                                                           controller):
    start(client, admin)
    traffic = Traffic(store)
    [started] = store.list_decisions("production", "f")
    assert (started["action"], started["actor"]) == ("start", "admin:test-admin")

    drive(controller, traffic, clock, users=400, ticks=2)
    first = store.list_decisions("production", "f")
    assert [d["action"] for d in first][-1] == "start"
    assert first[0]["action"] == "hold"
    drive(controller, traffic, clock, users=400, ticks=1)  # the same hold with other figures
    second = store.list_decisions("production", "f")

    assert [d["action"] for d in second] == [d["action"] for d in first]  # replaced, not appended
    hold = second[0]
    assert hold["at"] == clock.now and hold["at"] > first[0]["at"]
    assert hold["reason"] != first[0]["reason"]
    assert (hold["actor"], hold["stage_index"]) == ("controller", 0)
    # The numbers are the store's exact counts of the stage's randomized users.
    stage = store.list_stages("production", "f")[-1]["stage"]
    counts = store.stage_counts("production", "f", stage)
    assert hold["numbers"]["users"]["canary"] == counts["on"]["randomized"]["exposed"] == traffic.seen["on"]
    assert hold["numbers"]["users"]["control"] == counts["off"]["randomized"]["exposed"] == traffic.seen["off"]
    assert hold["numbers"]["users"]["canary"] > first[0]["numbers"]["users"]["canary"]
    assert hold["numbers"]["elapsed_seconds"] == pytest.approx(3 * MINUTE, abs=1)  # from the stage's start
    assert {"srm", "guardrails", "gates", "alpha", "target_percentage"} <= set(hold["numbers"])

    # A hold that says something else (the test now runs) is a new entry; so is a promotion,
    # and the hold after a promotion does not replace it.
    drive(controller, traffic, clock, until=lambda: percentage_of(store) == 25)
    drive(controller, traffic, clock, ticks=1)
    actions = [d["action"] for d in store.list_decisions("production", "f", limit=1000)]
    assert actions[:2] == ["hold", "promote"]
    assert actions[-1] == "start"
    assert actions.count("hold") < 10  # twelve ticks at 5%, held in a few entries
    assert len(actions) >= 5


def test_the_interval_is_honoured(client, admin, store, clock, controller):
    start(client, admin, interval_seconds=60)
    start(client, admin, key="g", interval_seconds=120)
    t0 = clock.now

    assert {flag for _, flag, _ in controller.run_once(t0 + 1)} == {"f", "g"}
    version = rollout_of(store)["version"]
    decisions = store.list_decisions("production", "f")

    assert controller.run_once(t0 + 60.5) == []  # f looked at t0 + 1: not due until t0 + 61
    assert rollout_of(store)["version"] == version
    assert store.list_decisions("production", "f") == decisions
    assert {flag for _, flag, _ in controller.run_once(t0 + 61)} == {"f"}
    assert {flag for _, flag, _ in controller.run_once(t0 + 121)} == {"f", "g"}
    assert rollout_of(store)["state"]["plan_state"]["last_tick_at"] == t0 + 121


# --- one controller at a time ---------------------------------------------------------------------

@pytest.fixture
def second_store(app: Flask) -> Iterator[Any]:
    """Another store object on the same database (or Redis prefix), as another process has."""
    other = open_store(app.config["DATABASE_URL"], redis_prefix=app.config["REDIS_PREFIX"])
    yield other
    other.close()


def test_two_controllers_never_both_act(client, admin, store, second_store, clock):
    start(client, admin)
    first = Controller(store, holder="first", lease_ttl=15)
    second = Controller(second_store, holder="second", lease_ttl=15)
    t0 = clock.now

    assert first.run_once(t0) is not None
    assert second.run_once(t0) is None
    assert second.run_once(t0 + 14.9) is None
    assert first.run_once(t0 + 10) is not None  # renewed until t0 + 25
    assert second.run_once(t0 + 24.9) is None
    # The first stops renewing (crashed, partitioned): the second takes over at expiry.
    assert second.run_once(t0 + 25) == []  # it holds the lease; f is not due before t0 + 60
    assert first.run_once(t0 + 26) is None

    # Both looking every second for five minutes: one acts each time, and f is looked at
    # once a minute, never twice, carrying on from the first controller's last look.
    ticks = []
    for offset in range(27, 327):
        now = t0 + offset
        results = [first.run_once(now), second.run_once(now)]
        assert [r is None for r in results] == [True, False]
        ticks.extend(now for r in results if r for _ in r)
    assert ticks == [t0 + 60 * k for k in range(1, 6)]
    assert rollout_of(store)["state"]["plan_state"]["last_tick_at"] == t0 + 300


def test_racing_controllers_take_a_free_lease_once(store, second_store, clock):
    rounds = 10
    barrier = threading.Barrier(2)
    results: dict[str, list[bool]] = {"a": [], "b": []}

    def run(name: str, on: Any) -> None:
        for i in range(rounds):
            controller = Controller(on, holder=f"{name}-{i}", lease_ttl=15)
            barrier.wait(timeout=10)
            results[name].append(controller.run_once(clock.now + 100 * i) is not None)  # the last lease expired

    threads = [threading.Thread(target=run, args=("a", store)), threading.Thread(target=run, args=("b", second_store))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    assert [a + b for a, b in zip(results["a"], results["b"], strict=True)] == [1] * rounds
    store.release_lease(LEASE_NAME, "nobody")  # releasing a lease one does not hold changes nothing


# --- robustness -------------------------------------------------------------------------------------

def test_a_broken_rollout_does_not_stop_the_others(client, admin, store, clock, controller, caplog):
    start(client, admin)
    start(client, admin, key="g")
    broken = rollout_of(store, "g")
    state = {**broken["state"], "plan_state": {**broken["state"]["plan_state"], "stage_index": 7}}
    store.put_rollout("production", "g", broken["plan"], state, expected_version=broken["version"], actor="test",
                      action="test.corrupt")

    done = controller.run_once(clock.now + MINUTE)

    assert [flag for _, flag, _ in done] == ["f"]
    assert "rollout production/g: tick failed" in caplog.text
    assert percentage_of(store, "g") == 5


def test_actions_through_the_api_use_the_clock_of_people(client, admin, store, clock):
    clock.now += 12345
    body = start(client, admin)
    assert body["state"]["stage_started_at"] == clock.now
    assert body["decisions"][0]["at"] == clock.now
    clock.now += 5
    assert client.post(plan_url(action="pause"), headers=admin).get_json()["state"]["status_since"] == clock.now


# --- notices of completion ------------------------------------------------------------------------------

def test_a_plan_that_starts_at_its_last_stage_completes_at_the_first_look(client, admin, store, clock, controller,
                                                                          notices):
    start(client, admin, stages=[{"percentage": 100}])

    [(_, _, decision)] = controller.run_once(clock.now + MINUTE)

    assert decision.action == "complete"
    assert status_of(store) == "completed"
    assert notices.sent[-1][0] == "rollout.completed"


def test_reaching_100_percent_is_notified_as_a_completion(client, admin, store, clock, controller, notices):
    start(client, admin, stages=[{"percentage": 50, "margin": 0.3}, {"percentage": 100}])
    traffic = Traffic(store)
    drive(controller, traffic, clock, until=lambda: status_of(store) == "completed")
    assert status_of(store) == "completed"

    assert "rollout.completed" in notices.events()
