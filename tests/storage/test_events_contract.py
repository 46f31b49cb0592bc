"""The events contract (flagserver/storage/events.py): rollout stages, exposures and
conversions, counted exactly, run against every backend.

Rules these tests pin (the protocol's docstring states them too):

- stage 1 starts at version 1 with the flag, in every environment (and in an
  environment created later); a write changing `rollout` or `enabled` in an
  environment starts the next stage there at the new version; nothing else does;
- an exposure counts in the stage with the largest start_version at or below its
  flag_version (stage 1 below that); exposures of a deleted flag are skipped;
- a batch is applied in time order, exposures before conversions at equal times;
- a user's arm and population come from their first recorded exposure in the
  stage; another variant later marks them mixed, once; their exposure time is
  the earliest recorded;
- a conversion counts in every stage of the environment where its user was exposed
  at or before it: once per user and event for `users`, every time for `value_sum`;
- a batch id counts once per environment (False the second time); a batch that
  raises counts nothing and leaves its id unused.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from uuid import uuid4

import pytest

from flagserver.storage import NotFound, Store
from flagserver.storage.base import Record
from flagserver.storage.events import Conversion, EventStore, Exposure


class Backend(Store, EventStore, Protocol):
    pass


T0 = 1_700_000_000.0
FLAG = "new-checkout"
LAYOUT: Record = {
    "key": "checkout-layout",
    "variants": ["control", "blue", "green"],
    "enabled": True,
    "rollout": {"control": 5000, "blue": 2500, "green": 2500},
}


# helpers


def given_flag(store: Backend, key: str = FLAG, **fields: Any) -> Record:
    """production and staging (unless there), and `key` created in production, enabled at 50%."""
    for env in ("production", "staging"):
        if store.get_environment(env) is None:
            store.create_environment(env, env.capitalize(), actor="setup")
    return store.create_flag("production", {"key": key, "enabled": True, "rollout": 50, **fields}, actor="setup")


def update(store: Backend, changes: Record, env: str = "production", key: str = FLAG) -> Record:
    current = store.get_flag(env, key)
    assert current is not None
    return store.update_flag(env, key, changes, expected_version=current["version"], actor="setup")


def exposure(user: str, variant: str = "on", *, flag: str = FLAG, version: int = 1, at: float = T0,
             rule_id: str | None = None, reason: str = "SPLIT", randomized: bool = True) -> Exposure:
    return Exposure(flag=flag, variant=variant, rule_id=rule_id, reason=reason, randomized=randomized,
                    flag_version=version, user=user, at=at)


def targeted(user: str, variant: str = "on", **kwargs: Any) -> Exposure:
    """Served by a rule: all, never randomized."""
    return exposure(user, variant, rule_id="staff", reason="TARGETING_MATCH", randomized=False, **kwargs)


def conversion(user: str, event: str = "checkout", *, value: float | None = None, at: float = T0 + 1) -> Conversion:
    return Conversion(event=event, user=user, value=value, at=at)


def record(store: Backend, exposures: Sequence[Exposure] = (), conversions: Sequence[Conversion] = (),
           env: str = "production", batch_id: str | None = None) -> bool:
    return store.record_events(env, batch_id or uuid4().hex, list(exposures), list(conversions))


def counts(store: Backend, stage: int = 1, env: str = "production", key: str = FLAG) -> dict[str, Any]:
    return store.stage_counts(env, key, stage)


def empty() -> dict[str, Any]:
    return {"exposed": 0, "mixed": 0, "events": {}}


def population(exposed: int, mixed: int = 0, **events: tuple[int, float]) -> dict[str, Any]:
    """Expected counts of one population: `checkout=(users, value_sum)`."""
    return {"exposed": exposed, "mixed": mixed,
            "events": {name: {"users": users, "value_sum": value_sum} for name, (users, value_sum) in events.items()}}


def stage_numbers(store: Backend, env: str = "production", key: str = FLAG) -> list[tuple[int, int]]:
    return [(s["stage"], s["start_version"]) for s in store.list_stages(env, key)]


# stages


def test_a_flag_starts_with_stage_1_at_version_1_in_every_environment(store: Backend) -> None:
    t0 = time.time()
    given_flag(store, rollout=25)
    t1 = time.time()

    (production,) = store.list_stages("production", FLAG)
    (staging,) = store.list_stages("staging", FLAG)

    assert set(production) == {"stage", "start_version", "started_at", "rollout", "enabled"}
    assert (production["stage"], production["start_version"], production["rollout"], production["enabled"]) == (
        1, 1, 25, True)
    assert (staging["stage"], staging["start_version"], staging["rollout"], staging["enabled"]) == (1, 1, 0, False)
    for stage in (production, staging):
        assert isinstance(stage["started_at"], float) and t0 <= stage["started_at"] <= t1


def test_a_new_environment_gives_every_flag_its_stage_1(store: Backend) -> None:
    given_flag(store)
    store.create_flag("production", LAYOUT, actor="setup")
    update(store, {"rollout": 75})

    store.create_environment("qa", "QA", actor="setup")

    assert [(s["stage"], s["start_version"], s["rollout"], s["enabled"]) for s in store.list_stages("qa", FLAG)] == [
        (1, 1, 0, False)]
    assert [s["rollout"] for s in store.list_stages("qa", "checkout-layout")] == [{"control": 10000}]


def test_only_changes_of_rollout_or_enabled_start_a_stage_and_only_where_they_happen(store: Backend) -> None:
    given_flag(store)  # version 1, stage 1
    store.create_segment("production", {"key": "internal", "included": ["u1"]}, actor="setup")

    update(store, {"description": "global field: version 2 everywhere"})
    update(store, {"rules": [{"id": "staff", "segments": ["internal"], "serve": "on"}]})  # 3
    update(store, {"rollout": 50.0})  # the same percentage: 4
    assert stage_numbers(store) == [(1, 1)]

    t0 = time.time()
    update(store, {"rollout": 75})  # 5
    t1 = time.time()
    update(store, {"owner": "payments"})  # 6
    update(store, {"enabled": False})  # 7
    update(store, {"enabled": False})  # 8: unchanged
    update(store, {"enabled": True, "rollout": 100})  # 9: one write, one stage

    stages = store.list_stages("production", FLAG)
    assert [(s["stage"], s["start_version"], s["rollout"], s["enabled"]) for s in stages] == [
        (1, 1, 50, True), (2, 5, 75, True), (3, 7, 75, False), (4, 9, 100, True)]
    assert t0 <= stages[1]["started_at"] <= t1
    assert [s["started_at"] for s in stages] == sorted(s["started_at"] for s in stages)
    # staging saw the global changes (its version moved) but no rollout change
    assert store.get_flag("staging", FLAG)["version"] == 3  # type: ignore[index]
    assert stage_numbers(store, "staging") == [(1, 1)]


def test_reordering_weights_starts_a_stage_because_the_order_decides_the_buckets(store: Backend) -> None:
    given_flag(store)
    store.create_flag("production", LAYOUT, actor="setup")

    update(store, {"rollout": {"blue": 2500, "control": 5000, "green": 2500}}, key="checkout-layout")
    update(store, {"rollout": {"blue": 2500, "control": 5000, "green": 2500}}, key="checkout-layout")

    stages = store.list_stages("production", "checkout-layout")
    assert [(s["stage"], s["start_version"]) for s in stages] == [(1, 1), (2, 2)]
    assert list(stages[1]["rollout"]) == ["blue", "control", "green"]


def test_stage_reads_raise_not_found_for_an_unknown_environment_flag_or_stage(store: Backend) -> None:
    given_flag(store)

    with pytest.raises(NotFound) as info:
        store.list_stages("nope", FLAG)
    assert info.value.kind == "environment"
    with pytest.raises(NotFound) as info:
        store.list_stages("production", "nope")
    assert info.value.kind == "flag"
    with pytest.raises(NotFound) as info:
        store.stage_counts("nope", FLAG, 1)
    assert info.value.kind == "environment"
    with pytest.raises(NotFound) as info:
        store.stage_counts("production", "nope", 1)
    assert info.value.kind == "flag"
    with pytest.raises(NotFound) as info:
        store.stage_counts("production", FLAG, 2)
    assert info.value.kind == "stage"
    with pytest.raises(NotFound) as info:
        record(store, [exposure("u1")], env="nope")
    assert info.value.kind == "environment"


def test_a_stage_with_no_exposure_has_no_arms(store: Backend) -> None:
    given_flag(store)
    assert counts(store) == {}
    assert counts(store, env="staging") == {}


# exposures


def test_exposures_count_distinct_users_per_arm_and_a_changed_variant_as_mixed_once(store: Backend) -> None:
    given_flag(store)

    assert record(store, [
        exposure("u1", "on"), exposure("u1", "on", at=T0 + 1),  # the same user twice: one
        exposure("u2", "on"), exposure("u3", "off"),
        exposure("u4", "off"), exposure("u4", "on", at=T0 + 2), exposure("u4", "on", at=T0 + 3),  # mixed once
    ])
    assert record(store, [exposure("u4", "off", at=T0 + 4), exposure("u2", "off", at=T0 + 5),
                          exposure("u2", "on", at=T0 + 6)])

    assert counts(store) == {
        "on": {"all": population(2, mixed=1), "randomized": population(2, mixed=1)},
        "off": {"all": population(2, mixed=1), "randomized": population(2, mixed=1)},
    }


def test_the_first_exposure_decides_the_arm_even_when_it_arrives_in_a_later_batch(store: Backend) -> None:
    given_flag(store)

    record(store, [exposure("u1", "on", at=T0 + 10)])
    record(store, [exposure("u1", "off", at=T0 + 5)])  # earlier in time, but recorded second

    assert counts(store) == {"on": {"all": population(1, mixed=1), "randomized": population(1, mixed=1)}}


def test_only_the_flags_own_split_is_randomized_and_the_first_exposure_decides_the_population(store: Backend) -> None:
    given_flag(store)

    record(store, [
        exposure("split"),
        exposure("rule-split", rule_id="free"),  # a rule's own split: another randomisation
        targeted("staff"),
        exposure("not-random", randomized=False, reason="DEFAULT"),
        targeted("targeted-then-split", at=T0), exposure("targeted-then-split", at=T0 + 1),
        exposure("split-then-targeted", at=T0), targeted("split-then-targeted", "off", at=T0 + 1),
    ])
    record(store, conversions=[conversion(user, value=2.0, at=T0 + 5) for user in (
        "split", "rule-split", "staff", "targeted-then-split", "split-then-targeted")])

    assert counts(store) == {"on": {
        "all": population(6, mixed=1, checkout=(5, 10.0)),
        "randomized": population(2, mixed=1, checkout=(2, 4.0)),
    }}


def test_an_arm_with_no_randomized_user_shows_an_empty_randomized_population(store: Backend) -> None:
    given_flag(store)
    record(store, [targeted("staff"), exposure("u1", "off")], [conversion("staff", "signup")])
    assert counts(store) == {
        "on": {"all": population(1, signup=(1, 0.0)), "randomized": empty()},
        "off": {"all": population(1), "randomized": population(1)},
    }


# conversions


def test_a_conversion_counts_only_at_or_after_the_users_exposure(store: Backend) -> None:
    given_flag(store)

    record(store, [exposure("u1", at=T0 + 10), exposure("u2", at=T0 + 10)],
           [conversion("u1", at=T0 + 9),  # before: not attributed
            conversion("u2", at=T0 + 10),  # at the same time: counted
            conversion("never-exposed", at=T0 + 20)])
    assert counts(store)["on"]["all"]["events"] == {"checkout": {"users": 1, "value_sum": 0.0}}

    record(store, conversions=[conversion("u1", at=T0 + 11)])  # later: now counted
    assert counts(store)["on"]["all"]["events"] == {"checkout": {"users": 2, "value_sum": 0.0}}


def test_users_count_once_per_event_and_every_value_adds_to_the_sum(store: Backend) -> None:
    given_flag(store)
    record(store, [exposure("u1", "on"), exposure("u2", "on"), exposure("u3", "off")])

    record(store, conversions=[
        conversion("u1", value=49.5), conversion("u1", value=10.25), conversion("u1", value=None),
        conversion("u2", value=None), conversion("u2", "refund", value=-5.0),
        conversion("u3", value=1.0),
    ])
    record(store, conversions=[conversion("u1", value=0.25), conversion("u2", value=None)])

    on = population(2, checkout=(2, 60.0), refund=(1, -5.0))
    off = population(1, checkout=(1, 1.0))
    assert counts(store) == {"on": {"all": on, "randomized": on}, "off": {"all": off, "randomized": off}}
    assert isinstance(counts(store)["on"]["all"]["events"]["refund"]["value_sum"], float)


def test_a_batch_is_applied_in_time_order_with_exposures_before_conversions_at_equal_times(store: Backend) -> None:
    given_flag(store)

    assert record(store,
                  [exposure("late-in-list", at=T0 + 5), exposure("tie", at=T0 + 5),
                   exposure("later", at=T0 + 7), exposure("mixed", "off", at=T0 + 2), exposure("mixed", "on", at=T0)],
                  [conversion("late-in-list", at=T0 + 6),
                   conversion("tie", at=T0 + 5),  # at its exposure's time: after it
                   conversion("later", at=T0 + 6)])  # before its exposure in time: not attributed

    assert counts(store) == {"on": {
        "all": population(4, mixed=1, checkout=(2, 0.0)),
        "randomized": population(4, mixed=1, checkout=(2, 0.0)),
    }}


def test_a_conversion_counts_in_every_flag_and_stage_the_user_saw_before_it_in_that_environment(store: Backend) -> None:
    given_flag(store)
    store.create_flag("production", LAYOUT, actor="setup")
    record(store, [exposure("u1", "on", version=1, at=T0)])  # stage 1
    update(store, {"rollout": 75})  # stage 2 from version 2
    record(store, [exposure("u1", "on", version=2, at=T0 + 1),
                   exposure("u1", "blue", flag="checkout-layout", at=T0 + 2),
                   exposure("u1", "off", flag=FLAG, version=2, at=T0 + 20)])  # after the conversion: still stage 2's
    record(store, [exposure("u1", "on", at=T0 + 3)], env="staging")

    record(store, conversions=[conversion("u1", "buy", value=3.0, at=T0 + 10)])

    bought = {"buy": {"users": 1, "value_sum": 3.0}}
    assert counts(store, 1)["on"]["all"]["events"] == bought
    assert counts(store, 2)["on"]["all"]["events"] == bought
    assert counts(store, 2)["on"]["all"]["mixed"] == 1
    assert counts(store, 1, key="checkout-layout")["blue"]["randomized"]["events"] == bought
    # staging is another environment: the production conversion is not its evidence
    assert counts(store, env="staging") == {"on": {"all": population(1), "randomized": population(1)}}


def test_an_exposure_delivered_late_with_an_earlier_time_lets_later_conversions_count(store: Backend) -> None:
    given_flag(store)
    record(store, [exposure("u1", "on", at=T0 + 10)])
    record(store, conversions=[conversion("u1", at=T0 + 7)])  # before the only exposure known
    assert counts(store)["on"]["all"]["events"] == {}

    record(store, [exposure("u1", "on", at=T0 + 5)])  # the SDK's buffer, delivered after an outage
    record(store, conversions=[conversion("u1", at=T0 + 7, value=1.0)])

    assert counts(store)["on"]["all"] == population(1, checkout=(1, 1.0))


# stages and versions


def test_an_exposure_counts_in_the_stage_of_its_flag_version_however_late_it_arrives(store: Backend) -> None:
    given_flag(store)  # stage 1: version 1
    update(store, {"rollout": 60})  # stage 2: versions 2-3
    update(store, {"description": "no new stage"})  # 3
    update(store, {"rollout": 70})  # stage 3: versions 4-
    assert stage_numbers(store) == [(1, 1), (2, 2), (3, 4)]

    record(store, [
        exposure("v0", version=0),  # older than any stage: stage 1
        exposure("v1", version=1),
        exposure("v2", version=2), exposure("v3", version=3),
        exposure("v4", version=4), exposure("v99", version=99),  # newer than the flag knows: the last stage
    ])

    def exposed(stage: int) -> int:
        return sum(arm["all"]["exposed"] for arm in counts(store, stage).values())

    assert [exposed(1), exposed(2), exposed(3)] == [2, 2, 2]


def test_stages_count_users_separately(store: Backend) -> None:
    given_flag(store)
    record(store, [exposure("u1", "off", version=1)])
    update(store, {"rollout": 100})
    record(store, [exposure("u1", "on", version=2)])  # a new stage: a new first exposure, not mixed

    assert counts(store, 1) == {"off": {"all": population(1), "randomized": population(1)}}
    assert counts(store, 2) == {"on": {"all": population(1), "randomized": population(1)}}


# batches


def test_a_repeated_batch_id_counts_once_per_environment(store: Backend) -> None:
    given_flag(store)
    store.update_flag("staging", FLAG, {"enabled": True}, expected_version=1, actor="setup")
    batch = [exposure("u1"), exposure("u2", "off")], [conversion("u1", value=5.0)]

    assert store.record_events("production", "batch-0001", *batch) is True
    assert store.record_events("production", "batch-0001", *batch) is False
    assert store.record_events("production", "batch-0001", [exposure("u3")], []) is False
    assert store.record_events("staging", "batch-0001", *batch) is True  # another environment's ids

    expected = {"on": {"all": population(1, checkout=(1, 5.0)), "randomized": population(1, checkout=(1, 5.0))},
                "off": {"all": population(1), "randomized": population(1)}}
    assert counts(store) == expected
    assert counts(store, env="staging") == expected


def test_an_empty_batch_is_recorded_and_its_id_remembered(store: Backend) -> None:
    given_flag(store)
    assert store.record_events("production", "empty-batch", [], []) is True
    assert store.record_events("production", "empty-batch", [exposure("u1")], []) is False
    assert counts(store) == {}


def test_a_batch_with_a_time_that_is_not_finite_counts_nothing_and_leaves_its_id_unused(store: Backend) -> None:
    given_flag(store)
    good = [exposure("u1"), exposure("u2", "off")], [conversion("u1", value=2.0)]

    for bad_conversion in (conversion("u2", at=math.nan), conversion("u2", at=math.inf),
                           conversion("u2", value=math.nan)):
        with pytest.raises(ValueError):
            store.record_events("production", "batch-0001", good[0], [*good[1], bad_conversion])
    with pytest.raises(ValueError):
        store.record_events("production", "batch-0001", [*good[0], exposure("u3", at=-math.inf)], good[1])
    assert counts(store) == {}

    assert store.record_events("production", "batch-0001", *good) is True
    assert counts(store)["on"]["all"] == population(1, checkout=(1, 2.0))


def test_a_batch_that_fails_midway_counts_nothing(store: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given counts already there, and a batch whose seventh exposure blows up when read
    given_flag(store)
    record(store, [exposure("u1"), exposure("u2", "off")], [conversion("u1", value=1.0)])
    before = counts(store)
    comparable = Exposure.comparable

    def exploding(self: Exposure) -> bool:
        if self.user == "boom":
            raise RuntimeError("boom")
        return comparable.fget(self)  # type: ignore[attr-defined, no-any-return]

    monkeypatch.setattr(Exposure, "comparable", property(exploding))
    batch = ([exposure(f"new{i}", at=T0 + i) for i in range(6)] + [exposure("boom", at=T0 + 50),
                                                                     exposure("u1", "off", at=T0 + 1)],
             [conversion("u1", value=5.0, at=T0 + 10), conversion("new1", "signup", at=T0 + 10)])

    # When it is recorded, it raises
    with pytest.raises(RuntimeError, match="boom"):
        store.record_events("production", "batch-0002", *batch)

    # Then nothing of it counted, and its id is still free
    assert counts(store) == before
    monkeypatch.setattr(Exposure, "comparable", comparable)
    assert store.record_events("production", "batch-0002", *batch) is True
    assert counts(store)["on"]["all"] == population(8, mixed=1, checkout=(1, 6.0), signup=(1, 0.0))


def test_exposures_of_a_deleted_flag_are_skipped_and_the_rest_counts(store: Backend) -> None:
    given_flag(store)
    given_flag(store, "old-flag")
    store.delete_flag("production", "old-flag", expected_version=None, actor="setup")

    assert record(store, [exposure("u1", flag="old-flag"), exposure("u2")], [conversion("u1"), conversion("u2")])

    assert counts(store) == {"on": {"all": population(1, checkout=(1, 0.0)),
                                    "randomized": population(1, checkout=(1, 0.0))}}


def test_deleting_a_flag_deletes_its_stages_and_counts(store: Backend) -> None:
    given_flag(store)
    record(store, [exposure("u1")], [conversion("u1")])
    update(store, {"rollout": 80})
    record(store, [exposure("u1", version=2)], [conversion("u1", at=T0 + 5)])

    store.delete_flag("production", FLAG, expected_version=None, actor="setup")
    with pytest.raises(NotFound):
        store.list_stages("production", FLAG)
    with pytest.raises(NotFound):
        store.stage_counts("production", FLAG, 1)

    # a new flag of the same key starts from nothing
    given_flag(store)
    assert stage_numbers(store) == [(1, 1)]
    assert counts(store) == {}
    record(store, conversions=[conversion("u1", at=T0 + 9)])  # u1's old exposures are gone with the old flag
    record(store, [exposure("u1", "off", at=T0 + 10)])
    assert counts(store) == {"off": {"all": population(1), "randomized": population(1)}}


def test_batches_recorded_concurrently_all_count_exactly_once(store: Backend) -> None:
    # Given four writers (threads, as two web workers would be) sending batches about the same users
    given_flag(store)
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def send(writer: int) -> None:
        try:
            barrier.wait(timeout=10)
            for n in range(5):
                exposures = [exposure(f"u{i}", ("off", "on")[writer % 2], at=T0 + writer) for i in range(40)]
                conversions = [conversion(f"u{i}", value=1.0, at=T0 + 10) for i in range(0, 40, 4)]
                store.record_events("production", f"writer-{writer}-{n}", exposures, conversions)
                store.record_events("production", f"writer-{writer}-{n}", exposures, conversions)  # a resend
        except BaseException as exc:  # handed to the test
            errors.append(exc)

    # When they all send at once
    threads = [threading.Thread(target=send, args=(w,), name=f"writer-{w}") for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    # Then each user counts once, in one arm, mixed once, and every conversion's value once
    assert errors == [] and not any(thread.is_alive() for thread in threads)
    result = counts(store)
    assert sum(arm["all"]["exposed"] for arm in result.values()) == 40
    assert sum(arm["all"]["mixed"] for arm in result.values()) == 40
    assert sum(arm["all"]["events"]["checkout"]["users"] for arm in result.values()) == 10
    assert sum(arm["all"]["events"]["checkout"]["value_sum"] for arm in result.values()) == 4 * 5 * 10


# exact counts against a model


@dataclass
class _User:
    arm: str
    randomized: bool
    mixed: bool
    first_at: float


@dataclass
class Model:
    """The rules of events.py written out plainly, one environment."""

    stages: dict[str, list[int]] = field(default_factory=dict)  # flag -> start version of each stage
    seen: dict[tuple[str, int, str], _User] = field(default_factory=dict)  # (flag, stage, user)
    by_user: defaultdict[str, list[tuple[str, int, str]]] = field(default_factory=lambda: defaultdict(list))
    converted: set[tuple[str, int, str, str]] = field(default_factory=set)
    counts: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    batches: set[str] = field(default_factory=set)

    def stage_of(self, flag: str, version: int) -> int:
        starts = self.stages[flag]
        return max([i + 1 for i, start in enumerate(starts) if start <= version], default=1)

    def population(self, flag: str, stage: int, user: _User) -> list[dict[str, Any]]:
        arms = self.counts.setdefault((flag, stage), {})
        arm = arms.setdefault(user.arm, {"all": empty(), "randomized": empty()})
        return [arm["all"], arm["randomized"]] if user.randomized else [arm["all"]]

    def record(self, batch_id: str, exposures: list[Exposure], conversions: list[Conversion]) -> bool:
        if batch_id in self.batches:
            return False
        self.batches.add(batch_id)
        timeline = [(e.at, 0, i, e) for i, e in enumerate(exposures)] + [
            (c.at, 1, i, c) for i, c in enumerate(conversions)]
        for _, _, _, event in sorted(timeline, key=lambda item: item[:3]):
            if isinstance(event, Exposure):
                key = (event.flag, self.stage_of(event.flag, event.flag_version), event.user)
                user = self.seen.get(key)
                if user is None:
                    user = self.seen[key] = _User(event.variant, event.comparable, False, event.at)
                    self.by_user[event.user].append(key)
                    for counts in self.population(key[0], key[1], user):
                        counts["exposed"] += 1
                    continue
                if event.variant != user.arm and not user.mixed:
                    user.mixed = True
                    for counts in self.population(key[0], key[1], user):
                        counts["mixed"] += 1
                user.first_at = min(user.first_at, event.at)
            else:
                for key in self.by_user[event.user]:
                    user = self.seen[key]
                    if user.first_at > event.at:
                        continue
                    first = (*key, event.event) not in self.converted
                    self.converted.add((*key, event.event))
                    for counts in self.population(key[0], key[1], user):
                        entry = counts["events"].setdefault(event.event, {"users": 0, "value_sum": 0.0})
                        entry["users"] += first
                        entry["value_sum"] += event.value or 0.0
        return True


def test_counts_are_exact_against_a_plain_model_of_the_rules(store: Backend) -> None:
    # Given two flags whose rollouts change between batches
    rng = random.Random(20261127)
    given_flag(store, rollout=10)
    store.create_flag("production", LAYOUT, actor="setup")
    variants = {FLAG: ["off", "on"], "checkout-layout": ["control", "blue", "green"]}
    model = Model(stages={FLAG: [1], "checkout-layout": [1]})
    versions = {FLAG: 1, "checkout-layout": 1}
    users = [f"user-{i:03d}" for i in range(250)]
    sent: list[tuple[str, list[Exposure], list[Conversion]]] = []

    # When ~4,000 events arrive in 24 batches: late versions, ties, repeats, resent batches
    for batch_number in range(24):
        if batch_number % 4 == 3:
            flag = rng.choice(list(variants))
            changes = {"rollout": rng.choice([20, 30, 60])} if flag == FLAG else {
                "rollout": dict(zip(variants[flag], rng.choice([[4000, 3000, 3000], [2000, 4000, 4000]]), strict=True))}
            changes = rng.choice([changes, {"description": f"no stage {batch_number}"}])
            versions[flag] = update(store, changes, key=flag)["version"]
            model.stages[flag] = [s["start_version"] for s in store.list_stages("production", flag)]
        if sent and rng.random() < 0.2:
            batch_id, exposures, conversions = rng.choice(sent)  # a resend
        else:
            exposures, conversions = [], []
            for _ in range(rng.randint(80, 220)):
                flag = rng.choice(list(variants))
                kind = rng.random()
                exposures.append(Exposure(
                    flag=flag, variant=rng.choice(variants[flag]),
                    rule_id=None if kind < 0.7 else rng.choice(["staff", "free"]),
                    reason="SPLIT" if kind < 0.85 else "TARGETING_MATCH", randomized=kind < 0.85,
                    flag_version=rng.randint(0, versions[flag] + 1), user=rng.choice(users),
                    at=T0 + rng.randint(0, 400)))
            for _ in range(rng.randint(10, 60)):
                conversions.append(Conversion(
                    event=rng.choice(["checkout", "error"]), user=rng.choice(users),
                    value=rng.choice([None, 1.0, 2.5, 10.25, -3.0]), at=T0 + rng.randint(0, 400)))
            batch_id = f"batch-{batch_number:04d}"
            sent.append((batch_id, exposures, conversions))
        assert store.record_events("production", batch_id, exposures, conversions) == model.record(
            batch_id, exposures, conversions)

    # Then every stage's counts are exactly the model's
    assert sum(len(e) + len(c) for _, e, c in sent) > 3_000
    compared = 0
    for flag in variants:
        for stage in store.list_stages("production", flag):
            expected = model.counts.get((flag, stage["stage"]), {})
            assert store.stage_counts("production", flag, stage["stage"]) == expected, (flag, stage["stage"])
            compared += sum(arm["all"]["exposed"] for arm in expected.values())
    assert compared == len(model.seen)
    assert any(user.mixed for user in model.seen.values()) and len(model.converted) > 100
