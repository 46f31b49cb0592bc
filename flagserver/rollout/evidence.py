"""The evidence of one tick, per check: sample ratio (SRM), conversion guardrails
(harm test and promotion gate) and error guardrails (exact count test).

Each function reads the stats and the carried state and returns a frozen result
with every number behind it; `policy.decide` turns the results into a decision.
Pure and standard-library only, like the rest of the package.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .inputs import RolloutStats
from .plan import Guardrail, PlanConfig
from .sequential import (
    RHO_GRID,
    error_count_mixture_update,
    log_error_count_mixture,
    log_one_sided_lambda,
    log_srm_bayes_factor,
    mantel_haenszel_rate_ratio,
    pooled_difference_variance,
    stratified_score,
    tau_for,
    unpooled_difference_variance,
)
from .state import StageMark

#: The conversion test's guard (STATISTICS.md 2.9): a stage enters the stratified tests
#: once each arm has this many users and both arms together this many conversions.
MIN_TEST_USERS_PER_ARM = 200
MIN_TEST_CONVERSIONS = 10


@dataclass(frozen=True, slots=True)
class SrmEvidence:
    log_bayes_factor: float
    threshold: float
    stages: tuple[dict[str, Any], ...]
    worst: dict[str, Any] | None

    @property
    def fired(self) -> bool:
        return self.log_bayes_factor >= math.log(self.threshold)

    def numbers(self) -> dict[str, Any]:
        return {"log_bayes_factor": self.log_bayes_factor, "bayes_factor": _exp(self.log_bayes_factor),
                "threshold": self.threshold, "mismatch": self.fired, "stages": list(self.stages)}


@dataclass(frozen=True, slots=True)
class ConversionEvidence:
    guardrail: Guardrail
    alpha: float
    tau: float | None
    tau_frozen_now: bool
    tested: bool
    control_rate: float | None
    canary_rate: float | None
    relative: float | None
    log_harm: float | None
    stage_margin: float
    log_gate: float | None
    worst_relative: float | None
    gate_threshold: float
    strata: tuple[dict[str, Any], ...]

    @property
    def harm_threshold(self) -> float:
        return 1 / self.alpha

    @property
    def harmful(self) -> bool:
        return self.log_harm is not None and self.log_harm >= math.log(self.harm_threshold)

    @property
    def gate_passed(self) -> bool:
        return self.log_gate is not None and self.log_gate >= math.log(self.gate_threshold)

    @property
    def looks_off(self) -> bool:
        """Hybrid mode's check: the point estimate is worse than half the guardrail's margin."""
        return self.relative is not None and self.relative < -self.guardrail.margin / 2

    def numbers(self) -> dict[str, Any]:
        return {
            "kind": "conversion", "margin": self.guardrail.margin, "canary_rate": self.canary_rate,
            "control_rate": self.control_rate, "relative": self.relative, "tau": self.tau,
            "tau_frozen_now": self.tau_frozen_now, "tested": self.tested, "looks_off": self.looks_off,
            "harm": {"alpha": self.alpha, "threshold": self.harm_threshold, "log_lambda": self.log_harm,
                     "lambda": None if self.log_harm is None else _exp(self.log_harm), "harmful": self.harmful},
            "promotion": {"stage_margin": self.stage_margin, "threshold": self.gate_threshold,
                          "log_lambda": self.log_gate, "lambda": None if self.log_gate is None else _exp(self.log_gate),
                          "worst_relative": self.worst_relative, "passed": self.gate_passed},
            "strata": list(self.strata),
        }


@dataclass(frozen=True, slots=True)
class ErrorEvidence:
    guardrail: Guardrail
    alpha: float
    log_lr: tuple[float, ...]
    canary_rate: float | None
    control_rate: float | None
    rate_ratio: float | None
    increments: tuple[tuple[int, int], ...] = field(default=())

    @property
    def threshold(self) -> float:
        return 1 / self.alpha

    @property
    def log_statistic(self) -> float:
        return log_error_count_mixture(self.log_lr)

    @property
    def harmful(self) -> bool:
        return self.log_statistic >= math.log(self.threshold)

    @property
    def looks_off(self) -> bool:
        return self.rate_ratio is not None and self.rate_ratio > 1 + self.guardrail.margin / 2

    def numbers(self) -> dict[str, Any]:
        return {
            "kind": "error", "margin": self.guardrail.margin, "canary_rate": self.canary_rate,
            "control_rate": self.control_rate, "rate_ratio": self.rate_ratio, "looks_off": self.looks_off,
            "harm": {"alpha": self.alpha, "threshold": self.threshold, "log_statistic": self.log_statistic,
                     "statistic": _exp(self.log_statistic), "rho_grid": list(RHO_GRID),
                     "log_likelihood_ratios": list(self.log_lr), "harmful": self.harmful},
            "increments": [list(pair) for pair in self.increments],
        }


def srm_evidence(config: PlanConfig, stats: RolloutStats) -> SrmEvidence:
    """The product over stages of the Beta-binomial Bayes factors against each stage's
    configured split (STATISTICS.md 5). Stages at 100% (no control arm) or without users
    carry no information and are skipped."""
    total = 0.0
    rows: list[dict[str, Any]] = []
    worst: dict[str, Any] | None = None
    for st in stats.stages:
        share = round(st.percentage * 100) / 10_000
        n_t, n_c = st.canary.exposed, st.control.exposed
        n = n_t + n_c
        row: dict[str, Any] = {"percentage": st.percentage, "canary": n_t, "control": n_c,
                               "expected_share": share, "observed_share": n_t / n if n else None,
                               "log_bayes_factor": 0.0}
        if 0 < share < 1 and n > 0:
            row["log_bayes_factor"] = log_srm_bayes_factor(n_t, n, share, config.srm_concentration)
            total += row["log_bayes_factor"]
            if worst is None or row["log_bayes_factor"] > worst["log_bayes_factor"]:
                worst = row
        rows.append(row)
    return SrmEvidence(total, 1 / config.srm_alpha, tuple(rows), worst)


def conversion_evidence(guardrail: Guardrail, config: PlanConfig, stats: RolloutStats, tau: float | None,
                        alpha: float, stage_margin: float) -> ConversionEvidence:
    """Harm (2.2-2.4: one-sided, stratified, pooled variances) and the promotion gate
    (2.5: non-inferiority at `stage_margin` relative, unpooled variances) of one conversion
    guardrail, over the stages that pass the guard. `tau` is the frozen τ or None; when
    None and some stage passes the guard it is frozen now at tau_rel × the pooled rate."""
    event = guardrail.event
    harm_strata: list[tuple[float, float]] = []
    gate_strata: list[tuple[float, float]] = []
    margin_score = 0.0  # Σ p̂_c,k / v_k: the score a relative margin of 1 adds
    rows: list[dict[str, Any]] = []
    x_t_sum = n_t_sum = x_c_sum = n_c_sum = 0
    for st in stats.stages:
        n_t, n_c = st.canary.exposed, st.control.exposed
        x_t, x_c = st.canary.count(event), st.control.count(event)
        tested = n_t >= MIN_TEST_USERS_PER_ARM and n_c >= MIN_TEST_USERS_PER_ARM and x_t + x_c >= MIN_TEST_CONVERSIONS
        rows.append({"percentage": st.percentage, "canary_users": n_t, "control_users": n_c,
                     "canary_conversions": x_t, "control_conversions": x_c,
                     "canary_rate": x_t / n_t if n_t else None, "control_rate": x_c / n_c if n_c else None,
                     "tested": tested})
        if not tested:
            continue
        diff = x_t / n_t - x_c / n_c
        harm_strata.append((diff, pooled_difference_variance(x_t, n_t, x_c, n_c)))
        gate_variance = unpooled_difference_variance(x_t, n_t, x_c, n_c)
        gate_strata.append((diff, gate_variance))
        margin_score += (x_c / n_c) / gate_variance
        x_t_sum, n_t_sum, x_c_sum, n_c_sum = x_t_sum + x_t, n_t_sum + n_t, x_c_sum + x_c, n_c_sum + n_c
    frozen_now = False
    base: dict[str, Any] = {"guardrail": guardrail, "alpha": alpha, "stage_margin": stage_margin,
                            "gate_threshold": 1 / config.alpha_promotion, "strata": tuple(rows)}
    if not harm_strata:
        canary_rate = rows[-1]["canary_rate"] if rows else None
        control_rate = rows[-1]["control_rate"] if rows else None
        return ConversionEvidence(tau=tau, tau_frozen_now=False, tested=False, control_rate=control_rate,
                                  canary_rate=canary_rate, relative=None, log_harm=None, log_gate=None,
                                  worst_relative=None, **base)
    if tau is None:
        tau = tau_for((x_t_sum + x_c_sum) / (n_t_sum + n_c_sum), config.tau_rel)
        frozen_now = True
    score, information = stratified_score(harm_strata)
    log_harm = log_one_sided_lambda(score, information, tau, "less")
    control_rate = x_c_sum / n_c_sum
    estimate = score / information
    relative = estimate / control_rate if control_rate > 0 else None
    # Promotion gate: shift each stratum by its own δ_k = margin × p̂_c,k (a relative margin).
    gate_score_0, gate_information = stratified_score(gate_strata)
    log_gate = log_one_sided_lambda(gate_score_0 + stage_margin * margin_score, gate_information, tau, "greater")
    worst = _worst_relative(gate_score_0, margin_score, gate_information, tau, 1 / config.alpha_promotion)
    return ConversionEvidence(tau=tau, tau_frozen_now=frozen_now, tested=True, control_rate=control_rate,
                              canary_rate=control_rate + estimate, relative=relative, log_harm=log_harm,
                              log_gate=log_gate, worst_relative=worst, **base)


def _worst_relative(score_0: float, margin_score: float, information: float, tau: float,
                    threshold: float) -> float | None:
    """The smallest relative margin m the gate would pass at (Λ⁺ is increasing in the
    score, so bisect): "the canary is at worst m lower". None when even a 100% margin
    does not pass, or when the control arm has no conversions."""
    if margin_score <= 0:
        return None
    target = math.log(threshold)

    def passes(m: float) -> bool:
        return log_one_sided_lambda(score_0 + m * margin_score, information, tau, "greater") >= target

    low, high = -1.0, 1.0
    if not passes(high):
        return None
    if passes(low):
        return low
    for _ in range(36):  # to ~3e-11 of a relative margin
        mid = (low + high) / 2
        if passes(mid):
            high = mid
        else:
            low = mid
    return high


def error_evidence(guardrail: Guardrail, stats: RolloutStats, marks: Sequence[StageMark],
                   log_lr: Sequence[float] | None, alpha: float) -> ErrorEvidence:
    """The exact conditional count test (2.7) of one error guardrail: this tick's new
    events per stage (current counts minus `marks`, the previous tick's), each stage's
    canary share of exposures, added to the carried per-ρ log-likelihood ratios."""
    event = guardrail.event
    values = tuple(log_lr) if log_lr is not None and len(log_lr) == len(RHO_GRID) else (0.0,) * len(RHO_GRID)
    increments: list[tuple[int, int]] = []
    strata: list[tuple[int, int, int, int]] = []
    for i, st in enumerate(stats.stages):
        mark = _mark_for(marks, i, st.started_at, st.percentage)
        x_t, x_c = st.canary.count(event), st.control.count(event)
        n_t, n_c = st.canary.exposed, st.control.exposed
        prev_t = mark.canary_events.get(event, 0) if mark else 0
        prev_c = mark.control_events.get(event, 0) if mark else 0
        d_t, d_c = max(0, x_t - prev_t), max(0, x_c - prev_c)
        increments.append((d_t, d_c))
        if (d_t or d_c) and n_t > 0 and n_c > 0:
            values = error_count_mixture_update(values, d_t, d_c, n_t / (n_t + n_c))
        strata.append((x_t, n_t, x_c, n_c))
    current = stats.stages[-1] if stats.stages else None
    canary_rate = control_rate = None
    if current is not None:
        n_t, n_c = current.canary.exposed, current.control.exposed
        canary_rate = current.canary.count(event) / n_t if n_t else None
        control_rate = current.control.count(event) / n_c if n_c else None
    return ErrorEvidence(guardrail, alpha, values, canary_rate, control_rate,
                         mantel_haenszel_rate_ratio(strata), tuple(increments))


def marks_for(stats: RolloutStats, events: Sequence[str]) -> tuple[StageMark, ...]:
    """This tick's cumulative counts of `events`, to compute the next tick's increments."""
    return tuple(StageMark(st.started_at, st.percentage, {e: st.canary.count(e) for e in events},
                           {e: st.control.count(e) for e in events}) for st in stats.stages)


def _mark_for(marks: Sequence[StageMark], index: int, started_at: float, percentage: float) -> StageMark | None:
    if index < len(marks) and marks[index].started_at == started_at and marks[index].percentage == percentage:
        return marks[index]
    for mark in marks:
        if mark.started_at == started_at and mark.percentage == percentage:
            return mark
    return None


def _exp(log_value: float) -> float:
    """exp, capped to stay a finite JSON number."""
    return math.exp(min(log_value, 700.0))


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float replaced by None, tuples by lists."""
    kind = type(value)
    if kind is float:
        return value if math.isfinite(value) else None
    if kind is dict:
        return {str(k): json_safe(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [json_safe(v) for v in value]
    if kind in (str, int, bool) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    return value
