"""benchmarks/bench_config.py works end to end, on a handful of requests: its setup, the
real `flagserver serve` subprocess, the checks before timing, the load generators and
the report. No timing is checked here: timing goals are the benchmark's business."""

from __future__ import annotations

import pytest

from tests.bench_helpers import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_config")


def test_the_setup_serves_the_realistic_config_and_a_tiny_load_sees_only_200s_and_304s(bench, tmp_path):
    # Given the benchmark's SQLite store: 50 flags, 10 segments, an SDK key
    setup = bench.prepare("sqlite", tmp_path)
    assert (setup.n_flags, setup.n_segments) == (bench.N_FLAGS, bench.N_SEGMENTS)
    assert setup.etag.startswith('"production-') and setup.body_bytes > 10_000

    # When `flagserver serve` runs it in a subprocess (start() waits for /readyz)
    with bench.Server(setup, tmp_path / "server.log") as server:
        pids = server.pids()
        assert len(pids) >= 1 + bench.WORKERS, server.log_tail()  # the master, its workers (and any helper)
        # Then the checks made before timing pass: 200 + ETag, 304, stale ETag, 401
        bench.verify(server.port, setup)

        # And a handful of requests from the Python load generator see only the expected status
        for conditional, expected in ((False, 200), (True, 304)):
            with bench.cpu_meter(pids) as cpu:
                result = bench.run_python_load(server.port, bench.config_headers(setup, conditional), 10.0,
                                               processes=1, connections=2, max_requests_per_connection=3)
            result.check(expected)
            assert result.requests == 6 and 0 < result.p50_ms <= result.p99_ms
            assert cpu[0].server_s >= 0 and cpu[0].generator_s >= 0

        # And wrk, when installed, runs the benchmark's Lua script (a few requests per thread)
        if bench.wrk_path() is not None:
            result = bench.run_wrk(server.port, bench.config_headers(setup, True), 1, tmp_path, threads=1,
                                   connections=2, max_per_thread=4)
            result.check(304)
            assert result.statuses[304] >= 4

        # And a run that saw another status is refused, not reported
        result = bench.run_python_load(server.port, {}, 10.0, processes=1, connections=1,
                                       max_requests_per_connection=2)
        assert result.statuses == {401: 2}
        with pytest.raises(AssertionError, match="expected only 304s"):
            result.check(304)
    assert server.process is None  # stopped


def test_the_report_replaces_only_its_own_section_and_keeps_the_findings(bench, tmp_path):
    # Given two measured backends, two runs per path (figures made up: only the rendering is under test)
    setup = bench.Setup("sqlite", {}, "key", '"production-9"', 25_000, 50, 10)
    slow = bench.TimedRun(bench.LoadResult("wrk", 800, 2.0, 2.5, 12.0, {200: 800}, 0, 32, 2),
                          bench.CpuUse(0.2, 0.02, 1.5))
    fast = bench.TimedRun(bench.LoadResult("wrk", 1000, 2.0, 1.5, 9.0, {200: 1000}, 0, 32, 2),
                          bench.CpuUse(0.25, 0.02, 0.1))
    results = {name: bench.BackendResult(setup, {200: (slow, fast), 304: (fast, slow)})
               for name in ("sqlite", "redis")}
    machine = {"cpu": "CPU", "nproc": "2", "python": "CPython", "packages": "flask 3", "wrk": "4.1.0",
               "redis_server": "7", "revision": "commit abc", "date": "today"}
    section = bench.render_section(results, machine, command="python benchmarks/bench_config.py",
                                   generator="wrk", duration_s=2, repeats=2, threads=2, connections=32)
    # Then each path shows its fastest run, and every run's figure below
    assert "| 304 req/s | 500 | 500 |" in section and "nproc 2, shared by the server and the load generator" in section
    assert "| req/s of every run, 200; 304 | 400, 500; 500, 400 |" in section
    assert "**not met** (500/s" in section and "| server CPU per request, 200 / 304 (us) | 250 / 250 |" in section

    # When it is written twice into a file that holds other sections and our findings
    results_md = tmp_path / "RESULTS.md"
    results_md.write_text("# Benchmark results\n\n<!-- other:start -->\nkeep me\n<!-- other:end -->\n\n"
                          f"{bench.START_MARKER}\nold figures\n{bench.FINDINGS_MARKER}\nprofile notes\n"
                          f"{bench.END_MARKER}\n")
    for _ in range(2):
        findings = bench.existing_findings(results_md)
        bench.write_section(results_md, bench.render_section(
            results, machine, command="c", generator="wrk", duration_s=2, repeats=2, threads=2, connections=32,
            findings=findings))

    # Then the other section and the findings stay, once, and the old figures are gone
    text = results_md.read_text()
    assert "keep me" in text and "profile notes" in text and "old figures" not in text
    assert text.count(bench.START_MARKER) == 1 and text.count(bench.FINDINGS_MARKER) == 1


def test_parse_wrk_output_reads_the_lua_summary_and_refuses_output_without_it(bench):
    out = 'Running 1s test\nBENCH_JSON {"requests":10,"duration_us":2000000,"errors":0,"p50_us":1500,' \
          '"p99_us":4000,"statuses":{"304":10}}\n'
    result = bench.parse_wrk_output(out, threads=2, connections=4)
    assert (result.requests, result.rps, result.p50_ms, result.p99_ms, result.statuses) == (10, 5.0, 1.5, 4.0,
                                                                                           {304: 10})
    with pytest.raises(ValueError, match="BENCH_JSON"):
        bench.parse_wrk_output("Running 1s test\n", threads=2, connections=4)
