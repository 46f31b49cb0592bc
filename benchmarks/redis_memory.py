"""What each stored object costs in Redis memory (the figures of docs/redis.md).

Writes realistic objects through `RedisStore` under a throw-away key prefix, reads
`MEMORY USAGE <key> SAMPLES 0` (exact, every element counted) of every key after
each step, and reports the growth per object. The prefix is deleted at the end.

Objects, in three environments (production, staging, dev):

- a flag as DESIGN.md's `new-checkout`: an 80-character description, two tags, an
  owner, two rules (two segments served `on`; a segment at 50%) and a 25% rollout,
  created in production (so idle in the other two);
- a segment with two conditions (DESIGN.md's `internal`);
- a list segment of 100 included user keys (`user-000123`), and one of 10,000,
  then updated (one more user: its audit entry holds it twice, before and after);
- an SDK token;
- an environment (measured under a second prefix, where no flags exist);
- the audit entries those writes leave (a flag update's entry holds the record
  before and after).

A hash holds its fields in a compact listpack while it has at most 128 fields of
at most 64 bytes; the records here are longer, so every hash in the layout is a
real hash table and each object costs its field's bytes plus ~60 bytes of
overhead. Figures are averages over `--count` objects of each kind.

    python benchmarks/redis_memory.py [--url redis://127.0.0.1:6379/15] [--count 200]
"""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flagserver.storage.redis_store import RedisStore  # noqa: E402

ENVS = ("production", "staging", "dev")


def flag(i: int) -> dict[str, object]:
    return {
        "key": f"new-checkout-{i:04d}",
        "description": "The one-page checkout with saved cards; owned by the payments squad, see PAY-1234.",
        "tags": ["checkout", "payments"],
        "owner": "payments@company.com",
        "enabled": True,
        "rules": [
            {"id": "staff", "segments": ["internal", "beta-testers"], "serve": "on"},
            {"id": "free", "segments": ["free-tier"], "rollout": 50},
        ],
        "rollout": 25,
    }


def conditions_segment(i: int) -> dict[str, object]:
    return {"key": f"internal-{i:04d}", "description": "Staff",
            "conditions": [{"attribute": "email", "op": "ends_with", "values": ["@company.com"],
                            "ignore_case": True},
                           {"attribute": "country", "op": "in", "values": ["DE", "FR", "NL"]}]}


def users(size: int) -> list[str]:
    return [f"user-{n:06d}" for n in range(size)]


def list_segment(i: int, size: int) -> dict[str, object]:
    return {"key": f"list-{size}-{i:04d}", "description": f"{size} listed users", "included": users(size)}


class Meter:
    """Total MEMORY USAGE of every key under a prefix."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def usage(self) -> dict[str, int]:
        # SCAN is fine here: a measuring script, never the server.
        return {key.decode(): int(self.client.memory_usage(key, samples=0) or 0)
                for key in self.client.scan_iter(match=f"{self.prefix}*", count=1000)}

    def grow(self, step: Callable[[int], object], count: int, *, per_env: bool = False) -> dict[str, float]:
        """Bytes per object, per key kind (the key name without prefix and variable part)."""
        before = self.usage()
        for i in range(count):
            step(i)
        after = self.usage()
        out: dict[str, float] = {}
        for key in set(before) | set(after):
            delta = after.get(key, 0) - before.get(key, 0)
            if delta:
                kind = key[len(self.prefix):]
                kind = "audit:key:<target>" if kind.startswith("audit:key:") else kind
                if per_env:  # one key per environment: name them by kind
                    for word in ("cfgver:", "audit:env:"):
                        kind = f"{word}<env>" if kind.startswith(word) else kind
                out[kind] = out.get(kind, 0.0) + delta / count
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--count", type=int, default=200)
    args = parser.parse_args()

    prefix = f"flagbench:{uuid.uuid4().hex}:"
    store = RedisStore.from_url(args.url, prefix=prefix)
    client = redis.Redis.from_url(args.url)
    meter = Meter(client, prefix)
    try:
        store.initialize()
        for env in ENVS:
            store.create_environment(env, env.capitalize(), actor="bench")
        for name in ("internal", "beta-testers", "free-tier"):
            store.create_segment("production", {"key": name}, actor="bench")
        info = client.info("server")
        print(f"Redis {info['redis_version']}, {args.count} objects of each kind, bytes per object\n")
        steps: list[tuple[str, Callable[[int], object], int]] = [
            ("flag (3 environments) + its create audit entry",
             lambda i: store.create_flag("production", flag(i), actor="alice@company.com"), args.count),
            ("flag update (rollout 25 -> 50) + its audit entry",
             lambda i: store.update_flag("production", f"new-checkout-{i:04d}", {"rollout": 50}, expected_version=1,
                                         actor="alice@company.com"), args.count),
            ("segment, 2 conditions + audit entry",
             lambda i: store.create_segment("production", conditions_segment(i), actor="bench"), args.count),
            ("segment, 100 listed users + audit entry",
             lambda i: store.create_segment("production", list_segment(i, 100), actor="bench"), args.count),
            ("segment, 10,000 listed users + audit entry",
             lambda i: store.create_segment("staging", list_segment(i, 10_000), actor="bench"),
             max(args.count // 20, 3)),
            ("update of a 10,000-user segment (one more user) + its audit entry",
             lambda i: store.update_segment("staging", f"list-10000-{i:04d}",
                                            {"included": [*users(10_000), "user-x"]},
                                            expected_version=1, actor="bench"),
             max(args.count // 20, 3)),
            ("sdk token + audit entry",
             lambda i: store.create_token({"id": uuid.uuid4().hex[:16], "name": f"checkout-service-{i}", "kind": "sdk",
                                           "environment": "production"}, "f" * 64, actor="bench"), args.count),
        ]
        print("| object | key | bytes |\n| --- | --- | ---: |")
        for title, step, count in steps:
            grown = meter.grow(step, count)
            total = sum(grown.values())
            for kind, size in sorted(grown.items(), key=lambda kv: -kv[1]):
                print(f"| {title} | `{kind}` | {size:,.0f} |")
            print(f"| **{title}** | **total** | **{total:,.0f}** |")
        fixed = meter.usage()
        print(f"\nafter all that, {len(fixed)} keys, {sum(fixed.values()):,} bytes in all\n")

        bare = RedisStore.from_url(args.url, prefix=f"{prefix}bare:")
        try:
            grown = Meter(client, f"{prefix}bare:").grow(
                lambda i: bare.create_environment(f"env-{i:04d}", f"Environment {i}", actor="bench"), args.count,
                per_env=True)
        finally:
            bare.close()
        for kind, size in sorted(grown.items(), key=lambda kv: -kv[1]):
            print(f"| environment + its audit entry | `{kind}` | {size:,.0f} |")
        print(f"| **environment + its audit entry** | **total** | **{sum(grown.values()):,.0f}** |")
    finally:
        store.close()
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


if __name__ == "__main__":
    main()
