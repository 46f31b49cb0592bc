"""The rollout controller: loads plans, gathers their stages' counts, calls the pure
`decide`, and applies what it says through the same versioned writes as a person.

A rollout record's `state` is `{"plan_state": <PlanState dict> | None (a draft),
"flag_stages": [the flag's stage at which the rollout started]}`; the plan's stages
are the flag's stages from there on. Exactly one
controller acts at a time: `run_once` first takes (or renews) a lease in the store.
Time comes in as `now`, so tests drive the clock.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..storage import NotFound, Store, StoreError, StoreUnavailable, VersionConflict
from ..writes import change_flag, read_flag
from .inputs import ArmCounts, RolloutStats, StageStats
from .plan import PlanConfig, RolloutPlan
from .policy import Decision, decide
from .state import PlanState
from .webhooks import WebhookSender

log = logging.getLogger(__name__)

LEASE_NAME = "rollout-controller"
CONTROLLER_ACTOR = "controller"
ACTIVE_STATUSES = ("running", "waiting_for_approval")
WEBHOOK_EVENTS = {
    "start": "rollout.started", "promote": "rollout.promoted", "rollback": "rollout.rolled_back",
    "pause": "rollout.paused", "resume": "rollout.resumed", "abort": "rollout.aborted",
    "wait_for_approval": "rollout.waiting_for_approval", "complete": "rollout.completed",
}
_NUMBER = re.compile(r"[-+−]?\d[\d,.]*%?")


@dataclass(frozen=True, slots=True)
class Rollout:
    """A stored rollout, read: its plan (None before start), bookkeeping and version."""

    environment: str
    flag: str
    config: PlanConfig
    plan_state: PlanState | None
    flag_stages: tuple[int, ...]
    version: int

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Rollout:
        state = record["state"]
        raw = state.get("plan_state")
        return cls(record["environment"], record["flag"], PlanConfig.from_dict(record["plan"]),
                   PlanState.from_dict(raw) if raw is not None else None,
                   tuple(state.get("flag_stages", ())), record["version"])

    @property
    def status(self) -> str:
        return self.plan_state.status if self.plan_state is not None else "draft"

    def state_record(self, plan_state: PlanState | None, flag_stages: tuple[int, ...]) -> dict[str, Any]:
        return {"plan_state": plan_state.to_dict() if plan_state is not None else None,
                "flag_stages": list(flag_stages)}


def stage_percentage(rollout: Any) -> float:
    """A stage's share of users on the last variant; -1 for a weights map (not a canary split)."""
    return float(rollout) if isinstance(rollout, (int, float)) else -1.0


def plan_stages(store: Store, rollout: Rollout) -> list[dict[str, Any]]:
    """The flag's stages that are the plan's, oldest first: those since the rollout
    started at one of the plan's percentages, and the current one whatever it is (when
    a person moved the flag off the plan, `decide` sees the mismatch and pauses)."""
    first = rollout.flag_stages[0] if rollout.flag_stages else None
    since = [s for s in store.list_stages(rollout.environment, rollout.flag) if first is None or s["stage"] >= first]
    planned = {stage.percentage for stage in rollout.config.stages}
    return [s for s in since[:-1] if s["enabled"] and stage_percentage(s["rollout"]) in planned] + since[-1:]


def gather_stats(store: Store, rollout: Rollout, flag: dict[str, Any]) -> RolloutStats:
    """The randomized counts of the plan's stages (`plan_stages`)."""
    stages = {s["stage"]: s for s in plan_stages(store, rollout)}
    numbers = list(stages)
    control, canary = flag["variants"][0], flag["variants"][-1]
    events = [g.event for g in rollout.config.guardrails]

    def arm(counts: dict[str, Any], variant: str) -> ArmCounts:
        population = counts.get(variant, {}).get("randomized", {"exposed": 0, "events": {}})
        return ArmCounts(population["exposed"],
                         {e: population["events"].get(e, {}).get("users", 0) for e in events})

    out = []
    for number in numbers:
        stage = stages[number]
        counts = store.stage_counts(rollout.environment, rollout.flag, number)
        percentage = stage_percentage(stage["rollout"]) if stage["enabled"] else 0.0
        out.append(StageStats(percentage, stage["started_at"], arm(counts, control), arm(counts, canary)))
    return RolloutStats(tuple(out))


def _percent(value: Any) -> float | int:
    """A percentage as the flag stores it: 25, not 25.0."""
    number = float(value)
    return int(number) if number.is_integer() else number


def decision_key(decision: Decision) -> str:
    """What a decision says with its figures left out: holds that only update their
    numbers replace each other in the log instead of piling up."""
    return f"{decision.action}:{decision.state.stage_index}:{_NUMBER.sub('#', decision.reason)}"


class RolloutService:
    """Applies decisions and people's actions to rollouts (shared by the controller,
    the API and the CLI). Raises the store's errors.

    Who wins a race: a promotion yields to anything a person does meanwhile (the
    plan's new state is written first, at its version, and only then the flag); a
    rollback yields to nothing (the flag goes back first, then the plan's state is
    written whatever a person did to it meanwhile)."""

    def __init__(self, store: Store, webhooks: WebhookSender | None = None) -> None:
        self.store = store
        self.webhooks = webhooks

    def load(self, env: str, flag: str) -> Rollout:
        record = self.store.get_rollout(env, flag)
        if record is None:
            raise NotFound("rollout plan", f"{env}/{flag}")
        return Rollout.from_record(record)

    def apply(self, rollout: Rollout, decision: Decision, now: float, actor: str,
              flag_version: int | None = None) -> Rollout:
        """Carry out `decision`: store the new state, move the flag when it says so,
        record the decision, notify. Raises VersionConflict when a promotion (or a
        hold) finds the rollout changed since it was read: a person's change wins."""
        target = decision.numbers.get("target_percentage")
        moves_flag = decision.action in ("promote", "rollback") and target is not None
        if target is not None and decision.action == "rollback":
            return self._roll_back(rollout, decision, float(target), now, actor)
        plan_state = decision.state
        if decision.action == "promote" and plan_state.stage_index == len(rollout.config.stages) - 1:
            plan_state = plan_state.with_status("completed", f"reached {_percent(target)}%", now)
        # A hold only carries the statistics' state forward: the decision log has it, and an
        # audit entry every interval would bury people's changes.
        action = f"rollout.{decision.action}" if decision.action != "hold" else None
        record = self.store.put_rollout(rollout.environment, rollout.flag, rollout.config.to_dict(),
                                        rollout.state_record(plan_state, rollout.flag_stages),
                                        expected_version=rollout.version, actor=actor, action=action)
        if moves_flag:
            try:
                change_flag(self.store, rollout.environment, rollout.flag,
                            {"rollout": _percent(target), "enabled": True}, actor=actor,
                            expected_version=flag_version)
            except VersionConflict:
                # A person changed the flag meanwhile: their change stands, the plan goes
                # back to where it was, and the next look pauses, saying why.
                try:
                    self.store.put_rollout(rollout.environment, rollout.flag, rollout.config.to_dict(),
                                           rollout.state_record(rollout.plan_state, rollout.flag_stages),
                                           expected_version=record["version"], actor=actor, action=None)
                except VersionConflict:
                    pass  # and a person changed the plan too: theirs stands
                raise
        self.record(rollout, decision, now, actor)
        self.notify(rollout, decision, plan_state, now)
        return Rollout.from_record(record)

    def _roll_back(self, rollout: Rollout, decision: Decision, target: float, now: float, actor: str) -> Rollout:
        change_flag(self.store, rollout.environment, rollout.flag, {"rollout": _percent(target), "enabled": True},
                    actor=actor)
        plan_state = decision.state
        while True:
            try:
                record = self.store.put_rollout(rollout.environment, rollout.flag, rollout.config.to_dict(),
                                                rollout.state_record(plan_state, rollout.flag_stages),
                                                expected_version=rollout.version, actor=actor,
                                                action="rollout.rollback")
                break
            except VersionConflict:  # a person acted meanwhile: the flag is back all the same
                rollout = self.load(rollout.environment, rollout.flag)
                if rollout.plan_state is not None:
                    plan_state = rollout.plan_state.with_status("rolled_back", decision.state.status_reason, now)
        self.record(rollout, decision, now, actor)
        self.notify(rollout, decision, plan_state, now)
        return Rollout.from_record(record)

    def record(self, rollout: Rollout, decision: Decision, now: float, actor: str) -> None:
        key = decision_key(decision)
        last = self.store.list_decisions(rollout.environment, rollout.flag, limit=1)
        replace_last = bool(last) and decision.action == "hold" and last[0].get("key") == key
        self.store.record_decision(rollout.environment, rollout.flag, {
            "at": now, "action": decision.action, "reason": decision.reason, "numbers": decision.numbers,
            "stage_index": decision.state.stage_index, "key": key, "actor": actor,
        }, replace_last=replace_last)

    def notify(self, rollout: Rollout, decision: Decision, plan_state: PlanState, now: float) -> None:
        """Tell the webhooks about promotions, rollbacks, pauses, waits, completions and
        anything `decide` asks to be told (a stage held too long)."""
        if self.webhooks is None:
            return
        if plan_state.status == "completed" and decision.action in ("promote", "complete"):
            event = "rollout.completed"
        elif decision.action in WEBHOOK_EVENTS:
            event = WEBHOOK_EVENTS[decision.action]
        elif decision.notify:
            event = "rollout.notice"
        else:
            return
        self.webhooks.send(event, {"environment": rollout.environment, "flag": rollout.flag, "at": now,
                                   "action": decision.action, "reason": decision.reason,
                                   "status": plan_state.status, "stage_index": plan_state.stage_index,
                                   "percentage": decision.numbers.get("target_percentage"),
                                   "numbers": decision.numbers})

    def tick(self, rollout: Rollout, now: float) -> Decision | None:
        """One evaluation of an active rollout; None when there is nothing to do."""
        if rollout.plan_state is None or rollout.status not in ACTIVE_STATUSES:
            return None
        flag = read_flag(self.store, rollout.environment, rollout.flag)
        stats = gather_stats(self.store, rollout, flag)
        decision = decide(RolloutPlan(rollout.config, rollout.plan_state), stats, now)
        self.apply(rollout, decision, now, CONTROLLER_ACTOR, flag_version=flag["version"])
        return decision


class Controller:
    """Ticks every due rollout, as the one holder of the controller lease."""

    def __init__(self, store: Store, *, webhooks: WebhookSender | None = None, lease_ttl: float = 15.0,
                 holder: str | None = None) -> None:
        self.service = RolloutService(store, webhooks)
        self.store = store
        self.lease_ttl = lease_ttl
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def run_once(self, now: float) -> list[tuple[str, str, Decision]] | None:
        """Tick every rollout due at `now`. None when another controller holds the lease."""
        if not self.store.acquire_lease(LEASE_NAME, self.holder, self.lease_ttl, now=now):
            return None
        done = []
        for record in self.store.list_rollouts():
            try:
                rollout = Rollout.from_record(record)
                state = rollout.plan_state
                if state is None or rollout.status not in ACTIVE_STATUSES:
                    continue
                if state.last_tick_at is not None and now - state.last_tick_at < rollout.config.interval_seconds:
                    continue
                decision = self.service.tick(rollout, now)
                if decision is not None:
                    done.append((rollout.environment, rollout.flag, decision))
            except VersionConflict:
                log.info("rollout %s/%s changed while deciding; re-read at the next tick",
                         record["environment"], record["flag"])
            except StoreUnavailable:
                raise
            except Exception:  # one broken (or just deleted) rollout must not stop the others
                log.exception("rollout %s/%s: tick failed", record.get("environment"), record.get("flag"))
        return done

    def run_forever(self, stop: threading.Event, clock: Callable[[], float], poll_seconds: float = 1.0) -> None:
        """Tick until `stop` is set; storage outages are logged and retried."""
        while not stop.is_set():
            try:
                self.run_once(clock())
            except StoreError as exc:
                log.warning("rollout controller: storage unavailable (%s); retrying", exc)
            except Exception:
                log.exception("rollout controller: tick failed")
            stop.wait(poll_seconds)
        self.store.release_lease(LEASE_NAME, self.holder)
