"""Fixed-horizon statistics for people reading a stats page: intervals and the
sample-ratio chi-square. (The rollout controller uses the always-valid tests of
`rollout/policy.py` instead; these are for reporting.) Standard library only."""

from __future__ import annotations

import math

Z95 = 1.959963984540054


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval of a proportion; None without trials."""
    if trials <= 0:
        return None
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def difference_interval(x1: int, n1: int, x0: int, n0: int, z: float = Z95) -> tuple[float, float] | None:
    """Newcombe's hybrid score interval for p1 - p0; None when an arm is empty."""
    a, b = wilson_interval(x1, n1, z), wilson_interval(x0, n0, z)
    if a is None or b is None:
        return None
    p1, p0 = x1 / n1, x0 / n0
    d = p1 - p0
    low = d - math.sqrt((p1 - a[0]) ** 2 + (b[1] - p0) ** 2)
    high = d + math.sqrt((a[1] - p1) ** 2 + (p0 - b[0]) ** 2)
    return low, high


def _upper_regularized_gamma(s: float, x: float) -> float:
    """Q(s, x) = Γ(s, x) / Γ(s), by series below s + 1 and a continued fraction above."""
    if x <= 0:
        return 1.0
    log_prefix = s * math.log(x) - x - math.lgamma(s)
    if x < s + 1:
        term = total = 1.0 / s
        k = s
        for _ in range(10_000):
            k += 1
            term *= x / k
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(log_prefix))
    tiny = 1e-300
    b = x + 1 - s
    c = 1 / tiny
    d = 1 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - s)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-15:
            break
    return min(1.0, math.exp(log_prefix) * h)


def chi_square_p_value(statistic: float, degrees_of_freedom: int) -> float:
    """P(χ²_df ≥ statistic)."""
    if degrees_of_freedom <= 0:
        return 1.0
    return _upper_regularized_gamma(degrees_of_freedom / 2, statistic / 2)


def sample_ratio_check(observed: dict[str, int], expected_shares: dict[str, float]) -> dict[str, object]:
    """Pearson's chi-square of observed arm sizes against the configured split.

    Arms with an expected share of 0 are left out (a user there is a bug, not
    a ratio). Returns the statistic, degrees of freedom, p-value and the shares.
    """
    arms = [a for a, share in expected_shares.items() if share > 0]
    total = sum(observed.get(a, 0) for a in arms)
    result: dict[str, object] = {
        "expected": {a: expected_shares[a] for a in arms},
        "observed": {a: observed.get(a, 0) for a in arms},
        "total": total,
    }
    if total == 0 or len(arms) < 2:
        result.update(chi_square=None, degrees_of_freedom=max(0, len(arms) - 1), p_value=None)
        return result
    statistic = sum((observed.get(a, 0) - expected_shares[a] * total) ** 2 / (expected_shares[a] * total)
                    for a in arms)
    result.update(chi_square=statistic, degrees_of_freedom=len(arms) - 1,
                  p_value=chi_square_p_value(statistic, len(arms) - 1))
    return result
