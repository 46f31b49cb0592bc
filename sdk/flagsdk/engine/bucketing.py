"""Consistent hashing of users into 10,000 buckets (DESIGN.md, "Bucketing")."""

from __future__ import annotations

import mmh3

BUCKETS = 10_000
SUPPORTED_HASH_VERSIONS = frozenset({1})


def bucket(salt: str, value: str) -> int:
    """Return the bucket, 0..9999, of `value` under `salt`.

    `h = mmh3.hash(f"{salt}:{value}", seed=0, signed=False)`, then
    `(h % 100) * 100 + (h // 100) % 100`. At whole percentages this admits the
    same users as Unleash (`h % 100 + 1 <= p`); the second term gives 0.01% steps.
    """
    h = mmh3.hash(f"{salt}:{value}", 0, False)
    return (h % 100) * 100 + (h // 100) % 100


def threshold(percentage: float) -> int:
    """The bucket line of a percentage: users with `bucket < threshold` are admitted."""
    return round(percentage * 100)
