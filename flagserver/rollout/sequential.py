"""The always-valid statistics behind rollout decisions, as small pure functions.

Every formula is numbered after the section of STATISTICS.md it comes from.
Statistics that can overflow a float (likelihood ratios, Bayes factors) are
computed in log space; the `log_*` functions are the ones the policy uses and
the plain ones exponentiate them for people and tests. Standard library only
(`math.lgamma`, `math.erf`/`math.erfc`).

Nothing here raises for valid input; invalid arguments (a negative variance, a
non-positive τ, a share outside (0, 1)) raise ValueError, because they mean a
caller's bug rather than unlucky data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

#: Rate ratios the error-count mixture averages over (STATISTICS.md 2.7).
RHO_GRID: tuple[float, ...] = (1.25, 1.5, 2.0, 3.0, 5.0, 10.0)

_LOG_2PI = math.log(2 * math.pi)
_SQRT2 = math.sqrt(2.0)


def log_normal_cdf(z: float) -> float:
    """ln Φ(z), accurate far into the lower tail (an asymptotic series below −37,
    where `erfc` underflows); 0.0 for large z."""
    if z > -37.0:
        value = 0.5 * math.erfc(-z / _SQRT2)
        return math.log(value) if value > 0 else -math.inf
    # Mills-ratio expansion: Φ(z) = φ(z)/|z| · (1 − 1/z² + 3/z⁴ − 15/z⁶ + …)
    z2 = z * z
    series = 1 - 1 / z2 + 3 / z2**2 - 15 / z2**3
    return -0.5 * z2 - math.log(-z) - 0.5 * _LOG_2PI + math.log(series)


def normal_cdf(z: float) -> float:
    """Φ(z)."""
    return 0.5 * math.erfc(-z / _SQRT2)


def _check_tau(tau: float) -> None:
    if not tau > 0 or math.isinf(tau):
        raise ValueError(f"tau must be a positive number, not {tau!r}")


# -- 2.1 / 2.2: the normal-mixture SPRT ---------------------------------------------------------


def log_msprt_lambda(score: float, information: float, tau: float) -> float:
    """ln Λ for the score S = Δ̂·I and information I = 1/σ²_Δ, mixing over N(0, τ²) (2.2):
    ln Λ = −½ ln(1 + τ²I) + τ²S² / (2(1 + τ²I))."""
    _check_tau(tau)
    if information < 0:
        raise ValueError(f"information must be >= 0, not {information!r}")
    t2i = 1 + tau * tau * information
    return -0.5 * math.log(t2i) + tau * tau * score * score / (2 * t2i)


def msprt_lambda(score: float, information: float, tau: float) -> float:
    """Λ of 2.2 (two-sided mixture); may be `inf` for overwhelming evidence."""
    log_value = log_msprt_lambda(score, information, tau)
    return math.exp(log_value) if log_value < 709 else math.inf


def msprt_lambda_equal_arms(n: int, p_t: float, p_c: float, tau: float, theta0: float = 0.0) -> float:
    """Johari et al.'s closed form for n users per arm (2.1):
    Λ = sqrt(V/(V + nτ²)) · exp(n²τ²(Δ̂ − θ₀)² / (2V(V + nτ²))), V = p_t(1−p_t) + p_c(1−p_c)."""
    _check_tau(tau)
    v = p_t * (1 - p_t) + p_c * (1 - p_c)
    d = p_t - p_c - theta0
    return math.sqrt(v / (v + n * tau * tau)) * math.exp(n * n * tau * tau * d * d / (2 * v * (v + n * tau * tau)))


def log_one_sided_lambda(score: float, information: float, tau: float, direction: str) -> float:
    """ln Λ of the half-normal mixture (2.4). `direction="less"` mixes over θ < 0 (evidence
    that the canary is lower: Λ⁻ = 2Φ(−Sτ/√(1+τ²I))·Λ); `"greater"` over θ > 0 (Λ⁺, with
    Φ(+Sτ/√(1+τ²I))). Each is a test supermartingale for its whole composite null."""
    sign = {"less": -1.0, "greater": 1.0}.get(direction)
    if sign is None:
        raise ValueError(f"direction must be 'less' or 'greater', not {direction!r}")
    log_lam = log_msprt_lambda(score, information, tau)
    z = sign * score * tau / math.sqrt(1 + tau * tau * information)
    return math.log(2.0) + log_normal_cdf(z) + log_lam


def one_sided_harm_lambda(score: float, information: float, tau: float, direction: str = "less") -> float:
    """Λ⁻ (or Λ⁺ with `direction="greater"`) of 2.4; `inf` when it overflows."""
    log_value = log_one_sided_lambda(score, information, tau, direction)
    return math.exp(log_value) if log_value < 709 else math.inf


# -- 2.3: stratification by stage ----------------------------------------------------------------


def stratified_score(strata: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """(S, I) = (Σ Δ̂_k/v_k, Σ 1/v_k) over strata given as (Δ̂_k, v_k) pairs (2.3).
    Strata with a variance that is not positive are skipped (they carry no information)."""
    score = information = 0.0
    for diff, var in strata:
        if var > 0 and math.isfinite(var):
            score += diff / var
            information += 1 / var
    return score, information


def pooled_difference_variance(x_t: int, n_t: int, x_c: int, n_c: int) -> float:
    """p̄(1−p̄)(1/n_t + 1/n_c), the variance of Δ̂ under H0: θ = 0 (score test, 2.2).
    Raises ValueError when an arm is empty."""
    if n_t <= 0 or n_c <= 0:
        raise ValueError("both arms need users")
    p = (x_t + x_c) / (n_t + n_c)
    return p * (1 - p) * (1 / n_t + 1 / n_c)


def unpooled_difference_variance(x_t: int, n_t: int, x_c: int, n_c: int) -> float:
    """p̂_t(1−p̂_t)/n_t + p̂_c(1−p̂_c)/n_c, for tests against a margin (2.5). An arm at 0% or
    100% would claim zero variance; it is given the variance of (x + ½)/(n + 1) instead, so
    an arm with no conversions yet never looks infinitely precise. Raises ValueError when an
    arm is empty."""
    if n_t <= 0 or n_c <= 0:
        raise ValueError("both arms need users")
    return _arm_variance(x_t, n_t) + _arm_variance(x_c, n_c)


def _arm_variance(x: int, n: int) -> float:
    p = x / n if 0 < x < n else (x + 0.5) / (n + 1)
    return p * (1 - p) / n


# -- 2.5: confidence sequence and non-inferiority ------------------------------------------------


def confidence_sequence(delta_hat: float, variance: float, tau: float, alpha: float) -> tuple[float, float]:
    """The always-valid (1 − α) confidence sequence for θ, inverting 2.2:
    Δ̂ ± σ·sqrt(((σ² + τ²)/τ²)·(2 ln(1/α) + ln((σ² + τ²)/σ²))). Raises ValueError for a
    variance that is not positive or α outside (0, 1)."""
    _check_tau(tau)
    if not variance > 0:
        raise ValueError(f"variance must be positive, not {variance!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), not {alpha!r}")
    spread = (variance + tau * tau) / (tau * tau)
    half = math.sqrt(variance * spread * (2 * math.log(1 / alpha) + math.log((variance + tau * tau) / variance)))
    return delta_hat - half, delta_hat + half


def log_noninferiority_lambda(delta_hat: float, variance: float, margin: float, tau: float) -> float:
    """ln Λ of the non-inferiority gate (2.5): H0: θ ≤ −δ against θ > −δ, with the score
    shifted by +δ and the one-sided mixture in the "greater" direction. `margin` is the
    absolute δ ≥ 0 and `variance` the unpooled variance of Δ̂ (or of a stratified Δ̂, 1/I)."""
    if not variance > 0:
        raise ValueError(f"variance must be positive, not {variance!r}")
    information = 1 / variance
    return log_one_sided_lambda((delta_hat + margin) * information, information, tau, "greater")


# -- 2.6: τ ----------------------------------------------------------------------------------------


def tau_for(baseline_rate: float, tau_rel: float) -> float:
    """τ = tau_rel × baseline rate (2.6); raises ValueError when that is not positive."""
    tau = tau_rel * baseline_rate
    _check_tau(tau)
    return tau


# -- 2.7: exact conditional count test for rare events ---------------------------------------------


def error_count_mixture_update(log_lr: Sequence[float], x_t: int, x_c: int, canary_share: float,
                               rhos: Sequence[float] = RHO_GRID) -> tuple[float, ...]:
    """Add one tick's increments to the per-ρ log-likelihood ratios of 2.7.

    Given this tick's new events (x_t in the canary, x_c in control) and the canary's share
    π = n_t/(n_t + n_c) of the exposed users, under H0 the canary's share of the events is
    Binomial(x_t + x_c, π); under a rate ratio ρ it is π_ρ = ρπ/(ρπ + 1 − π). Each ρ gains
    x_t ln(π_ρ/π) + x_c ln((1 − π_ρ)/(1 − π)). Raises ValueError for a share outside (0, 1),
    negative counts, or a `log_lr` of the wrong length.
    """
    if not 0 < canary_share < 1:
        raise ValueError(f"canary_share must be in (0, 1), not {canary_share!r}")
    if x_t < 0 or x_c < 0:
        raise ValueError("event increments must be >= 0")
    if len(log_lr) != len(rhos):
        raise ValueError(f"expected {len(rhos)} log-likelihood ratios, got {len(log_lr)}")
    pi = canary_share
    out = []
    for value, rho in zip(log_lr, rhos, strict=True):
        pi_rho = rho * pi / (rho * pi + 1 - pi)
        out.append(value + x_t * math.log(pi_rho / pi) + x_c * math.log((1 - pi_rho) / (1 - pi)))
    return tuple(out)


def log_error_count_mixture(log_lr: Sequence[float]) -> float:
    """ln of the mixture statistic: the mean over the ρ grid of exp(log_lr) (log-sum-exp)."""
    if not log_lr:
        raise ValueError("no log-likelihood ratios")
    top = max(log_lr)
    return top + math.log(sum(math.exp(v - top) for v in log_lr) / len(log_lr))


def mantel_haenszel_rate_ratio(strata: Sequence[tuple[int, int, int, int]]) -> float | None:
    """Stage-stratified rate-ratio estimate Σ x_t n_c/N / Σ x_c n_t/N over strata given as
    (x_t, n_t, x_c, n_c). None when there is nothing to compare (no events in either arm, or
    no stratum with both arms); `inf` when only the canary has events."""
    num = den = 0.0
    for x_t, n_t, x_c, n_c in strata:
        if n_t <= 0 or n_c <= 0:
            continue
        total = n_t + n_c
        num += x_t * n_c / total
        den += x_c * n_t / total
    if den > 0:
        return num / den
    return math.inf if num > 0 else None


# -- 5: sequential sample-ratio mismatch -------------------------------------------------------------


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def log_srm_bayes_factor(canary: int, total: int, expected_share: float, concentration: float) -> float:
    """ln BF of one stage's Beta-binomial test against the configured split (section 5):
    BF = [B(κπ₀ + x, κ(1−π₀) + n − x)/B(κπ₀, κ(1−π₀))] / [π₀^x (1−π₀)^(n−x)].
    Raises ValueError for a share outside (0, 1), a non-positive κ, or inconsistent counts."""
    if not 0 < expected_share < 1:
        raise ValueError(f"expected_share must be in (0, 1), not {expected_share!r}")
    if not concentration > 0:
        raise ValueError(f"concentration must be positive, not {concentration!r}")
    if canary < 0 or total < canary:
        raise ValueError(f"need 0 <= canary <= total, got {canary} of {total}")
    a, b = concentration * expected_share, concentration * (1 - expected_share)
    x, rest = canary, total - canary
    log_marginal = _log_beta(a + x, b + rest) - _log_beta(a, b)
    log_null = x * math.log(expected_share) + rest * math.log(1 - expected_share)
    return log_marginal - log_null


def srm_bayes_factor(canary: int, total: int, expected_share: float, concentration: float) -> float:
    """BF of `log_srm_bayes_factor`; `inf` when it overflows."""
    log_value = log_srm_bayes_factor(canary, total, expected_share, concentration)
    return math.exp(log_value) if log_value < 709 else math.inf
