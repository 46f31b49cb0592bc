"""The ingestion benchmark runs end to end on SQLite, tiny, and its bodies are what
the SDK sends. No timing is checked here: timing goals are the benchmark's business."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import pytest

from flagserver.api.events import parse_batch
from tests.bench_helpers import BENCHMARKS


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    # On sys.path rather than loaded from its file: the senders are spawned
    # processes, which import the benchmark by name.
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bench_events

    return bench_events


def test_the_bodies_are_valid_sdk_batches_of_new_exposures_and_tracks_of_exposed_users(bench) -> None:  # type: ignore[no-untyped-def]
    now = time.time()
    bodies = bench.make_bodies(sender=3, n_batches=2, now=now)

    batches = [json.loads(gzip.decompress(body)) for body in bodies]
    parsed = [parse_batch(batch, {bench.FLAG: {}}, now) for batch in batches]

    assert [len(batch["events"]) for batch in batches] == [bench.BATCH_SIZE] * 2
    assert len({batch_id for batch_id, _, _ in parsed}) == 2
    exposed = [e.user for _, exposures, _ in parsed for e in exposures]
    assert len(exposed) == len(set(exposed)) == 2 * bench.EXPOSURES_PER_BATCH
    assert all(e.comparable for _, exposures, _ in parsed for e in exposures)
    tracked = {c.user for _, _, conversions in parsed for c in conversions}
    assert tracked and tracked <= set(exposed)


@pytest.mark.slow  # a real `flagserver init` and `serve`: a few seconds
def test_a_tiny_run_on_sqlite_counts_every_event_and_records_only_its_section(bench, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # When two senders post two batches each to a real `flagserver serve`
    report = bench.measure("sqlite", senders=2, batches_per_sender=2, workers=1, threads=2)

    # Then every batch was accepted and every exposed user counted once
    assert report.errors == {}
    assert (report.batches, report.events) == (4, 4 * bench.BATCH_SIZE)
    assert report.exposed_counted == report.exposed_sent == 4 * bench.EXPOSURES_PER_BATCH
    assert len(report.latencies) == 4 and report.seconds > 0
    assert report.server_cpu is None or report.server_cpu > 0  # the workers did the parsing and the counting

    # And the recorded section replaces only its own, between its markers
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n<!-- other:start -->\nkeep me\n<!-- other:end -->\n")
    section = bench.render_section([bench.median_of([report])], bench.machine_info(), runs=1)
    bench.write_section(results, section)
    bench.write_section(results, section)
    text = results.read_text()
    assert "keep me" in text and text.count(bench.START_MARKER) == 1 and text.count(bench.END_MARKER) == 1
    assert "| sqlite | 1 x 2 | 2 | 4 | 2,000 |" in text
