"""Bucketing (DESIGN.md, "Bucketing", normative) and its vectors for other SDKs.

`tests/vectors/bucketing.json` is checked three ways: against `flagsdk.bucket`,
against the formula computed here with `mmh3` directly, and against a plain-Python
MurmurHash3 written from its published definition (so the vectors do not merely
repeat whatever the installed `mmh3` does).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mmh3
import pytest
from flagsdk import bucket
from flagsdk.engine import threshold

VECTORS_PATH = Path(__file__).parent / "vectors" / "bucketing.json"


def load_vectors() -> dict[str, Any]:
    return json.loads(VECTORS_PATH.read_text(encoding="utf-8"))


VECTORS: list[dict[str, Any]] = load_vectors()["vectors"]


def formula(salt: str, value: str) -> tuple[int, int]:
    """DESIGN's formula, from mmh3 itself: `(h, bucket)`."""
    h = mmh3.hash(f"{salt}:{value}", seed=0, signed=False)
    return h, (h % 100) * 100 + (h // 100) % 100


def murmur3_x86_32(data: bytes, seed: int = 0) -> int:
    """MurmurHash3_x86_32 as published by Austin Appleby, in plain Python."""
    c1, c2, mask = 0xCC9E2D51, 0x1B873593, 0xFFFFFFFF

    def rotl(x: int, r: int) -> int:
        return ((x << r) | (x >> (32 - r))) & mask

    h = seed & mask
    full = len(data) // 4 * 4
    for i in range(0, full, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = rotl((k * c1) & mask, 15) * c2 & mask
        h = (rotl(h ^ k, 13) * 5 + 0xE6546B64) & mask
    tail = data[full:]
    if tail:
        k = int.from_bytes(tail, "little")
        k = rotl((k * c1) & mask, 15) * c2 & mask
        h ^= k
    h ^= len(data)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & mask
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & mask
    h ^= h >> 16
    return h


# --- the vectors file ------------------------------------------------------------


def test_vectors_file_states_the_formula_and_has_enough_varied_entries() -> None:
    document = load_vectors()
    spec = document["spec"]
    assert "signed" in spec or "unsigned" in spec
    assert "(h % 100) * 100 + (h // 100) % 100" in spec
    assert "round(p * 100)" in spec
    assert len(VECTORS) >= 200
    values = [v["value"] for v in VECTORS]
    salts = {v["salt"] for v in VECTORS}
    assert "" in values and "" in salts
    assert any(any(ord(c) > 0xFFFF for c in v) for v in values), "needs characters outside the BMP"
    assert any(len(v) >= 1000 for v in values), "needs long strings"
    assert any(":" in v for v in values) and any(":" in s for s in salts)


def test_every_vector_matches_the_formula_computed_with_mmh3() -> None:
    wrong = [v for v in VECTORS if formula(v["salt"], v["value"]) != (v["h"], v["bucket"])]
    assert wrong == []


def test_every_vector_matches_flagsdk_bucket() -> None:
    wrong = [(v["salt"], v["value"][:40], v["bucket"], bucket(v["salt"], v["value"]))
             for v in VECTORS if bucket(v["salt"], v["value"]) != v["bucket"]]
    assert wrong == []


def test_every_vector_matches_a_plain_python_murmur3() -> None:
    wrong = [v for v in VECTORS if murmur3_x86_32(f"{v['salt']}:{v['value']}".encode()) != v["h"]]
    assert wrong == []


@pytest.mark.parametrize(
    ("text", "seed", "expected"),
    [
        (b"", 0, 0),
        (b"", 1, 0x514E28B7),
        (b"", 0xFFFFFFFF, 0x81F16F39),
        (b"\0\0\0\0", 0, 0x2362F9DE),
        (b"a", 0x9747B28C, 0x7FA09EA6),
        (b"abc", 0x9747B28C, 0xC84A62DD),
        (b"aaaa", 0x9747B28C, 0x5A97808A),
        (b"Hello, world!", 0x9747B28C, 0x24884CBA),
        (b"The quick brown fox jumps over the lazy dog", 0x9747B28C, 0x2FA826CD),
    ],
)
def test_the_plain_python_murmur3_gives_the_published_values(text: bytes, seed: int, expected: int) -> None:
    assert murmur3_x86_32(text, seed) == expected
    assert mmh3.hash(text, seed, signed=False) == expected


def test_vectors_catch_an_sdk_that_forgets_the_hash_is_unsigned() -> None:
    """An SDK that used the signed hash would get other buckets for these vectors."""
    def signed_bucket(v: dict[str, Any]) -> int:
        h = mmh3.hash(f"{v['salt']}:{v['value']}", 0, signed=True)
        return (h % 100) * 100 + (h // 100) % 100

    negative = [v for v in VECTORS if mmh3.hash(f"{v['salt']}:{v['value']}", 0, signed=True) < 0]
    assert len(negative) > 50
    assert sum(signed_bucket(v) != v["bucket"] for v in negative) > 40


def test_salt_and_value_are_joined_by_a_colon() -> None:
    """Given the same text split differently, then the bucket is the same: the hashed
    text is exactly `salt + ":" + value` (documented so other SDKs do not escape it)."""
    assert bucket("a:b", "c") == bucket("a", "b:c") == formula("a", "b:c")[1]


# --- the formula's promises ----------------------------------------------------------

KEYS = [f"user-{i}" for i in range(20_000)]


@pytest.mark.parametrize("salt", ["new-checkout", "random-10"])
def test_whole_percentages_admit_exactly_unleashs_users(salt: str) -> None:
    """Given 20,000 users, when p runs over every whole percentage 0..100, then
    `bucket < round(p * 100)` admits exactly the users of Unleash's
    `mmh3.hash(f"{salt}:{key}", signed=False) % 100 + 1 <= p`."""
    buckets = [bucket(salt, key) for key in KEYS]
    normalized = [mmh3.hash(f"{salt}:{key}", 0, signed=False) % 100 + 1 for key in KEYS]
    for p in range(101):
        line = round(p * 100)
        ours = {i for i, b in enumerate(buckets) if b < line}
        unleash = {i for i, n in enumerate(normalized) if n <= p}
        assert ours == unleash, f"p={p}"
    assert 0 < sum(b < 2500 for b in buckets) < len(KEYS)


def test_buckets_span_0_to_9999_and_every_bucket_is_reachable() -> None:
    seen = {bucket("spread", f"k{i}") for i in range(200_000)}
    assert min(seen) == 0 and max(seen) == 9999
    assert len(seen) == 10_000


@pytest.mark.parametrize(
    ("percentage", "line"),
    [(0, 0), (0.01, 1), (0.07, 7), (0.29, 29), (0.57, 57), (1.1, 110), (25, 2500), (33.33, 3333),
     (57.01, 5701), (99.99, 9999), (100, 10_000)],
)
def test_threshold_is_the_nearest_whole_bucket_despite_float_error(percentage: float, line: int) -> None:
    """0.29 * 100 is 28.999999999999996 in binary floating point; the line is still 29."""
    assert threshold(percentage) == line


def test_the_bucket_of_a_key_does_not_depend_on_anything_but_salt_and_value() -> None:
    first = [bucket("stable", key) for key in KEYS[:1000]]
    again = [bucket("stable", key) for key in KEYS[:1000]]
    assert first == again
    assert first != [bucket("other-salt", key) for key in KEYS[:1000]]
