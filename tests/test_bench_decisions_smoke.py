"""bench_decisions runs small, and its table has the right shape. No timing and no
targets are checked here: those are the benchmark's business."""

from __future__ import annotations

from pathlib import Path

from tests.bench_helpers import load_benchmark


def test_a_tiny_run_gives_the_table_and_does_not_roll_back_a_release_without_effect(tmp_path: Path):
    # Given the benchmark, a small pool of users and two scenarios
    bench = load_benchmark("bench_decisions")
    scenarios = [bench.SCENARIOS[0], bench.SCENARIOS[6]]  # A/A, conversion −50%
    assert scenarios[0].lift == 0 and scenarios[0].error_ratio == 1 and scenarios[0].healthy
    assert scenarios[1].lift == -0.5

    # When it runs 6 seeds of each under every policy, in this process
    report = bench.run(6, processes=1, pool_size=60_000, scenarios=scenarios)

    # Then every (scenario, policy) cell is there with all its runs
    assert set(report.cells) == {(s.name, p) for s in scenarios for p in bench.POLICIES}
    assert all(cell.runs == 6 for cell in report.cells.values())
    # ... the A/A release is never rolled back by the sequential policy, and reaches 100%
    aa = report.cells[(scenarios[0].name, "sequential")]
    assert aa.rolled_back == 0 and aa.stuck == 0 and aa.to_100_median is not None
    # ... while the −50% release always is, having been seen by some canary users
    harmful = report.cells[(scenarios[1].name, "sequential")]
    assert harmful.rolled_back == 1 and harmful.users_median is not None and harmful.users_median > 0
    assert harmful.causes == {"conversion": 6}

    # And the table has a header, a separator and one row per scenario, 1 + 3 columns per policy
    lines = bench.format_table(report).splitlines()
    assert len(lines) == 2 + len(scenarios)
    assert all(line.count("|") == 2 + 3 * len(bench.POLICIES) for line in lines)
    assert lines[2].startswith(f"| {scenarios[0].name} | 0.0% false |")

    # And the recorded section replaces only its own, between its markers
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n<!-- other:start -->\nkeep me\n<!-- other:end -->\n")
    section = bench.render_section(report, bench.machine_info())
    bench.write_section(results, section)
    bench.write_section(results, section)
    text = results.read_text()
    assert "keep me" in text
    assert text.count(bench.START_MARKER) == 1 and text.count(bench.END_MARKER) == 1
    assert "| A/A (no effect) |" in text and "Targets (sequential policy)" in text
