"""Per-stage, per-arm evidence of a flag: `GET /api/v1/envs/{env}/flags/{key}/stats`."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from ..auth import require_admin
from ..statistics import difference_interval, sample_ratio_check, wilson_interval
from ..writes import read_flag
from ._common import store

bp = Blueprint("stats", __name__, url_prefix="/api/v1/envs/<env>/flags/<key>")


def expected_shares(rollout: Any, variants: list[str]) -> dict[str, float]:
    """The configured split of the flag's own rollout, as shares per variant."""
    if isinstance(rollout, dict):
        return {v: rollout.get(v, 0) / 10_000 for v in variants}
    shares = {v: 0.0 for v in variants}
    shares[variants[-1]] = rollout / 100
    shares[variants[0]] += 1 - rollout / 100
    return shares


def stage_report(stage: dict[str, Any], counts: dict[str, Any], variants: list[str]) -> dict[str, Any]:
    """One stage: counts per arm, each event's rate with a 95% interval and its
    difference against the control arm (the first variant), and the SRM check.
    Rates and comparisons use the randomized population only."""
    control = variants[0]
    arms = [v for v in variants if v in counts] + [a for a in counts if a not in variants]
    events = sorted({name for c in counts.values() for name in c["randomized"]["events"]}
                    | {name for c in counts.values() for name in c["all"]["events"]})
    control_counts = counts.get(control, {}).get("randomized", {"exposed": 0, "events": {}})
    report_arms: dict[str, Any] = {}
    for arm in arms:
        everyone, randomized = counts[arm]["all"], counts[arm]["randomized"]
        per_event: dict[str, Any] = {}
        for name in events:
            users = randomized["events"].get(name, {}).get("users", 0)
            n = randomized["exposed"]
            entry: dict[str, Any] = {
                "users": everyone["events"].get(name, {}).get("users", 0),
                "value_sum": everyone["events"].get(name, {}).get("value_sum", 0.0),
                "randomized_users": users,
                "rate": users / n if n else None,
                "ci95": wilson_interval(users, n),
            }
            if arm != control:
                x0 = control_counts["events"].get(name, {}).get("users", 0)
                n0 = control_counts["exposed"]
                estimate = (users / n - x0 / n0) if n and n0 else None
                entry["difference"] = {
                    "versus": control,
                    "estimate": estimate,
                    "ci95": difference_interval(users, n, x0, n0),
                    "relative": (estimate / (x0 / n0)) if estimate is not None and x0 else None,
                }
            per_event[name] = entry
        report_arms[arm] = {"exposed": everyone["exposed"], "mixed": everyone["mixed"],
                            "randomized_exposed": randomized["exposed"], "events": per_event}
    shares = expected_shares(stage["rollout"], variants)
    srm = sample_ratio_check({a: counts[a]["randomized"]["exposed"] for a in counts}, shares)
    return {**stage, "control": control, "arms": report_arms, "srm": srm}


@bp.get("/stats")
@require_admin
def flag_stats(env: str, key: str) -> Response:
    flag = read_flag(store(), env, key)
    stages = store().list_stages(env, key)
    reports = []
    for i, stage in enumerate(stages):
        counts = store().stage_counts(env, key, stage["stage"])
        report = stage_report(stage, counts, flag["variants"])
        report["ended_at"] = stages[i + 1]["started_at"] if i + 1 < len(stages) else None
        report["current"] = i == len(stages) - 1
        reports.append(report)
    return jsonify(environment=env, flag=key, version=flag["version"], stages=reports)
