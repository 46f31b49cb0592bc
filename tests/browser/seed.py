"""Data for the page tests: a realistic environment, and simulated exposures."""

from __future__ import annotations

import time
import uuid
from typing import Any

from flagserver.rollout import RolloutPlanSchema
from flagserver.rollout.actions import act, put_plan
from flagserver.rollout.controller import RolloutService
from flagserver.storage.events import Conversion, Exposure


def record_split(store: Any, env: str, flag: str, *, control: int, canary: int, event: str,
                 control_rate: float, canary_rate: float, at: float | None = None) -> None:
    """Exposures of the flag's current version, split by its own rollout, and conversions
    after them: `control` users on the first variant, `canary` on the last."""
    record = store.get_flag(env, flag)
    at = time.time() if at is None else at
    first, last = record["variants"][0], record["variants"][-1]
    exposures, conversions = [], []
    tag = uuid.uuid4().hex[:6]
    for arm, variant, n, rate in (("c", first, control, control_rate), ("t", last, canary, canary_rate)):
        converting = round(n * rate)
        for i in range(n):
            user = f"{tag}-{arm}{i}"
            exposures.append(Exposure(flag, variant, None, "SPLIT", True, record["version"], user, at))
            if i < converting:
                conversions.append(Conversion(event, user, None, at + 1))
    store.record_events(env, f"batch-{tag}", exposures, conversions)


def seed_demo(store: Any, env: str = "production") -> None:
    """Segments, flags with rules and weights, and a rollout with evidence and decisions."""
    actor = "admin:ada"
    store.create_segment(env, {"key": "internal", "description": "Our own staff", "conditions": [
        {"attribute": "email", "op": "ends_with", "values": ["@company.com"], "ignore_case": True}]}, actor=actor)
    store.create_segment(env, {"key": "beta-testers", "description": "Asked for early access",
                               "included": ["user-1", "user-2", "user-3"]}, actor=actor)
    store.create_segment(env, {"key": "random-10", "description": "A stable random 10%", "percentage": 10},
                         actor=actor)
    store.create_flag(env, {
        "key": "new-checkout", "description": "The one-page checkout", "tags": ["checkout", "payments"],
        "enabled": True, "rollout": 25, "rules": [
            {"id": "staff", "segments": ["internal", "beta-testers"], "serve": "on"},
            {"id": "free", "segments": [], "conditions": [
                {"attribute": "plan", "op": "in", "values": ["free-tier"]}], "rollout": 50}]}, actor=actor)
    store.create_flag(env, {"key": "checkout-layout", "description": "Three layouts, weighted",
                            "tags": ["checkout"], "variants": ["control", "blue", "green"], "enabled": True,
                            "rollout": {"control": 5000, "blue": 2500, "green": 2500}}, actor="admin:grace")
    store.create_flag(env, {"key": "dark-mode", "description": "Dark theme for the dashboard", "tags": ["ui"]},
                      actor=actor)
    store.create_flag(env, {"key": "search-v2", "description": "The new search ranking", "tags": ["search"]},
                      actor=actor)
    service = RolloutService(store)
    plan = RolloutPlanSchema().load({"guardrails": [{"event": "checkout_completed", "kind": "conversion"},
                                                    {"event": "error", "kind": "error"}], "mode": "hybrid"})
    put_plan(service, env, "search-v2", plan, actor=actor)
    now = time.time()
    act(service, env, "search-v2", "start", actor=actor, now=now - 1800)
    record_split(store, env, "search-v2", control=3800, canary=200, event="checkout_completed",
                 control_rate=0.12, canary_rate=0.125, at=now - 1700)
