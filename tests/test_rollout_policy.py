"""`decide(plan, stats, now)`: every branch, its boundaries, and the state it carries.

Time is injected (`now`); each stage starts at 0, 600, 1200 s and the default soak
is 10 intervals of 60 s. Arms are written (users, conversions, errors)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from flagserver.rollout import (
    ArmCounts,
    PlanConfig,
    PlanState,
    RolloutPlan,
    RolloutStats,
    StageStats,
    approve,
    decide,
    resume,
)
from flagserver.rollout.sequential import RHO_GRID, error_count_mixture_update

CONV = {"event": "checkout_completed", "kind": "conversion"}
ERR = {"event": "error", "kind": "error"}


def stage(percentage: float, control: tuple[int, int, int], canary: tuple[int, int, int],
          started_at: float = 0.0) -> StageStats:
    def arm(counts: tuple[int, int, int]) -> ArmCounts:
        return ArmCounts(counts[0], {"checkout_completed": counts[1], "error": counts[2]})

    return StageStats(percentage, started_at, arm(control), arm(canary))


def make_plan(state: PlanState | None = None, guardrails: list[dict[str, Any]] | None = None,
              **config: Any) -> RolloutPlan:
    cfg = PlanConfig.from_dict({"guardrails": guardrails or [CONV, ERR], **config})
    return RolloutPlan(cfg, state if state is not None else PlanState.initial(0.0))


def at(index: int, **changes: Any) -> PlanState:
    """A running state at stage `index`, started at index × 600 s."""
    return replace(PlanState(stage_index=index, stage_started_at=index * 600.0), **changes)


# Canary clearly no worse: passes the 5% gate (margin 30%) with exactly 200 canary users.
HEALTHY_5 = stage(5, (3800, 456, 19), (200, 60, 1))
HEALTHY_25 = stage(25, (3000, 360, 15), (1000, 300, 5), 600.0)
HEALTHY_50 = stage(50, (2000, 240, 10), (2000, 400, 10), 1200.0)


@dataclass
class Case:
    name: str
    stages: list[StageStats]
    now: float
    action: str
    says: list[str]
    plan: dict[str, Any] = field(default_factory=dict)
    state: PlanState | None = None
    target: float | None = None
    notify: bool = False
    status: str | None = None


CASES = [
    Case("no stats yet", [], 600, "hold", ["held at 5%: no users seen yet"], target=5),
    Case("zero traffic", [stage(5, (0, 0, 0), (0, 0, 0))], 600, "hold",
         ["0 of 200 users in canary", "0 of 200 users in control", "not enough checkout_completed data"],
         target=5),
    Case("canary arm empty: SRM", [stage(5, (4000, 480, 20), (0, 0, 0))], 600, "rollback",
         ["rolled back to 0%: sample ratio mismatch: canary has 0.0% of users, expected 5.0%"],
         target=0, notify=True, status="rolled_back"),
    Case("control arm empty: SRM", [stage(5, (0, 0, 0), (4000, 480, 20))], 600, "rollback",
         ["canary has 100.0% of users, expected 5.0%"], target=0, notify=True),
    Case("SRM: 3.1% where 5% configured", [stage(5, (19380, 2326, 97), (620, 74, 3))], 600, "rollback",
         ["rolled back to 0%: sample ratio mismatch: canary has 3.1% of users, expected 5.0% — the comparison "
          "cannot be trusted"], target=0, notify=True, status="rolled_back"),
    Case("SRM with on_srm=pause", [stage(5, (19380, 2326, 97), (620, 74, 3))], 600, "pause",
         ["paused: sample ratio mismatch"], plan={"on_srm": "pause"}, target=5, notify=True, status="paused"),
    Case("conversion harm", [stage(5, (9500, 1140, 47), (500, 30, 2))], 600, "rollback",
         ["rolled back to 0%: checkout_completed conversion 6.0% vs 12.0%, −50%, margin 10%", "needed 40 to 1"],
         target=0, notify=True, status="rolled_back"),
    Case("harm is checked before the soak ends", [stage(5, (9500, 1140, 47), (500, 30, 2))], 60, "rollback",
         ["conversion 6.0% vs 12.0%"], target=0, notify=True),
    Case("error spike", [stage(5, (9500, 1140, 47), (500, 60, 12))], 600, "rollback",
         ["rolled back to 0%: error rate 2.40% vs 0.49%, ×4.9, margin +50%"], target=0, notify=True),
    Case("harm at 25% rolls back to zero", [HEALTHY_5, stage(25, (7500, 900, 40), (2500, 150, 12), 600.0)], 1200,
         "rollback", ["rolled back to 0%"], state=at(1), target=0, notify=True),
    Case("harm at 25% with rollback_to=previous_stage", [HEALTHY_5, stage(25, (7500, 900, 40), (2500, 150, 12), 600.0)],
         1200, "rollback", ["rolled back to 5%"], plan={"rollback_to": "previous_stage"}, state=at(1), target=5,
         notify=True),
    Case("rollback_to=previous_stage from the first stage", [stage(5, (9500, 1140, 47), (500, 30, 2))], 600,
         "rollback", ["rolled back to 0%"], plan={"rollback_to": "previous_stage"}, target=0, notify=True),
    Case("auto promotes at exactly the soak, 200 per arm", [HEALTHY_5], 600, "promote",
         ["promoted to 25%: after 10 min at 5% with 200 canary and 3,800 control users",
          "checkout_completed is no lower than in control (margin 30%)"], target=25, status="running"),
    Case("one second short of the soak", [HEALTHY_5], 599, "hold", ["held at 5%: 10 min of 10 min soaked"],
         target=5),
    Case("one user short in canary", [stage(5, (3781, 454, 19), (199, 60, 1))], 600, "hold",
         ["held at 5%: 199 of 200 users in canary"], target=5),
    Case("not enough conversions for the test", [stage(5, (3800, 5, 0), (200, 4, 0))], 600, "hold",
         ["not enough checkout_completed data yet (each arm needs 200 users and both 10 conversions)"], target=5),
    Case("evidence not there yet", [stage(5, (9500, 1140, 47), (500, 57, 2))], 600, "hold",
         ["held at 5%: checkout_completed could still be up to 39.7% lower (margin 30%)"], target=5),
    Case("a larger min_users_per_arm", [HEALTHY_5], 600, "hold", ["held at 5%: 200 of 1,000 users in canary"],
         plan={"stages": [{"percentage": 5, "min_users_per_arm": 1000}, {"percentage": 100}]}, target=5),
    Case("manual waits for approval", [HEALTHY_5], 600, "wait_for_approval",
         ["waiting for approval to go to 25%: after 10 min at 5%"], plan={"mode": "manual"}, target=5,
         notify=True, status="waiting_for_approval"),
    Case("hybrid promotes when nothing looks off", [HEALTHY_5], 600, "promote", ["promoted to 25%"],
         plan={"mode": "hybrid"}, target=25),
    Case("hybrid waits when conversion looks off", [stage(5, (38000, 4560, 190), (2000, 225, 10))], 600,
         "wait_for_approval", ["checkout_completed looks off: −6.2%, more than half its 10% margin"],
         plan={"mode": "hybrid"}, target=5, notify=True, status="waiting_for_approval"),
    Case("... which auto promotes", [stage(5, (38000, 4560, 190), (2000, 225, 10))], 600, "promote",
         ["checkout_completed is at worst 23.1% lower (margin 30%)"], target=25),
    Case("hybrid waits when errors look off", [stage(5, (3800, 456, 19), (200, 60, 2))], 600, "wait_for_approval",
         ["error looks off: ×2.00, more than half its +50% margin"], plan={"mode": "hybrid"}, target=5, notify=True),
    Case("promoting into the last stage", [HEALTHY_5, HEALTHY_25, HEALTHY_50], 1800, "promote",
         ["promoted to 100%: after 10 min at 50%"], state=at(2), target=100),
    Case("at 100% the plan completes", [HEALTHY_5, HEALTHY_25, HEALTHY_50], 2400, "complete",
         ["completed: the flag is at 100%"], state=at(3), target=100, notify=True, status="completed"),
    Case("paused", [HEALTHY_5], 600, "hold", ["paused at 5%: someone is looking"],
         state=PlanState(status="paused", status_reason="someone is looking"), target=5, status="paused"),
    Case("waiting for approval, no harm", [HEALTHY_5], 900, "hold",
         ["waiting for approval to go to 25% (asked 5 min ago); no sign of harm"],
         state=PlanState(status="waiting_for_approval", status_since=600.0), target=5,
         status="waiting_for_approval"),
    Case("waiting for approval, harm still rolls back", [stage(5, (9500, 1140, 47), (500, 30, 2))], 900,
         "rollback", ["rolled back to 0%: checkout_completed conversion"],
         state=PlanState(status="waiting_for_approval", status_since=600.0), target=0, notify=True,
         status="rolled_back"),
    Case("rolled back", [HEALTHY_5], 600, "hold", ["nothing to do: the rollout was rolled back (bad)"],
         state=PlanState(status="rolled_back", status_reason="bad"), status="rolled_back"),
    Case("completed", [HEALTHY_5], 600, "hold", ["nothing to do: the rollout is complete"],
         state=PlanState(status="completed"), status="completed"),
    Case("aborted", [HEALTHY_5], 600, "hold", ["nothing to do: the rollout was aborted"],
         state=PlanState(status="aborted"), status="aborted"),
    Case("the flag's percentage was changed by hand", [stage(25, (3000, 360, 15), (1000, 120, 5))], 600, "pause",
         ["paused: the flag is at 25% but the plan's stage is 5%"], target=25, notify=True, status="paused"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_decide(case: Case):
    # Given a plan in some state and the counts of its stages
    plan = make_plan(case.state, **case.plan)

    # When the controller asks at `now`
    decision = decide(plan, RolloutStats(tuple(case.stages)), case.now)

    # Then the action, the words, the target, the notice and the new status are as expected
    assert decision.action == case.action, decision.reason
    for words in case.says:
        assert words in decision.reason
    assert decision.numbers["target_percentage"] == case.target
    assert decision.notify is case.notify
    if case.status is not None:
        assert decision.state.status == case.status
    # ... and everything is JSON, without NaN or infinities, and the state reads back the same
    json.dumps(decision.numbers, allow_nan=False)
    stored = json.loads(json.dumps(decision.state.to_dict(), allow_nan=False))
    assert PlanState.from_dict(stored) == decision.state


def test_final_and_paused_states_are_returned_unchanged():
    for state in (PlanState(status="rolled_back"), PlanState(status="paused"), PlanState(status="aborted")):
        decision = decide(make_plan(state), RolloutStats((HEALTHY_5,)), 600)
        assert decision.state is state


def test_promotion_starts_the_next_stage_and_keeps_what_must_carry_over():
    decision = decide(make_plan(), RolloutStats((HEALTHY_5,)), 600)
    assert decision.action == "promote"
    assert decision.state.stage_index == 1
    assert decision.state.stage_started_at == 600
    assert decision.state.ticks_in_stage == 0
    assert decision.state.tau["checkout_completed"] == pytest.approx(0.2 * (456 + 60) / 4000)
    assert decision.numbers["completes_plan"] is False
    assert decision.numbers["gates"] == {"soaked": True, "users": True, "evidence": True}


def test_promotion_into_the_last_stage_says_it_completes_the_plan():
    decision = decide(make_plan(at(2)), RolloutStats((HEALTHY_5, HEALTHY_25, HEALTHY_50)), 1800)
    assert decision.action == "promote" and decision.numbers["completes_plan"] is True
    assert decision.state.stage_index == 3 and decision.state.status == "running"


def test_tau_is_frozen_at_first_use_and_does_not_move():
    plan = make_plan()
    # Before the guard is met there is no τ
    early = decide(plan, RolloutStats((stage(5, (1900, 228, 9), (100, 12, 0)),)), 120)
    assert early.state.tau_for("checkout_completed") is None
    assert early.numbers["guardrails"]["checkout_completed"]["tau"] is None

    # At the first test, τ = tau_rel × the pooled rate of the tested stages
    first = decide(RolloutPlan(plan.config, early.state), RolloutStats((stage(5, (3800, 456, 19), (200, 24, 1)),)),
                   240)
    tau = first.state.tau_for("checkout_completed")
    assert tau == pytest.approx(0.2 * 480 / 4000)
    assert first.numbers["guardrails"]["checkout_completed"]["tau_frozen_now"] is True

    # Later, with a very different rate, it stays where it was
    later = decide(RolloutPlan(plan.config, first.state),
                   RolloutStats((stage(5, (7600, 2280, 38), (400, 120, 2)),)), 360)
    assert later.state.tau_for("checkout_completed") == tau
    assert later.numbers["guardrails"]["checkout_completed"]["tau"] == tau
    assert later.numbers["guardrails"]["checkout_completed"]["tau_frozen_now"] is False


@pytest.mark.parametrize(("canary_users", "conversions", "tested"), [
    (200, (5, 5), True),     # exactly 200 per arm and 10 conversions pooled
    (199, (5, 5), False),    # one user short
    (200, (5, 4), False),    # one conversion short
])
def test_the_conversion_test_guard_boundary(canary_users: int, conversions: tuple[int, int], tested: bool):
    stats = RolloutStats((StageStats(50, 0.0, ArmCounts(200, {"checkout_completed": conversions[0]}),
                                     ArmCounts(canary_users, {"checkout_completed": conversions[1]})),))
    plan = make_plan(stages=[{"percentage": 50}, {"percentage": 100}])
    decision = decide(plan, stats, 60)
    numbers = decision.numbers["guardrails"]["checkout_completed"]
    assert numbers["tested"] is tested
    assert (decision.state.tau_for("checkout_completed") is not None) is tested
    assert (numbers["harm"]["log_lambda"] is not None) is tested


def test_alpha_is_split_across_guardrails():
    # Given a harm statistic between 1/0.05 = 20 and 1/0.025 = 40
    stats = RolloutStats((stage(5, (19000, 2280, 0), (1000, 89, 0)),))
    alone = decide(make_plan(guardrails=[CONV]), stats, 600)
    lam = alone.numbers["guardrails"]["checkout_completed"]["harm"]["lambda"]
    assert 20 < lam < 40

    # Then with one guardrail it is harm; with two (α/2 each) it is not yet
    assert alone.action == "rollback" and alone.numbers["alpha_per_guardrail"] == 0.05
    both = decide(make_plan(guardrails=[CONV, ERR]), stats, 600)
    assert both.action == "hold" and both.numbers["alpha_per_guardrail"] == 0.025
    assert both.numbers["guardrails"]["checkout_completed"]["harm"]["threshold"] == 40
    assert both.numbers["guardrails"]["checkout_completed"]["harm"]["lambda"] == pytest.approx(lam)


def test_stages_are_compared_within_not_pooled():
    # Given a baseline that halved between stages, the canary equal to control in each:
    # pooled, the canary looks 25% worse (9.3% vs 12.5%); within stages it is identical
    stats = RolloutStats((stage(5, (9500, 1520, 47), (500, 80, 2)),
                          stage(25, (7500, 600, 40), (2500, 200, 12), 600.0)))
    decision = decide(make_plan(at(1)), stats, 900)
    conversion = decision.numbers["guardrails"]["checkout_completed"]
    assert decision.action == "hold"
    assert conversion["relative"] == pytest.approx(0.0, abs=1e-12)
    assert conversion["harm"]["lambda"] < 1


def test_the_error_test_adds_increments_only():
    plan = make_plan()
    stats = RolloutStats((stage(5, (1900, 228, 10), (100, 12, 2)),))
    first = decide(plan, stats, 60)
    expected = error_count_mixture_update((0.0,) * len(RHO_GRID), 2, 10, 100 / 2000)
    assert first.state.error_log_lr["error"] == pytest.approx(expected)

    # The same cumulative counts again: no new evidence
    again = decide(RolloutPlan(plan.config, first.state), stats, 120)
    assert again.state.error_log_lr["error"] == pytest.approx(expected)

    # One more canary error: exactly one increment added, at the new share
    more = RolloutStats((stage(5, (3800, 456, 10), (200, 24, 3)),))
    third = decide(RolloutPlan(plan.config, again.state), more, 180)
    assert third.state.error_log_lr["error"] == pytest.approx(error_count_mixture_update(expected, 1, 0, 200 / 4000))
    assert third.numbers["guardrails"]["error"]["increments"] == [[1, 0]]


def test_srm_multiplies_over_stages():
    stages = (stage(5, (9450, 1134, 47), (550, 66, 3)), stage(25, (7300, 876, 36), (2700, 324, 14), 600.0))
    decision = decide(make_plan(at(1)), RolloutStats(stages), 900)
    rows = decision.numbers["srm"]["stages"]
    assert decision.numbers["srm"]["log_bayes_factor"] == pytest.approx(
        rows[0]["log_bayes_factor"] + rows[1]["log_bayes_factor"])
    assert decision.state.srm_log_bayes_factor == pytest.approx(decision.numbers["srm"]["log_bayes_factor"])


def test_max_hold_notifies_once():
    plan = make_plan(stages=[{"percentage": 5, "max_hold_seconds": 1200}, {"percentage": 100}])
    stats = RolloutStats((stage(5, (9500, 1140, 47), (500, 57, 2)),))
    within = decide(plan, stats, 1200)
    assert within.action == "hold" and within.notify is False

    over = decide(plan, stats, 1260)
    assert over.action == "hold" and over.notify is True
    assert "held longer than the 20 min maximum" in over.reason and over.state.hold_notified

    still = decide(RolloutPlan(plan.config, over.state), stats, 1320)
    assert still.action == "hold" and still.notify is False and "20 min maximum" in still.reason


def test_decide_is_pure():
    plan, stats = make_plan(), RolloutStats((stage(5, (9500, 1140, 47), (500, 57, 2)),))
    assert decide(plan, stats, 600) == decide(plan, stats, 600)


def test_approve_promotes_a_waiting_plan_and_refuses_otherwise():
    waiting = decide(make_plan(mode="manual"), RolloutStats((HEALTHY_5,)), 600)
    plan = RolloutPlan(make_plan(mode="manual").config, waiting.state)

    approved = approve(plan, 700)
    assert approved.action == "promote" and approved.numbers["target_percentage"] == 25
    assert approved.state.stage_index == 1 and approved.state.status == "running"
    assert approved.state.stage_started_at == 700
    with pytest.raises(ValueError, match="not waiting for approval"):
        approve(make_plan(), 700)


def test_resume_sets_a_paused_plan_running_and_refuses_otherwise():
    paused = make_plan(PlanState(status="paused", status_reason="x"))
    state = resume(paused, 900)
    assert state.status == "running" and state.status_reason == "" and state.status_since == 900
    with pytest.raises(ValueError, match="not paused"):
        resume(make_plan(), 900)


def test_a_corrupt_stage_index_is_refused():
    with pytest.raises(ValueError, match="stage_index 7"):
        decide(make_plan(PlanState(stage_index=7)), RolloutStats((HEALTHY_5,)), 600)


def test_numbers_explain_a_rollback():
    decision = decide(make_plan(), RolloutStats((stage(5, (9500, 1140, 47), (500, 30, 2)),)), 600)
    conversion = decision.numbers["guardrails"]["checkout_completed"]
    assert conversion["canary_rate"] == pytest.approx(0.06)
    assert conversion["control_rate"] == pytest.approx(0.12)
    assert conversion["relative"] == pytest.approx(-0.5)
    assert conversion["harm"]["harmful"] is True
    assert math.log(conversion["harm"]["lambda"]) >= math.log(40)
    assert decision.numbers["users"] == {"canary": 500, "control": 9500, "min_per_arm": 200}
    assert decision.numbers["srm"]["mismatch"] is False
