"""`decide(plan, stats, now)`: what the rollout does at this tick, and why.

Pure: no clock (time is `now`), no store, no randomness; the same inputs give
the same decision. The order at every tick (STATISTICS.md 8):

1. sample ratio: the sequential Beta-binomial Bayes factor, multiplied over the
   plan's stages, reaching 1/srm_alpha → roll back (or pause, `on_srm`);
2. harm: each conversion guardrail by the one-sided, stage-stratified mSPRT,
   each error guardrail by the exact conditional count test, each at
   alpha / (number of guardrails) → roll back;
3. promotion: leave the stage once it has soaked `min_duration_seconds`, has
   `min_users_per_arm` in each arm, and every conversion guardrail passes the
   always-valid non-inferiority gate at the stage's margin; then promote
   (auto), wait for approval (manual), or in hybrid mode promote unless a
   guardrail's point estimate is worse than half its margin;
4. otherwise hold, saying what is missing.

A plan that is paused, or finished (rolled back, completed, aborted), only
gets a `hold` saying so. A plan waiting for approval is still serving its
canary, so steps 1 and 2 keep running: a harmful canary is rolled back even
while a person is deciding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal

from .evidence import MIN_TEST_CONVERSIONS as MIN_TEST_CONVERSIONS
from .evidence import MIN_TEST_USERS_PER_ARM as MIN_TEST_USERS_PER_ARM
from .evidence import (
    ConversionEvidence,
    ErrorEvidence,
    SrmEvidence,
    conversion_evidence,
    error_evidence,
    json_safe,
    marks_for,
    srm_evidence,
)
from .inputs import RolloutStats, StageStats
from .plan import PlanConfig, RolloutPlan
from .state import PlanState

Action = Literal["hold", "promote", "wait_for_approval", "rollback", "pause", "complete"]

_STATUS_WORDS = {
    "rolled_back": "was rolled back",
    "completed": "is complete",
    "aborted": "was aborted",
}


@dataclass(frozen=True, slots=True)
class Decision:
    """One tick's outcome. `reason` is a sentence for people; `numbers` holds every figure
    behind it (JSON-safe: non-finite values become None); `state` is the plan state to
    store; `notify` asks the controller to tell people (rollback, pause, waiting for
    approval, completion, a stage held past its `max_hold_seconds`)."""

    action: Action
    reason: str
    numbers: dict[str, Any]
    state: PlanState
    notify: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "reason": self.reason, "numbers": self.numbers, "notify": self.notify,
                "state": self.state.to_dict()}


def decide(plan: RolloutPlan, stats: RolloutStats, now: float) -> Decision:
    """Decide this tick for `plan`, given the counts of the stages entered so far.

    Raises ValueError when the state's stage index is not a stage of the plan (a
    corrupt state). When the current stats stage is not at the plan's percentage (the
    rollout was changed by hand, or a promotion was not applied) the plan is paused
    with a notice rather than judged on the wrong data.
    """
    config, state = plan.config, plan.state
    if not 0 <= state.stage_index < len(config.stages):
        raise ValueError(f"stage_index {state.stage_index} is not a stage of this plan")
    stage = config.stages[state.stage_index]
    numbers: dict[str, Any] = {"status": state.status, "mode": config.mode, "stage_index": state.stage_index,
                               "stage_count": len(config.stages), "percentage": stage.percentage}

    if state.is_final:
        why = f" ({state.status_reason})" if state.status_reason else ""
        return _decision("hold", f"nothing to do: the rollout {_STATUS_WORDS[state.status]}{why}",
                         numbers, state, target=None)
    if state.status == "paused":
        why = f": {state.status_reason}" if state.status_reason else ""
        return _decision("hold", f"paused at {_pct_stage(stage.percentage)}{why}", numbers, state,
                         target=stage.percentage)
    if state.stage_index == len(config.stages) - 1:
        done = state.with_status("completed", f"reached {_pct_stage(stage.percentage)}", now)
        return _decision("complete", f"completed: the flag is at {_pct_stage(stage.percentage)}", numbers,
                         replace(done, last_tick_at=now), target=stage.percentage, notify=True)
    current = stats.current
    if current is None:
        return _decision("hold", f"held at {_pct_stage(stage.percentage)}: no users seen yet", numbers,
                         replace(state, last_tick_at=now), target=stage.percentage)
    if abs(current.percentage - stage.percentage) > 0.005:
        why = (f"the flag is at {_pct_stage(current.percentage)} but the plan's stage is "
               f"{_pct_stage(stage.percentage)}; was the rollout changed by hand?")
        return _decision("pause", f"paused: {why}", {**numbers, "flag_percentage": current.percentage},
                         state.with_status("paused", why, now), target=current.percentage, notify=True)
    return _judge(config, state, stats, current, now, numbers)


def approve(plan: RolloutPlan, now: float) -> Decision:
    """A person approved the promotion a plan is waiting for: the same `promote` decision
    `decide` gives in auto mode. Raises ValueError unless the plan is waiting for approval."""
    config, state = plan.config, plan.state
    if state.status != "waiting_for_approval":
        raise ValueError(f"the rollout is {state.status.replace('_', ' ')}, not waiting for approval")
    target = config.stages[state.stage_index + 1].percentage
    numbers = {"status": state.status, "mode": config.mode, "stage_index": state.stage_index,
               "stage_count": len(config.stages), "percentage": config.stages[state.stage_index].percentage,
               "completes_plan": state.stage_index + 1 == len(config.stages) - 1}
    return _decision("promote", f"promoted to {_pct_stage(target)}: approved", numbers,
                     replace(state.promoted(now), last_tick_at=now), target=target)


def resume(plan: RolloutPlan, now: float) -> PlanState:
    """The state of a paused plan set running again (the soak clock keeps its start).
    Raises ValueError unless the plan is paused. A plan paused for a sample ratio
    mismatch pauses again at the next tick unless its stage is restarted (the mismatch
    is in the stage's counts)."""
    if plan.state.status != "paused":
        raise ValueError(f"the rollout is {plan.state.status.replace('_', ' ')}, not paused")
    return plan.state.with_status("running", "", now)


def _judge(config: PlanConfig, state: PlanState, stats: RolloutStats, current: StageStats, now: float,
           numbers: dict[str, Any]) -> Decision:
    stage = config.stages[state.stage_index]
    alpha_each = config.alpha / len(config.guardrails)
    srm = srm_evidence(config, stats)
    conversions = [conversion_evidence(g, config, stats, state.tau_for(g.event), alpha_each, stage.margin)
                   for g in config.conversion_guardrails]
    errors = [error_evidence(g, stats, state.last_counts, state.error_log_lr.get(g.event), alpha_each)
              for g in config.error_guardrails]
    tau = dict(state.tau)
    tau.update({c.guardrail.event: c.tau for c in conversions if c.tau_frozen_now and c.tau is not None})
    new_state = replace(
        state, tau=tau, error_log_lr={e.guardrail.event: e.log_lr for e in errors},
        last_counts=marks_for(stats, [g.event for g in config.error_guardrails]),
        srm_log_bayes_factor=srm.log_bayes_factor, ticks_in_stage=state.ticks_in_stage + 1, last_tick_at=now)
    elapsed = max(0.0, now - max(state.stage_started_at, current.started_at))
    n_t, n_c = current.canary.exposed, current.control.exposed
    numbers.update({
        "elapsed_seconds": elapsed, "min_duration_seconds": stage.min_duration_seconds,
        "max_hold_seconds": stage.max_hold_seconds, "ticks_in_stage": new_state.ticks_in_stage,
        "users": {"canary": n_t, "control": n_c, "min_per_arm": stage.min_users_per_arm},
        "alpha": config.alpha, "alpha_per_guardrail": alpha_each, "alpha_promotion": config.alpha_promotion,
        "srm": srm.numbers(),
        "guardrails": {**{c.guardrail.event: c.numbers() for c in conversions},
                       **{e.guardrail.event: e.numbers() for e in errors}},
    })

    # 1. Sample ratio mismatch: nothing else can be trusted.
    if srm.fired:
        words = _srm_words(srm, len(stats.stages) > 1)
        if config.on_srm == "pause":
            return _decision("pause", f"paused: {words}", numbers, new_state.with_status("paused", words, now),
                             target=stage.percentage, notify=True)
        target = _rollback_target(config, state)
        return _decision("rollback", f"rolled back to {_pct_stage(target)}: {words}", numbers,
                         new_state.with_status("rolled_back", words, now), target=target, notify=True)

    # 2. Harm on any guardrail.
    harmful = [_harm_words(c) for c in conversions if c.harmful] + [_error_words(e) for e in errors if e.harmful]
    if harmful:
        words = "; ".join(harmful)
        target = _rollback_target(config, state)
        return _decision("rollback", f"rolled back to {_pct_stage(target)}: {words}", numbers,
                         new_state.with_status("rolled_back", words, now), target=target, notify=True)

    following = config.stages[state.stage_index + 1].percentage
    numbers["completes_plan"] = state.stage_index + 1 == len(config.stages) - 1
    if state.status == "waiting_for_approval":
        since = now - state.status_since if state.status_since is not None else 0.0
        return _decision("hold", f"waiting for approval to go to {_pct_stage(following)} "
                         f"(asked {_duration(since)} ago); no sign of harm", numbers, new_state,
                         target=stage.percentage)

    # 3. Promotion gates.
    missing = []
    if elapsed < stage.min_duration_seconds:
        missing.append(f"{_duration(elapsed)} of {_duration(stage.min_duration_seconds)} soaked")
    for arm, n in (("canary", n_t), ("control", n_c)):
        if n < stage.min_users_per_arm:
            missing.append(f"{n:,} of {stage.min_users_per_arm:,} users in {arm}")
    missing.extend(_gate_words(c, stage.margin) for c in conversions if not c.gate_passed)
    numbers["gates"] = {"soaked": elapsed >= stage.min_duration_seconds,
                        "users": min(n_t, n_c) >= stage.min_users_per_arm,
                        "evidence": all(c.gate_passed for c in conversions)}
    if not missing:
        evidence = "; ".join(_pass_words(c) for c in conversions)
        summary = (f"after {_duration(elapsed)} at {_pct_stage(stage.percentage)} with {n_t:,} canary and "
                   f"{n_c:,} control users, {evidence}; no sign of harm")
        checked: list[ConversionEvidence | ErrorEvidence] = [*conversions, *errors]
        off = [w for w in (_off_words(x) for x in checked) if w]
        numbers["looks_off"] = off
        if config.mode == "manual" or (config.mode == "hybrid" and off):
            why = "; ".join(off) if config.mode == "hybrid" else summary
            reason = f"waiting for approval to go to {_pct_stage(following)}: {why}"
            return _decision("wait_for_approval", reason, numbers,
                             new_state.with_status("waiting_for_approval", why, now), target=stage.percentage,
                             notify=True)
        return _decision("promote", f"promoted to {_pct_stage(following)}: {summary}", numbers,
                         new_state.promoted(now), target=following)

    # 4. Hold, saying what is missing; tell people once when the stage overstays.
    notify = False
    reason = f"held at {_pct_stage(stage.percentage)}: " + "; ".join(missing)
    if stage.max_hold_seconds is not None and elapsed > stage.max_hold_seconds:
        reason += f" (held longer than the {_duration(stage.max_hold_seconds)} maximum)"
        numbers["max_hold_exceeded"] = True
        if not state.hold_notified:
            notify = True
            new_state = replace(new_state, hold_notified=True)
    return _decision("hold", reason, numbers, new_state, target=stage.percentage, notify=notify)


def _decision(action: Action, reason: str, numbers: dict[str, Any], state: PlanState, *,
              target: float | None, notify: bool = False) -> Decision:
    numbers = {**numbers, "action": action, "target_percentage": target}
    return Decision(action, reason, json_safe(numbers), state, notify)


def _rollback_target(config: PlanConfig, state: PlanState) -> float:
    if config.rollback_to == "previous_stage" and state.stage_index > 0:
        return config.stages[state.stage_index - 1].percentage
    return 0.0


# -- words --------------------------------------------------------------------------------------


def _srm_words(srm: SrmEvidence, several: bool) -> str:
    worst = srm.worst or {}
    observed, expected = worst.get("observed_share"), worst.get("expected_share")
    where = f" at {_pct_stage(worst['percentage'])}" if several and worst else ""
    if observed is None or expected is None:
        return f"sample ratio mismatch{where} — the comparison cannot be trusted"
    return (f"sample ratio mismatch{where}: canary has {_pct(observed)} of users, expected {_pct(expected)} "
            f"— the comparison cannot be trusted")


def _harm_words(c: ConversionEvidence) -> str:
    return (f"{c.guardrail.event} conversion {_pct(c.canary_rate)} vs {_pct(c.control_rate)}, "
            f"{_signed_pct(c.relative)}, margin {_pct_whole(c.guardrail.margin)} "
            f"(evidence of harm {_odds(c.log_harm)} to 1, needed {_count(c.harm_threshold)} to 1)")


def _error_words(e: ErrorEvidence) -> str:
    ratio = "no errors in control" if e.rate_ratio is None or math.isinf(e.rate_ratio) else f"×{e.rate_ratio:.1f}"
    return (f"{e.guardrail.event} rate {_pct(e.canary_rate, 2)} vs {_pct(e.control_rate, 2)}, {ratio}, "
            f"margin +{_pct_whole(e.guardrail.margin)} "
            f"(evidence of harm {_odds(e.log_statistic)} to 1, needed {_count(e.threshold)} to 1)")


def _gate_words(c: ConversionEvidence, margin: float) -> str:
    event = c.guardrail.event
    if not c.tested:
        return (f"not enough {event} data yet (each arm needs {MIN_TEST_USERS_PER_ARM} users and both "
                f"{MIN_TEST_CONVERSIONS} conversions)")
    if c.worst_relative is None:
        return f"{event} could still be much lower (margin {_pct_whole(margin)})"
    return f"{event} could still be up to {_pct_whole(c.worst_relative)} lower (margin {_pct_whole(margin)})"


def _pass_words(c: ConversionEvidence) -> str:
    worst = c.worst_relative if c.worst_relative is not None else 0.0
    if worst <= 0:
        return f"{c.guardrail.event} is no lower than in control (margin {_pct_whole(c.stage_margin)})"
    return f"{c.guardrail.event} is at worst {_pct_whole(worst)} lower (margin {_pct_whole(c.stage_margin)})"


def _off_words(x: ConversionEvidence | ErrorEvidence) -> str | None:
    if not x.looks_off:
        return None
    if isinstance(x, ConversionEvidence):
        return (f"{x.guardrail.event} looks off: {_signed_pct(x.relative)}, more than half its "
                f"{_pct_whole(x.guardrail.margin)} margin")
    ratio = "only the canary has any" if x.rate_ratio is None or math.isinf(x.rate_ratio) \
        else f"×{x.rate_ratio:.2f}"
    return (f"{x.guardrail.event} looks off: {ratio}, more than half its +{_pct_whole(x.guardrail.margin)} "
            f"margin")


def _pct(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value * 100:.{digits}f}%"


def _pct_whole(value: float) -> str:
    text = f"{value * 100:.1f}".rstrip("0").rstrip(".")
    return f"{text}%"


def _signed_pct(value: float | None) -> str:
    if value is None:
        return "n/a"
    text = f"{abs(value) * 100:.0f}%" if abs(value) >= 0.095 else f"{abs(value) * 100:.1f}%"
    return ("−" if value < 0 else "+") + text


def _pct_stage(percentage: float) -> str:
    return f"{percentage:g}%"


def _count(value: float) -> str:
    return f"{value:,.0f}"


def _odds(log_value: float | None) -> str:
    if log_value is None:
        return "n/a"
    if log_value > 13.8:  # e^13.8 ≈ 1,000,000
        return "more than 1,000,000"
    return f"{math.exp(log_value):,.0f}" if log_value >= 2.3 else f"{math.exp(log_value):.1f}"


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    if minutes < 90:
        return f"{minutes:.0f} min"
    hours, rest = divmod(round(minutes), 60)
    return f"{hours} h {rest} min" if rest else f"{hours} h"
