"""What exposures, conversions and batch ids cost in Redis memory (the figures of
docs/storage-events.md and docs/redis.md).

Records events through `RedisStore.record_events` under a throw-away key prefix,
in batches of 500 as the SDK sends them, reads `MEMORY USAGE <key> SAMPLES 0`
(exact) of every key after each step, and reports the growth per user. The
prefix is deleted at the end. Steps, for `--users` users (default 10,000) in
production, each step one exposure or conversion per user:

1. every user exposed to `new-checkout` (25%: 2,500 `on`, 7,500 `off`), the
   first flag they are seen with: their field in `exposed:<env>` appears;
2. the same users exposed to a second flag (`checkout-layout`, three arms):
   one more entry in their field;
3. 30% of them convert on `checkout_completed` with a value, 5% on `error`;
4. a new stage of `new-checkout` (50%) and every user exposed again.

Batch ids are 32 hex characters (a uuid4, as the SDK makes them); each batch id
key lives 7 days, so with 500 events a batch it costs its bytes / 500 per event
for a week. User keys are given by `--user-keys`: `uuid` (36 characters,
`3f2b9c1e-...`, the common case) or `short` (`user-000123`).

    python benchmarks/redis_events_memory.py [--url redis://127.0.0.1:6379/15] [--users 10000]
                                             [--user-keys uuid|short]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flagsdk import bucket  # noqa: E402

from flagserver.storage.events import Conversion, Exposure  # noqa: E402
from flagserver.storage.redis_store import RedisStore  # noqa: E402

BATCH = 500


class Meter:
    """MEMORY USAGE of every key under a prefix, grouped by kind."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def usage(self) -> dict[str, int]:
        # SCAN is fine here: a measuring script, never the server.
        out: dict[str, int] = {}
        for key in self.client.scan_iter(match=f"{self.prefix}*", count=1000):
            name = key.decode()[len(self.prefix):]
            kind = ("batch:<n>:<env>:<id>" if name.startswith("batch:") else
                    "stage:<id>" if name.startswith("stage:") and name != "stage:seq" else name)
            out[kind] = out.get(kind, 0) + int(self.client.memory_usage(key, samples=0) or 0)
        return out

    def grow(self, step: Callable[[], int]) -> tuple[int, dict[str, int]]:
        """Run `step` (which returns how many batches it sent); bytes grown per key kind."""
        before = self.usage()
        batches = step()
        after = self.usage()
        return batches, {k: after.get(k, 0) - before.get(k, 0) for k in set(before) | set(after)
                         if after.get(k, 0) != before.get(k, 0)}


def layout_arm(user: str) -> str:
    b = bucket("checkout-layout", user)
    return "control" if b < 5000 else "blue" if b < 7500 else "green"


def chunks(items: list[object], size: int) -> Iterator[list[object]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def send(store: RedisStore, events: list[object]) -> int:
    """Record `events` in batches of `BATCH`; the number of batches."""
    count = 0
    for chunk in chunks(events, BATCH):
        exposures = [e for e in chunk if isinstance(e, Exposure)]
        conversions = [c for c in chunk if isinstance(c, Conversion)]
        assert store.record_events("production", uuid.uuid4().hex, exposures, conversions)
        count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--user-keys", choices=["uuid", "short"], default="uuid")
    args = parser.parse_args()

    rng = random.Random(7)
    if args.user_keys == "uuid":
        users = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(args.users)]
    else:
        users = [f"user-{i:06d}" for i in range(args.users)]
    prefix = f"flagbench:{uuid.uuid4().hex}:"
    store = RedisStore.from_url(args.url, prefix=prefix)
    client = redis.Redis.from_url(args.url)
    meter = Meter(client, prefix)
    now = time.time()
    try:
        store.initialize()
        for env in ("production", "staging"):
            store.create_environment(env, env.capitalize(), actor="bench")
        store.create_flag("production", {"key": "new-checkout", "enabled": True, "rollout": 25}, actor="bench")
        store.create_flag("production", {"key": "checkout-layout", "variants": ["control", "blue", "green"],
                                         "enabled": True, "rollout": {"control": 5000, "blue": 2500, "green": 2500}},
                          actor="bench")

        def expose(flag: str, version: int, arm: Callable[[str], str]) -> Callable[[], int]:
            return lambda: send(store, [
                Exposure(flag=flag, variant=arm(user), rule_id=None, reason="SPLIT", randomized=True,
                         flag_version=version, user=user, at=now + i * 0.001) for i, user in enumerate(users)])

        def convert() -> int:
            events: list[object] = []
            for i, user in enumerate(users):
                if i % 10 < 3:
                    events.append(Conversion(event="checkout_completed", user=user,
                                             value=round(rng.uniform(5, 300), 2), at=now + 60 + i * 0.001))
                if i % 20 == 0:
                    events.append(Conversion(event="error", user=user, value=None, at=now + 60 + i * 0.001))
            return send(store, events)

        def new_stage() -> int:
            store.update_flag("production", "new-checkout", {"rollout": 50}, expected_version=1, actor="bench")
            return expose("new-checkout", 2, lambda u: "on" if bucket("new-checkout", u) < 5000 else "off")()

        steps = [
            ("1. exposed to a first flag (2 arms)",
             expose("new-checkout", 1, lambda u: "on" if bucket("new-checkout", u) < 2500 else "off")),
            ("2. exposed to a second flag (3 arms)", expose("checkout-layout", 1, layout_arm)),
            ("3. 30% convert with a value, 5% on a second event", convert),
            ("4. a new stage of the first flag, everyone exposed again", new_stage),
        ]
        info = client.info("server")
        print(f"Redis {info['redis_version']}, {args.users:,} users ({args.user_keys} keys, e.g. {users[0]!r}), "
              f"batches of {BATCH}; bytes per user\n")
        print("| step | key | bytes per user |\n| --- | --- | ---: |")
        for title, step in steps:
            batches, grown = meter.grow(step)
            for kind, size in sorted(grown.items(), key=lambda kv: -kv[1]):
                print(f"| {title} | `{kind}` | {size / args.users:,.1f} |")
            total = sum(grown.values())
            batch_bytes = grown.get("batch:<n>:<env>:<id>", 0)
            print(f"| **{title}** | **total** | **{total / args.users:,.1f}** |")
            print(f"|  | ({batches} batch ids: {batch_bytes / max(batches, 1):,.0f} bytes each) | |")
        usage = meter.usage()
        print(f"\nin all: {sum(usage.values()):,} bytes in {len(usage)} kinds of key")
    finally:
        store.close()
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for chunk in chunks(keys, 500):
            client.delete(*chunk)
        client.close()


if __name__ == "__main__":
    main()
