"""The benchmarks run, and their floors are honest. No timing is checked here:
timing goals are the benchmarks' business, never the tests'."""

from __future__ import annotations

import pytest

from tests.bench_helpers import load_benchmark


def test_bench_evaluate_runs_small_and_its_hand_written_floor_agrees_with_the_client(tmp_path):
    # Given the benchmark module and a tiny population
    bench = load_benchmark("bench_evaluate")

    # When it measures 60 users twice (it checks agreement on every user first)
    report = bench.measure(n_users=60, repeats=2)

    # Then every row is there, with positive figures and min <= median
    assert [row.name for row in report.rows] == [
        "is_enabled",
        "evaluate",
        "variant",
        "disabled flag",
        "unknown flag",
        "floor: hand-written",
        "floor: mmh3.hash",
        "empty loop",
    ]
    assert report.n_users == 60 and report.repeats == 2
    for row in report.rows:
        assert 0 <= row.min_ns <= row.median_ns
    # ... the mix reached every rule: staff, the free-tier split and the fallthrough
    assert sum(report.mix.values()) == 60
    assert {label.rsplit(":", 1)[0] for label in report.mix} == {"TARGETING_MATCH:staff", "SPLIT:free", "SPLIT:-"}

    # And the agreement check is real: a floor with other semantics is refused
    client = bench.FlagClient(offline=True, bootstrap=bench.CONFIG)
    users = bench.make_users(60)
    with pytest.raises(AssertionError, match="disagree"):
        bench.check_agreement(client, users, lambda user: user["plan"] == "free-tier")
    client.close()

    # And the recorded section replaces only its own, between its markers
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n<!-- other:start -->\nkeep me\n<!-- other:end -->\n")
    section = bench.render_section(report, bench.machine_info())
    bench.write_section(results, section)
    bench.write_section(results, section)
    text = results.read_text()
    assert "keep me" in text and text.count(bench.START_MARKER) == 1 and text.count(bench.END_MARKER) == 1
    assert "| is_enabled |" in text and "floor: hand-written" in text
