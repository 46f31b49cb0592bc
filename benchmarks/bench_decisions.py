"""Do automatic rollouts roll back what they should, and only that?

Simulated canary rollouts go through the real `flagserver.rollout.decide`, next to
two rules teams use today, over many seeded runs per scenario:

- users arrive at 1,000 per interval, new users every interval; each is bucketed by
  the real engine (`flagsdk.bucket` with the flag's salt): a pool of user keys is
  bucketed once and every run draws its arrivals from the pool from its own offset;
- control users convert with 12% (`checkout_completed`) and hit an error with 0.5%
  (`error`), canary users with the scenario's rates;
- the plan is the default one (5 → 25 → 50 → 100%, soak 10 intervals, margins
  30/15/10%, α = 0.05 split over the two guardrails, τ = 0.2 × the baseline rate);
  the controller is simulated: promotions are applied at once, a new stage starts;
- baselines: `thresholds` rolls back when the canary's conversion in the last
  interval is below 10% or its error rate above 5% (a Flagger-style absolute check,
  failure threshold 1); `z-test` rolls back when a two-proportion z-test over all the
  rollout's users gives p < 0.05 in the harmful direction, at every interval; both
  promote on time, after 10 intervals per stage.

Scenarios: healthy releases (A/A; +5% conversion; a baseline drifting ±25% over a
40-interval cycle; conversions arriving 1-5 intervals late), harmful ones (conversion
−10%, −20%, −50%; errors ×2; the error spike 0.5% → 2.5%; a −20% release whose canary
also loses 15% of its non-converting users' exposure events, a sample ratio mismatch
that makes it look like −7.5%).

    python benchmarks/bench_decisions.py            # 3,500 seeds (~6.5 min on 2 cores); refreshes RESULTS.md
    python benchmarks/bench_decisions.py --quick    # 40 seeds; prints only

Targets (the issue; checked here, never by tests) are listed in TARGETS.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flagsdk import bucket

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import (  # noqa: E402 (the sibling module, found through the line above)
    RESULTS_PATH,
    common_machine_info,
    git_commit,
    load_average,
    section_markers,
    write_section,
)

from flagserver.rollout import (  # noqa: E402
    ArmCounts,
    PlanConfig,
    PlanState,
    RolloutPlan,
    RolloutStats,
    StageStats,
    decide,
)

SALT = "new-checkout"
USERS_PER_INTERVAL = 1_000
BASE_CONVERSION = 0.12
BASE_ERRORS = 0.005
INTERVAL = 60.0
MAX_INTERVALS = 400
POOL_SIZE = 1 << 21
PLAN = {"guardrails": [{"event": "checkout_completed", "kind": "conversion"}, {"event": "error", "kind": "error"}]}
POLICIES = ("sequential", "thresholds", "z-test")
BASELINE_SOAK = 10

START_MARKER, END_MARKER = section_markers("bench_decisions")


@dataclass(frozen=True)
class Scenario:
    name: str
    healthy: bool
    lift: float = 0.0  # relative change of the canary's conversion
    error_ratio: float = 1.0  # canary error rate / control error rate
    drift: bool = False
    delay: bool = False
    dropped: float = 0.0  # share of the canary's non-converting users whose exposure is lost


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("A/A (no effect)", True),
    Scenario("+5% conversion", True, lift=0.05),
    Scenario("drifting baseline", True, drift=True),
    Scenario("late conversions (1-5 intervals)", True, delay=True),
    Scenario("conversion −10%", False, lift=-0.10),
    Scenario("conversion −20%", False, lift=-0.20),
    Scenario("conversion −50%", False, lift=-0.50),
    Scenario("errors ×2 (0.5% → 1%)", False, error_ratio=2.0),
    Scenario("error spike 0.5% → 2.5%", False, error_ratio=5.0),
    Scenario("−20% hidden by SRM (canary loses 15%)", False, lift=-0.20, dropped=0.15),
)


@dataclass
class Run:
    rolled_back: bool
    completed: bool
    users_seen: int  # canary users (who saw the new version) until the run ended
    intervals: int
    cause: str = ""  # what rolled it back: "srm", "conversion", "error" (sequential policy)


@dataclass
class Cell:
    runs: int
    rolled_back: float
    users_median: float | None
    to_100_median: float | None
    stuck: float
    causes: dict[str, int] = field(default_factory=dict)


@dataclass
class Report:
    seeds: int
    seconds: float
    processes: int
    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)


# -- traffic ---------------------------------------------------------------------------------------


_POOL: dict[int, dict[int, np.ndarray]] = {}


def pool_counts(size: int) -> dict[int, np.ndarray]:
    """Bucket `size` user keys once with the real engine; for each stage's line, the
    running count of admitted users (so a run's arrivals cost O(1) per interval)."""
    if size not in _POOL:
        buckets = np.fromiter((bucket(SALT, f"user-{i}") for i in range(size)), dtype=np.int32, count=size)
        config = PlanConfig.from_dict(PLAN)
        lines = {round(s.percentage * 100) for s in config.stages}
        _POOL[size] = {line: np.concatenate(([0], np.cumsum(buckets < line))) for line in lines}
    return _POOL[size]


@dataclass
class Arm:
    exposed: int = 0
    conversions: int = 0
    errors: int = 0
    pending: np.ndarray = field(default_factory=lambda: np.zeros(MAX_INTERVALS + 8, dtype=np.int64))


@dataclass
class SimStage:
    percentage: float
    started_at: float
    canary: Arm = field(default_factory=Arm)
    control: Arm = field(default_factory=Arm)


def simulate(scenario: Scenario, policy: str, seed: int, pool_size: int = POOL_SIZE) -> Run:
    """One rollout of `scenario` under `policy` until it rolls back, reaches 100% or
    runs out of intervals."""
    counts = pool_counts(pool_size)
    rng = np.random.default_rng([SCENARIOS.index(scenario), POLICIES.index(policy), seed])
    span = MAX_INTERVALS * USERS_PER_INTERVAL
    offset = int(rng.integers(0, pool_size - span)) if pool_size > span else 0
    config = PlanConfig.from_dict(PLAN)
    plan = RolloutPlan.start(config, 0.0)
    stage_index, stage_ticks = 0, 0
    stages = [SimStage(config.stages[0].percentage, 0.0)]
    seen = 0
    for tick in range(MAX_INTERVALS):
        now = (tick + 1) * INTERVAL
        current = stages[-1]
        line = round(current.percentage * 100)
        start = (offset + tick * USERS_PER_INTERVAL) % max(1, pool_size - USERS_PER_INTERVAL)
        n_t = int(counts[line][start + USERS_PER_INTERVAL] - counts[line][start])
        n_c = USERS_PER_INTERVAL - n_t
        seen += n_t
        base = BASE_CONVERSION * (1 + 0.25 * np.sin(2 * np.pi * tick / 40)) if scenario.drift else BASE_CONVERSION
        p_t, p_c = base * (1 + scenario.lift), base
        x_t, x_c = int(rng.binomial(n_t, p_t)), int(rng.binomial(n_c, p_c))
        observed_t = n_t
        if scenario.dropped:
            observed_t = x_t + int(rng.binomial(n_t - x_t, 1 - scenario.dropped))
        e_t = int(rng.binomial(observed_t, min(1.0, BASE_ERRORS * scenario.error_ratio)))
        e_c = int(rng.binomial(n_c, BASE_ERRORS))
        for arm, exposed, converted, errors in ((current.canary, observed_t, x_t, e_t),
                                                (current.control, n_c, x_c, e_c)):
            arm.exposed += exposed
            arm.errors += errors
            if scenario.delay:
                arm.pending[tick + 1: tick + 6] += rng.multinomial(converted, [0.2] * 5)
            else:
                arm.pending[tick] += converted
        window = (0, 0)
        for st in stages:
            for arm in (st.canary, st.control):
                arrived = int(arm.pending[tick])
                arm.conversions += arrived
                if st is current and arm is current.canary:
                    window = (arrived, e_t)
        # The policy looks.
        if policy == "sequential":
            stats = RolloutStats(tuple(
                StageStats(st.percentage, st.started_at,
                           ArmCounts(st.control.exposed, {"checkout_completed": st.control.conversions,
                                                          "error": st.control.errors}),
                           ArmCounts(st.canary.exposed, {"checkout_completed": st.canary.conversions,
                                                         "error": st.canary.errors}))
                for st in stages))
            decision = decide(plan, stats, now)
            # As the controller does: the state goes through its JSON form between ticks.
            plan = RolloutPlan(config, PlanState.from_dict(decision.state.to_dict()))
            action = decision.action
            if action == "rollback":
                return Run(True, False, seen, tick + 1, _cause(decision.numbers))
        else:
            stage_ticks += 1
            if policy == "thresholds":
                bad = observed_t > 0 and (window[0] / observed_t < 0.10 or window[1] / observed_t > 0.05)
            else:
                bad = _z_harm(stages, "conversions", -1) or _z_harm(stages, "errors", +1)
            action = "rollback" if bad else ("promote" if stage_ticks >= BASELINE_SOAK else "hold")
        if action == "rollback":
            return Run(True, False, seen, tick + 1)
        if action == "promote":
            stage_index, stage_ticks = stage_index + 1, 0
            if stage_index == len(config.stages) - 1:
                return Run(False, True, seen, tick + 1)
            stages.append(SimStage(config.stages[stage_index].percentage, now))
        elif action not in ("hold",):
            return Run(False, False, seen, tick + 1)  # pause / wait: a person takes over
    return Run(False, False, seen, MAX_INTERVALS)


def _cause(numbers: dict[str, Any]) -> str:
    if numbers["srm"]["mismatch"]:
        return "srm"
    return "+".join(sorted(g["kind"] for g in numbers["guardrails"].values() if g["harm"]["harmful"]))


def _z_harm(stages: Sequence[SimStage], metric: str, direction: int) -> bool:
    """A two-proportion z-test over all the rollout's users (pooled over stages, as a
    dashboard would), p < 0.05 two-sided, in the harmful `direction`."""
    x_t = sum(getattr(s.canary, metric) for s in stages)
    n_t = sum(s.canary.exposed for s in stages)
    x_c = sum(getattr(s.control, metric) for s in stages)
    n_c = sum(s.control.exposed for s in stages)
    if n_t == 0 or n_c == 0:
        return False
    p = (x_t + x_c) / (n_t + n_c)
    if p <= 0 or p >= 1:
        return False
    z = (x_t / n_t - x_c / n_c) / np.sqrt(p * (1 - p) * (1 / n_t + 1 / n_c))
    return bool(direction * z > 1.959963984540054)


# -- runs and the table -------------------------------------------------------------------------------


def _work(job: tuple[int, str, int, int, int]) -> tuple[int, str, list[Run]]:
    index, policy, first, count, pool_size = job
    return index, policy, [simulate(SCENARIOS[index], policy, seed, pool_size) for seed in range(first, first + count)]


def run(seeds: int, processes: int = 2, pool_size: int = POOL_SIZE,
        scenarios: Sequence[Scenario] = SCENARIOS, policies: Sequence[str] = POLICIES) -> Report:
    """Simulate `seeds` runs of every scenario under every policy (seeds 0..seeds-1)."""
    started = time.perf_counter()
    pool_counts(pool_size)  # built once, before forking, so the workers share it
    chunk = max(1, min(50, seeds // (4 * max(1, processes)) or 1))
    jobs = [(SCENARIOS.index(s), p, first, min(chunk, seeds - first), pool_size)
            for s in scenarios for p in policies for first in range(0, seeds, chunk)]
    results: dict[tuple[str, str], list[Run]] = {}
    if processes > 1:
        with multiprocessing.get_context("fork").Pool(processes) as workers:
            outputs = workers.map(_work, jobs, chunksize=1)
    else:
        outputs = [_work(job) for job in jobs]
    for index, policy, runs in outputs:
        results.setdefault((SCENARIOS[index].name, policy), []).extend(runs)
    report = Report(seeds=seeds, seconds=time.perf_counter() - started, processes=processes)
    for key, runs in results.items():
        back = [r.users_seen for r in runs if r.rolled_back]
        done = [r.intervals for r in runs if r.completed]
        report.cells[key] = Cell(
            runs=len(runs), rolled_back=len(back) / len(runs),
            users_median=statistics.median(back) if back else None,
            to_100_median=statistics.median(done) if done else None,
            stuck=sum(1 for r in runs if not r.rolled_back and not r.completed) / len(runs),
            causes={c: sum(1 for r in runs if r.rolled_back and r.cause == c)
                    for c in sorted({r.cause for r in runs if r.rolled_back})})
    return report


def _rate(cell: Cell, healthy: bool) -> str:
    text = f"{cell.rolled_back * 100:.1f}%"
    return f"{text} false" if healthy else f"{text} caught"


def format_table(report: Report) -> str:
    """One markdown table: a row per scenario; per policy, the share rolled back, the median
    canary users before a rollback, and the median intervals to 100%."""
    names = [s.name for s in SCENARIOS if any((s.name, p) in report.cells for p in POLICIES)]
    policies = [p for p in POLICIES if any((n, p) in report.cells for n in names)]
    head = ["scenario"]
    for p in policies:
        head += [f"{p}: rolled back", f"{p}: users before rollback", f"{p}: intervals to 100%"]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for scenario in SCENARIOS:
        if scenario.name not in names:
            continue
        row = [scenario.name]
        for p in policies:
            cell = report.cells.get((scenario.name, p))
            if cell is None:
                row += ["", "", ""]
                continue
            row.append(_rate(cell, scenario.healthy) + (f" ({cell.stuck * 100:.1f}% held)" if cell.stuck else ""))
            row.append(f"{cell.users_median:,.0f}" if cell.users_median is not None else "–")
            row.append(f"{cell.to_100_median:g}" if cell.to_100_median is not None else "–")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


TARGETS: tuple[tuple[str, str, str, float], ...] = (
    # (description, scenario, measure, bound)
    ("A/A false rollback ≤ 3%", "A/A (no effect)", "false", 0.03),
    ("+5% false rollback ≤ 3%", "+5% conversion", "false", 0.03),
    ("drifting baseline false rollback ≤ 3%", "drifting baseline", "false", 0.03),
    ("late conversions false rollback ≤ 3%", "late conversions (1-5 intervals)", "false", 0.03),
    ("−10% caught in ≥ 99% of runs", "conversion −10%", "caught", 0.99),
    ("−20% caught in all runs", "conversion −20%", "caught", 1.0),
    ("−50% caught in all runs", "conversion −50%", "caught", 1.0),
    ("error spike 0.5% → 2.5% caught in all runs", "error spike 0.5% → 2.5%", "caught", 1.0),
    ("error spike: median users before rollback ≤ 500 (a few hundred)", "error spike 0.5% → 2.5%", "users", 500),
    ("SRM-masked −20% caught in all runs", "−20% hidden by SRM (canary loses 15%)", "caught", 1.0),
    ("−20%: median users before rollback ≤ 2,000", "conversion −20%", "users", 2000),
    ("healthy (A/A) at 100% in a median ≤ 45 intervals", "A/A (no effect)", "to_100", 45),
)


def check_targets(report: Report) -> list[tuple[str, bool, str]]:
    """Each target of the sequential policy: (description, met, the measured figure)."""
    out = []
    for text, name, measure, bound in TARGETS:
        cell = report.cells.get((name, "sequential"))
        if cell is None:
            continue
        if measure == "false":
            out.append((text, cell.rolled_back <= bound, f"{cell.rolled_back * 100:.1f}%"))
        elif measure == "caught":
            out.append((text, cell.rolled_back >= bound, f"{cell.rolled_back * 100:.2f}%"))
        elif measure == "users":
            ok = cell.users_median is not None and cell.users_median <= bound
            out.append((text, ok, f"{cell.users_median:,.0f}" if cell.users_median is not None else "none"))
        else:
            ok = cell.to_100_median is not None and cell.to_100_median <= bound
            out.append((text, ok, f"{cell.to_100_median:g}" if cell.to_100_median is not None else "never"))
    return out


def format_causes(report: Report) -> str:
    """What fired in the sequential policy's rollbacks, per scenario."""
    lines = []
    for scenario in SCENARIOS:
        cell = report.cells.get((scenario.name, "sequential"))
        if cell is None or not cell.causes:
            continue
        causes = ", ".join(f"{cause or '?'} {count}" for cause, count in cell.causes.items())
        lines.append(f"- {scenario.name}: {causes} (of {cell.runs:,} runs)")
    return "\n".join(lines)


def format_targets(report: Report) -> str:
    return "\n".join(f"- {text}: **{'met' if ok else 'not met'}** ({figure})"
                     for text, ok, figure in check_targets(report))


def machine_info() -> dict[str, str]:
    """The machine and the code measured: `cpu`, `nproc`, `python`, `date`, `load` (the last
    minute's), `numpy`, `commit`."""
    return {**common_machine_info(cpu_fallback=platform.processor() or platform.machine()),
            "load": load_average(1), "numpy": np.__version__, "commit": git_commit() or "unknown"}


def render_section(report: Report, machine: dict[str, str]) -> str:
    """This benchmark's section of RESULTS.md, markers included."""
    return "\n".join([
        START_MARKER,
        "## bench_decisions: rollout decisions on simulated traffic",
        "",
        f"`python benchmarks/bench_decisions.py`, {machine['date']}. Machine: {machine['cpu']}, nproc "
        f"{machine['nproc']}, {machine['python']}, numpy {machine['numpy']}; code at {machine['commit']}. "
        f"{report.seeds:,} seeded runs (seeds 0-{report.seeds - 1}) per scenario and policy, "
        f"{report.processes} processes, {report.seconds / 60:.1f} minutes (load average {machine.get('load', '?')} "
        "at the start; other jobs on the machine slow it down).",
        "",
        f"{USERS_PER_INTERVAL:,} new users per interval, bucketed by `flagsdk.bucket` with salt `{SALT}` "
        f"(a pool of {POOL_SIZE:,} keys bucketed once; each run reads its arrivals from its own offset); "
        f"control converts at {BASE_CONVERSION:.0%} and errs at {BASE_ERRORS:.1%}. `sequential` is "
        "`flagserver.rollout.decide` with the default plan (5 → 25 → 50 → 100%, soak 10 intervals, margins "
        "30/15/10%, α 0.05 over two guardrails, τ = 0.2 × baseline). `thresholds`: roll back when the canary's "
        "last-interval conversion < 10% or error rate > 5%; `z-test`: two-proportion z-test over the rollout's "
        "users, p < 0.05 at every interval; both promote after 10 intervals per stage. \"Users before "
        "rollback\" counts canary users (who saw the new version) in rolled-back runs; runs end at a rollback, "
        f"at 100%, or after {MAX_INTERVALS} intervals (\"held\"). Every parameter of the plan is the default of "
        "STATISTICS.md section 8; nothing was tuned to meet the targets.",
        "",
        format_table(report),
        "",
        "Targets (sequential policy):",
        "",
        format_targets(report),
        "",
        "What fired in the sequential policy's rollbacks (the test that reached its threshold first):",
        "",
        format_causes(report),
        "",
        f"Monte Carlo error: ±{100 * (0.03 * 0.97 / report.seeds) ** 0.5:.2f} points on a 3% rate at "
        f"{report.seeds:,} runs (one binomial standard error).",
        END_MARKER,
    ])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="40 seeds; records nothing")
    parser.add_argument("--seeds", type=int, default=None, help="runs per scenario and policy (default 3,500)")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--results", type=Path, default=RESULTS_PATH, help="the RESULTS.md to refresh")
    parser.add_argument("--no-record", action="store_true", help="print only; do not touch RESULTS.md")
    args = parser.parse_args(argv)
    seeds = args.seeds if args.seeds is not None else (40 if args.quick else 3500)
    record = not (args.quick or args.no_record)
    machine = machine_info()
    report = run(seeds, processes=args.processes)
    print(f"{machine['cpu']}, nproc {machine['nproc']}, {machine['python']}; {seeds:,} seeds per cell, "
          f"{report.processes} processes, {report.seconds:.0f} s\n")
    print(format_table(report))
    print()
    print(format_targets(report))
    if seeds < 1000:
        print(f"(with {seeds} seeds a rate moves by ±{100 * (0.03 * 0.97 / seeds) ** 0.5:.1f} points by chance alone: "
              "too few to judge the targets)")
    print("\nWhat rolled back the sequential policy's runs:")
    print(format_causes(report))
    if record:
        write_section(args.results, render_section(report, machine))
        print(f"\nrecorded in {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
