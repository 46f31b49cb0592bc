"""The statistics of `flagserver.rollout.sequential` against their formulas
(STATISTICS.md 2.1-2.7 and 5): identities, exact expectations, hand-computed values."""

from __future__ import annotations

import math

import pytest

from flagserver.rollout.sequential import (
    RHO_GRID,
    confidence_sequence,
    error_count_mixture_update,
    log_error_count_mixture,
    log_msprt_lambda,
    log_noninferiority_lambda,
    log_normal_cdf,
    log_one_sided_lambda,
    log_srm_bayes_factor,
    mantel_haenszel_rate_ratio,
    msprt_lambda,
    msprt_lambda_equal_arms,
    one_sided_harm_lambda,
    pooled_difference_variance,
    srm_bayes_factor,
    stratified_score,
    tau_for,
    unpooled_difference_variance,
)


@pytest.mark.parametrize(("n", "p_t", "p_c", "tau"), [
    (200, 0.10, 0.12, 0.024),
    (1_000, 0.12, 0.12, 0.024),
    (5_000, 0.095, 0.121, 0.01),
    (50, 0.30, 0.12, 0.1),
    (20_000, 0.0123, 0.0101, 0.002),
])
def test_information_form_equals_johari_closed_form_with_equal_arms(n: int, p_t: float, p_c: float, tau: float):
    # Given n users per arm, σ²_Δ = V/n with unpooled V, S = Δ̂/σ², I = 1/σ² (2.2)
    variance = (p_t * (1 - p_t) + p_c * (1 - p_c)) / n
    score, information = (p_t - p_c) / variance, 1 / variance

    # Then Λ from the information form is 2.1's closed form, to 1e-9 relative
    assert msprt_lambda(score, information, tau) == pytest.approx(
        msprt_lambda_equal_arms(n, p_t, p_c, tau), rel=1e-9, abs=0)


def test_msprt_lambda_hand_computed():
    # τ²I = 0.01 × 100 = 1: Λ = 2^(-1/2) · exp(0.01 × 4 / (2 × 2)) = 0.70710678 × e^0.01
    assert msprt_lambda(2.0, 100.0, 0.1) == pytest.approx(0.7071067811865476 * 1.010050167084168, rel=1e-12)
    # No information: Λ = 1 whatever the score
    assert msprt_lambda(0.0, 0.0, 0.3) == 1.0
    # Overwhelming evidence overflows to inf rather than raising
    assert msprt_lambda(1e6, 1e6, 1.0) == math.inf
    assert log_msprt_lambda(1e6, 1e6, 1.0) > 709


def test_one_sided_mixtures_split_the_two_sided_one():
    # Φ(z) + Φ(−z) = 1, so Λ⁻ + Λ⁺ = 2Λ for any score; at S = 0 each equals Λ
    for score in (-40.0, -3.0, 0.0, 0.5, 25.0):
        lam = msprt_lambda(score, 400.0, 0.05)
        less = one_sided_harm_lambda(score, 400.0, 0.05, "less")
        greater = one_sided_harm_lambda(score, 400.0, 0.05, "greater")
        assert less + greater == pytest.approx(2 * lam, rel=1e-12)
    assert one_sided_harm_lambda(0.0, 400.0, 0.05) == pytest.approx(msprt_lambda(0.0, 400.0, 0.05), rel=1e-12)
    # Harm evidence grows as the canary looks worse, and a better canary gives almost none
    assert one_sided_harm_lambda(-60.0, 400.0, 0.05) > one_sided_harm_lambda(-30.0, 400.0, 0.05) > 1
    # (it decays only like 1/S, the Mills ratio, never to zero)
    assert 1 > one_sided_harm_lambda(20.0, 400.0, 0.05) > one_sided_harm_lambda(60.0, 400.0, 0.05)
    with pytest.raises(ValueError, match="direction"):
        one_sided_harm_lambda(1.0, 1.0, 1.0, "sideways")


def test_one_sided_mixture_stays_finite_deep_in_the_tail():
    # Λ⁻ for a much better canary: Φ underflows but the product is finite and tiny
    value = log_one_sided_lambda(1e4, 1e4, 0.5, "less")
    assert math.isfinite(value) and value < -5


def test_log_normal_cdf_matches_erfc_and_is_continuous_at_the_switch():
    for z in (-30.0, -10.0, -1.0, 0.0, 2.0):
        assert log_normal_cdf(z) == pytest.approx(math.log(0.5 * math.erfc(-z / math.sqrt(2))), rel=1e-12)
    # Either side of −37, where the asymptotic series takes over
    assert log_normal_cdf(-37.0 - 1e-9) == pytest.approx(log_normal_cdf(-37.0 + 1e-9), rel=1e-9)
    assert math.isfinite(log_normal_cdf(-1e4))


def test_confidence_sequence_equals_growthbooks_asymptotic_sequence():
    # GrowthBook (Waudby-Smith eq. 9): s·sqrt(2(Nρ²+1)/(N²ρ²) · ln(sqrt(Nρ²+1)/α)), with s² = σ²N, ρ² = τ²/s²
    for variance, tau, alpha, big_n in ((1e-4, 0.024, 0.05, 10_000), (2.5e-5, 0.01, 0.01, 3_000),
                                        (4e-3, 0.2, 0.1, 200)):
        s2 = variance * big_n
        rho2 = tau * tau / s2
        gb = math.sqrt(s2) * math.sqrt(2 * (big_n * rho2 + 1) / (big_n**2 * rho2)
                                       * math.log(math.sqrt(big_n * rho2 + 1) / alpha))
        low, high = confidence_sequence(0.01, variance, tau, alpha)
        assert (high - low) / 2 == pytest.approx(gb, rel=1e-12)
        assert (low + high) / 2 == pytest.approx(0.01, rel=1e-12)


def test_confidence_sequence_is_the_inversion_of_the_mixture():
    # At either end of the sequence, Λ testing θ₀ = the bound is exactly 1/α
    delta_hat, variance, tau, alpha = -0.012, 6.4e-5, 0.024, 0.05
    low, high = confidence_sequence(delta_hat, variance, tau, alpha)
    for bound in (low, high):
        score = (delta_hat - bound) / variance
        assert log_msprt_lambda(score, 1 / variance, tau) == pytest.approx(math.log(1 / alpha), rel=1e-10)
    with pytest.raises(ValueError):
        confidence_sequence(0.0, 0.0, 0.1, 0.05)
    with pytest.raises(ValueError):
        confidence_sequence(0.0, 1e-4, 0.1, 1.5)


def test_noninferiority_lambda_is_the_shifted_greater_mixture():
    delta_hat, variance, margin, tau = -0.01, 1e-4, 0.036, 0.024
    expected = log_one_sided_lambda((delta_hat + margin) / variance, 1 / variance, tau, "greater")
    assert log_noninferiority_lambda(delta_hat, variance, margin, tau) == pytest.approx(expected, rel=1e-12)
    # A wider margin is easier to pass
    assert log_noninferiority_lambda(delta_hat, variance, 0.05, tau) > log_noninferiority_lambda(
        delta_hat, variance, 0.02, tau)


def test_variances_and_stratified_score_hand_computed():
    # p̄ = 30/300 = 0.1: 0.1 × 0.9 × (1/100 + 1/200) = 0.00135
    assert pooled_difference_variance(20, 100, 10, 200) == pytest.approx(0.00135, rel=1e-12)
    # 0.2 × 0.8/100 + 0.05 × 0.95/200 = 0.0016 + 0.0002375
    assert unpooled_difference_variance(20, 100, 10, 200) == pytest.approx(0.0018375, rel=1e-12)
    # An arm with no conversions is not infinitely precise: (0 + ½)/(100 + 1)
    p = 0.5 / 101
    assert unpooled_difference_variance(0, 100, 10, 200) == pytest.approx(p * (1 - p) / 100 + 0.0002375)
    with pytest.raises(ValueError):
        pooled_difference_variance(0, 0, 1, 10)
    # One stratum: (Δ/v, 1/v); a stratum with no variance adds nothing
    assert stratified_score([(0.02, 0.0004)]) == pytest.approx((50.0, 2500.0))
    assert stratified_score([(0.02, 0.0004), (-0.01, 0.0001), (0.5, 0.0)]) == pytest.approx((-50.0, 12500.0))


def test_srm_bayes_factor_hand_computed():
    # κ = 2, π₀ = ½ → Beta(1, 1): one canary user of one: B(2,1)/B(1,1) = ½ against ½ → 1
    assert srm_bayes_factor(1, 1, 0.5, 2.0) == pytest.approx(1.0, rel=1e-12)
    # one of two: B(2,2)/B(1,1) = 1/6 against ¼ → 2/3
    assert srm_bayes_factor(1, 2, 0.5, 2.0) == pytest.approx(2 / 3, rel=1e-12)
    # two of two: B(3,1)/B(1,1) = 1/3 against ¼ → 4/3
    assert srm_bayes_factor(2, 2, 0.5, 2.0) == pytest.approx(4 / 3, rel=1e-12)
    with pytest.raises(ValueError):
        srm_bayes_factor(3, 2, 0.5, 2.0)


@pytest.mark.parametrize(("n", "share", "kappa"), [(1, 0.05, 1000.0), (7, 0.05, 1000.0), (40, 0.25, 1000.0),
                                                   (25, 0.5, 10.0)])
def test_srm_bayes_factor_has_expectation_one_under_the_configured_split(n: int, share: float, kappa: float):
    # Exactly: Σ_x Binomial(n, π₀)(x) · BF(x, n) = 1 (a Bayes factor is a test martingale under H0)
    total = sum(math.comb(n, x) * share**x * (1 - share) ** (n - x) * srm_bayes_factor(x, n, share, kappa)
                for x in range(n + 1))
    assert total == pytest.approx(1.0, rel=1e-9)


def test_srm_bayes_factor_flags_a_real_mismatch_and_not_the_configured_split():
    # 3.1% of 20,000 users where 5% were configured: overwhelming; exactly 5%: evidence for H0
    assert log_srm_bayes_factor(620, 20_000, 0.05, 1000.0) > math.log(1000)
    assert log_srm_bayes_factor(1_000, 20_000, 0.05, 1000.0) < 0


def test_error_count_update_hand_computed():
    # One canary event, π = ½, ρ = 2: π_ρ = 2/3, LR = (2/3)/(1/2) = 4/3
    values = error_count_mixture_update((0.0,) * len(RHO_GRID), 1, 0, 0.5)
    assert values[RHO_GRID.index(2.0)] == pytest.approx(math.log(4 / 3), rel=1e-12)
    # One control event: (1/3)/(1/2) = 2/3
    values = error_count_mixture_update((0.0,) * len(RHO_GRID), 0, 1, 0.5)
    assert values[RHO_GRID.index(2.0)] == pytest.approx(math.log(2 / 3), rel=1e-12)
    # The mixture is the mean over the grid: all zeros → 1
    assert log_error_count_mixture((0.0,) * len(RHO_GRID)) == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(ValueError):
        error_count_mixture_update((0.0,) * len(RHO_GRID), 1, 0, 1.0)
    with pytest.raises(ValueError):
        error_count_mixture_update((0.0,), 1, 0, 0.5)


@pytest.mark.parametrize(("events", "share"), [(1, 0.05), (5, 0.05), (12, 0.25), (30, 0.5)])
def test_error_count_mixture_has_expectation_one_under_equal_rates(events: int, share: float):
    # Exactly: Σ_x Binomial(E, π)(x) · mean_ρ LR_ρ(x, E − x) = 1 (2.7: a test martingale)
    total = 0.0
    for x in range(events + 1):
        values = error_count_mixture_update((0.0,) * len(RHO_GRID), x, events - x, share)
        total += math.comb(events, x) * share**x * (1 - share) ** (events - x) * math.exp(
            log_error_count_mixture(values))
    assert total == pytest.approx(1.0, rel=1e-9)


def test_mantel_haenszel_rate_ratio_hand_computed():
    # One stratum: (x_t/n_t)/(x_c/n_c) = (10/100)/(20/1000) = 5
    assert mantel_haenszel_rate_ratio([(10, 100, 20, 1000)]) == pytest.approx(5.0)
    # Two strata with the same ratio 2 give 2
    assert mantel_haenszel_rate_ratio([(2, 100, 10, 1000), (40, 500, 20, 500)]) == pytest.approx(2.0)
    assert mantel_haenszel_rate_ratio([(0, 100, 0, 1000)]) is None
    assert mantel_haenszel_rate_ratio([(3, 100, 0, 1000)]) == math.inf


def test_tau_for():
    assert tau_for(0.12, 0.2) == pytest.approx(0.024)
    with pytest.raises(ValueError):
        tau_for(0.0, 0.2)
