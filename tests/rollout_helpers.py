"""Shared by the rollout tests: plans through the API, and simulated users bucketed by
the real engine whose exposures and conversions go straight into the store.

`Traffic` makes each visit's users new (u1, u2, ...), evaluates them with
`flagsdk.Snapshot` on the store's current config document (the same engine the
SDK runs), and converts each arm at an exact rate: the k-th user of an arm
converts when floor(k * rate) grows. Rates are therefore met to within one user
and a test never depends on luck.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from flagsdk import Snapshot
from flask.testing import FlaskClient

from flagserver.storage.events import Conversion, Exposure

PLAN = "/api/v1/envs/{env}/flags/{key}/rollout-plan"
CHECKOUT = {"event": "checkout", "kind": "conversion"}
ERRORS = {"event": "error", "kind": "error"}


class Clock:
    """An injected clock: the app's CLOCK (people's actions) and the controller's `now`."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now


def plan_url(key: str = "f", env: str = "production", action: str | None = None) -> str:
    url = PLAN.format(env=env, key=key)
    return f"{url}/{action}" if action else url


def put_plan(client: FlaskClient, headers: dict[str, str], key: str = "f", env: str = "production",
             **plan: Any) -> dict[str, Any]:
    """PUT a plan (guardrails default to checkout); asserts it was stored."""
    body = {"guardrails": [CHECKOUT], **plan}
    response = client.put(plan_url(key, env), json=body, headers=headers)
    assert response.status_code in (200, 201), response.get_data(as_text=True)
    return response.get_json()  # type: ignore[no-any-return]


def act(client: FlaskClient, headers: dict[str, str], action: str, key: str = "f", env: str = "production",
        status: int = 200) -> dict[str, Any]:
    """POST an action; asserts the status and returns the body."""
    response = client.post(plan_url(key, env, action), headers=headers)
    assert response.status_code == status, (action, response.status_code, response.get_data(as_text=True))
    return response.get_json()  # type: ignore[no-any-return]


class Traffic:
    """New users visiting a flag; see the module docstring. `rates` maps an arm (variant)
    to its conversion rate for `event`; `error_rates` likewise for `error_event`.
    `lose_canary` drops that share of the canary's exposures (and their events), as a
    canary that crashes before it reports would."""

    def __init__(self, store: Any, flag: str = "f", env: str = "production", *, event: str = "checkout",
                 rates: Mapping[str, float] | None = None, error_event: str = "error",
                 error_rates: Mapping[str, float] | None = None, lose_canary: float = 0.0) -> None:
        self.store = store
        self.flag = flag
        self.env = env
        self.event = event
        self.rates = dict(rates or {"off": 0.3, "on": 0.3})
        self.error_event = error_event
        self.error_rates = dict(error_rates or {})
        self.lose_canary = lose_canary
        self.users = 0
        self.seen: Counter[str] = Counter()
        self.converted: Counter[str] = Counter()
        self.errored: Counter[str] = Counter()
        self.lost = 0
        self.served_before = 0  # canary users served in earlier visits

    def snapshot(self) -> Snapshot:
        return Snapshot.from_dict(self.store.config_document(self.env))

    def visit(self, count: int, at: float) -> Counter[str]:
        """`count` new users see the flag at `at` (and convert a second later); one batch.
        Returns how many of them each variant got."""
        snapshot = self.snapshot()
        exposures: list[Exposure] = []
        conversions: list[Conversion] = []
        served: Counter[str] = Counter()
        for _ in range(count):
            self.users += 1
            user = f"u{self.users}"
            result = snapshot.evaluate(self.flag, {"key": user})
            arm = str(result.variant)
            served[arm] += 1
            if arm == "on" and _crosses(served[arm] + self.served_before, self.lose_canary, self.lost):
                self.lost += 1
                continue
            self.seen[arm] += 1
            exposures.append(Exposure(self.flag, arm, result.rule_id, result.reason, result.randomized,
                                      int(result.flag_version or 0), user, at))
            if _crosses(self.seen[arm], self.rates.get(arm, 0.0), self.converted[arm]):
                self.converted[arm] += 1
                conversions.append(Conversion(self.event, user, None, at + 1))
            if _crosses(self.seen[arm], self.error_rates.get(arm, 0.0), self.errored[arm]):
                self.errored[arm] += 1
                conversions.append(Conversion(self.error_event, user, None, at + 1))
        self.served_before += served["on"]
        assert self.store.record_events(self.env, uuid.uuid4().hex, exposures, conversions) is True
        return served


def _crosses(seen: int, rate: float, done: int) -> bool:
    return int(seen * rate + 1e-9) > done


def run_until(controller: Any, traffic: Traffic, clock: Clock, done: Callable[[], bool], *, users: int = 1000,
              interval: float = 60.0, ticks: int = 100) -> None:
    """Each interval `users` new users visit and the controller looks, until `done()`;
    fails after `ticks` intervals."""
    for _ in range(ticks):
        clock.now += interval
        traffic.visit(users, clock.now - 1)
        assert controller.run_once(clock.now) is not None
        if done():
            return
    raise AssertionError(f"not done after {ticks} ticks")
