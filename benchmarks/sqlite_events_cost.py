"""What counting exposed users costs in SQLite: file bytes per user, and the time
of `stage_counts` (the figures of docs/storage-events.md).

One flag (`new-checkout`, 50%) in production. Users are exposed once each, half
`on` and half `off`, all from the flag's own split; one in five then sends a
`checkout` event with a value. User keys arrive in random order, as real
traffic does (in key order, every B-tree page would be filled, understating the
cost). Events go through `SQLiteStore.record_events` in
batches of 500 (the SDK's batch size), in this process, with the store's own
settings (WAL, synchronous NORMAL).

After every `--step` users the WAL is checkpointed into the main file and the
file's size is read; the growth per step, divided by the step, is the cost of
one exposed user (20% of them converted). `dbstat` splits the final size by
table and index. Then, at the full population:

- `stage_counts` (what the stats API and the controller call) is timed: it
  reads counter rows kept up to date by every batch;
- the same numbers computed on the fly by GROUP BY over the per-user rows (the
  design not chosen) are timed for comparison.

    python benchmarks/sqlite_events_cost.py [--users 100000] [--step 10000] [--key-style short|uuid]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flagserver.storage.events import Conversion, Exposure  # noqa: E402
from flagserver.storage.sqlite_store import SQLiteStore  # noqa: E402

FLAG = "new-checkout"
BATCH = 500
T0 = time.time() - 3600

# The numbers of stage_counts, computed from the per-user rows instead of counters.
GROUP_BY_ARMS = """
    SELECT arm, count(*), sum(mixed), sum(randomized), sum(mixed * randomized)
    FROM exposures WHERE stage_id = ? GROUP BY arm"""
GROUP_BY_EVENTS = """
    SELECT e.arm, c.event, count(*), sum(e.randomized)
    FROM conversions AS c JOIN exposures AS e ON e.stage_id = c.stage_id AND e.user_key = c.user_key
    WHERE c.stage_id = ? GROUP BY e.arm, c.event"""


def user_key(i: int, style: str) -> str:
    """The i-th user's key. Keys arrive in no particular order, as from real traffic
    (ordered keys would fill every B-tree page and understate the cost)."""
    n = (i * 2_654_435_761) % 10_000_019  # a permutation of 0 .. 10,000,018 (a prime)
    return str(uuid.UUID(int=random.Random(n).getrandbits(128))) if style == "uuid" else f"user-{n:07d}"


def batches(first: int, count: int, style: str) -> list[tuple[list[Exposure], list[Conversion]]]:
    """Exposures of users first..first+count-1 and the conversions of one in five,
    cut into batches of `BATCH` events."""
    events: list[Exposure | Conversion] = []
    for i in range(first, first + count):
        user = user_key(i, style)
        at = T0 + i * 0.001
        events.append(Exposure(flag=FLAG, variant=("off", "on")[i % 2], rule_id=None, reason="SPLIT",
                               randomized=True, flag_version=1, user=user, at=at))
        if i % 5 == 0:
            events.append(Conversion(event="checkout", user=user, value=49.9, at=at + 60))
    out = []
    for start in range(0, len(events), BATCH):
        chunk = events[start : start + BATCH]
        out.append(([e for e in chunk if isinstance(e, Exposure)], [c for c in chunk if isinstance(c, Conversion)]))
    return out


def file_size(store: SQLiteStore) -> int:
    with store._pool.connection() as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return os.path.getsize(store.path)


def timed(call, repeats: int) -> float:  # type: ignore[no-untyped-def]
    """Median seconds of `call()`."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--step", type=int, default=10_000)
    parser.add_argument("--key-style", choices=("short", "uuid"), default="short",
                        help="user keys like user-0000123 (12 characters) or UUIDs (36)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        store = SQLiteStore(os.path.join(folder, "events.db"))
        store.initialize()
        store.create_environment("production", "Production", actor="bench")
        store.create_flag("production", {"key": FLAG, "enabled": True, "rollout": 50}, actor="bench")
        sizes = [file_size(store)]
        ingest_seconds = 0.0
        n_events = 0
        print(f"key style {args.key_style} (e.g. {user_key(12345, args.key_style)!r})")
        print("| users | file bytes | growth | bytes per exposed user |")
        print("| ---: | ---: | ---: | ---: |")
        print(f"| 0 | {sizes[0]:,} | | |")
        for first in range(0, args.users, args.step):
            work = batches(first, args.step, args.key_style)
            t = time.perf_counter()
            for exposures, conversions in work:
                store.record_events("production", uuid.uuid4().hex, exposures, conversions)
            ingest_seconds += time.perf_counter() - t
            n_events += sum(len(e) + len(c) for e, c in work)
            sizes.append(file_size(store))
            growth = sizes[-1] - sizes[-2]
            print(f"| {first + args.step:,} | {sizes[-1]:,} | {growth:,} | {growth / args.step:,.1f} |")
        per_user = [(b - a) / args.step for a, b in zip(sizes[1:], sizes[2:], strict=False)] or [
            (sizes[1] - sizes[0]) / args.step]
        print(f"\nbytes per exposed user: median {statistics.median(per_user):.1f} over the steps after the first; "
              f"overall {(sizes[-1] - sizes[0]) / args.users:.1f}")

        with store._pool.connection() as conn:
            tables = conn.execute(
                "SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY sum(pgsize) DESC").fetchall()
            stage_id = conn.execute("SELECT id FROM stages WHERE environment = 'production' AND flag = ?",
                                    (FLAG,)).fetchone()[0]
            print("\n| table or index | bytes | per exposed user |")
            print("| --- | ---: | ---: |")
            for name, size in tables[:6]:
                print(f"| {name} | {size:,} | {size / args.users:.1f} |")

            counts = store.stage_counts("production", FLAG, 1)
            exposed = sum(arm["all"]["exposed"] for arm in counts.values())
            assert exposed == args.users, exposed
            counters = timed(lambda: store.stage_counts("production", FLAG, 1), 200)
            group_by = timed(lambda: (conn.execute(GROUP_BY_ARMS, (stage_id,)).fetchall(),
                                      conn.execute(GROUP_BY_EVENTS, (stage_id,)).fetchall()), 5)
        store.close()

    print(f"\nstage_counts at {args.users:,} exposed users (counter rows): median {counters * 1e6:,.0f} us")
    print(f"the same numbers by GROUP BY over the per-user rows: median {group_by * 1e3:,.1f} ms")
    print(f"ingestion in this process: {n_events:,} events in {ingest_seconds:.1f} s = "
          f"{n_events / ingest_seconds:,.0f} events/s (batches of {BATCH}, every user new)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
