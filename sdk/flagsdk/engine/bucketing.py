"""Consistent hashing of users into 10,000 buckets (DESIGN.md, "Bucketing")."""

from __future__ import annotations

from collections.abc import Callable

import mmh3

BUCKETS = 10_000
SUPPORTED_HASH_VERSIONS = frozenset({1})


def bucket(salt: str, value: str) -> int:
    """Return the bucket, 0..9999, of `value` under `salt`.

    `h = mmh3.hash(f"{salt}:{value}", seed=0, signed=False)`, then
    `(h % 100) * 100 + (h // 100) % 100`. At whole percentages this admits the
    same users as Unleash (`h % 100 + 1 <= p`); the second term gives 0.01% steps.
    """
    text = f"{salt}:{value}"
    if not text.isascii():
        # mmh3 hashes a str as its UTF-8; a lone surrogate has none (and crashes mmh3 5.3).
        text = text.encode("utf-8", "surrogatepass")  # type: ignore[assignment]
    return bucket_of_hash(mmh3.hash(text, 0, False))


def bucket_of_hash(h: int) -> int:
    """The bucket of an unsigned 32-bit hash of `f"{salt}:{value}"`."""
    return (h % 100) * 100 + (h // 100) % 100


def below_line(line: int) -> Callable[[int], bool]:
    """`h -> bucket_of_hash(h) < line`, for evaluators that hash once per user. A whole
    percentage needs no bucket at all: `bucket < 100 * p` iff `h % 100 < p`."""
    high, low = divmod(line, 100)
    if low == 0:
        return lambda h: h % 100 < high
    return lambda h: h % 100 < high or (h % 100 == high and (h // 100) % 100 < low)


def threshold(percentage: float) -> int:
    """The bucket line of a percentage: users with `bucket < threshold` are admitted."""
    return round(percentage * 100)
