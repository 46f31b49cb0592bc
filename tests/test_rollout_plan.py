"""The rollout plan: defaults, validation that names each bad field (through the
schema and through the app's error handler), and round trips."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask, jsonify, request
from marshmallow import ValidationError

from flagserver import errors
from flagserver.rollout import (
    Guardrail,
    PlanConfig,
    PlanError,
    PlanState,
    RolloutPlan,
    RolloutPlanSchema,
    Stage,
    StageMark,
    StateError,
)
from flagserver.rollout.plan import default_margin

CONV = {"event": "checkout_completed", "kind": "conversion"}


def test_defaults():
    config = RolloutPlanSchema().load({"guardrails": [CONV, {"event": "error", "kind": "error"}]})

    assert isinstance(config, PlanConfig)
    assert [s.percentage for s in config.stages] == [5, 25, 50, 100]
    assert [s.margin for s in config.stages[:3]] == [0.30, 0.15, 0.10]
    assert {s.min_duration_seconds for s in config.stages} == {600}  # 10 intervals of 60 s
    assert {s.min_users_per_arm for s in config.stages} == {200}
    assert {s.max_hold_seconds for s in config.stages} == {None}
    assert config.guardrails == (Guardrail("checkout_completed", "conversion", 0.10), Guardrail("error", "error", 0.5))
    assert (config.mode, config.interval_seconds, config.rollback_to, config.on_srm) == ("auto", 60, "zero", "rollback")
    assert (config.alpha, config.alpha_promotion, config.tau_rel) == (0.05, 0.05, 0.2)
    assert (config.srm_alpha, config.srm_concentration) == (0.001, 1000)


def test_the_soak_defaults_to_ten_intervals_and_explicit_values_win():
    config = PlanConfig.from_dict({"guardrails": [CONV], "interval_seconds": 30,
                                   "stages": [{"percentage": 10, "min_duration_seconds": 45, "margin": 0.2},
                                              {"percentage": 100}]})
    assert config.stages[0] == Stage(10, 45, 200, 0.2, None)
    assert config.stages[1].min_duration_seconds == 300


@pytest.mark.parametrize(("percentage", "margin"), [(0.5, 0.30), (5, 0.30), (10, 0.30), (25, 0.15), (30, 0.15),
                                                    (50, 0.10), (75, 0.10)])
def test_default_margin_is_the_next_lower_default(percentage: float, margin: float):
    assert default_margin(percentage) == margin
    config = PlanConfig.from_dict({"guardrails": [CONV], "stages": [{"percentage": percentage}, {"percentage": 100}]})
    assert config.stages[0].margin == margin


BAD = [
    ({"stages": [{"percentage": 50}, {"percentage": 25}, {"percentage": 100}]}, "stages[1].percentage"),
    ({"stages": [{"percentage": 25}, {"percentage": 25}, {"percentage": 100}]}, "stages[1].percentage"),
    ({"stages": [{"percentage": 5}, {"percentage": 50}]}, "stages[1].percentage"),
    ({"stages": [{"percentage": 0}, {"percentage": 100}]}, "stages[0].percentage"),
    ({"stages": [{"percentage": 150}]}, "stages[0].percentage"),
    ({"stages": [{"percentage": 5.005}, {"percentage": 100}]}, "stages[0].percentage"),
    ({"stages": [{"percentage": True}, {"percentage": 100}]}, "stages[0].percentage"),
    ({"stages": [{"percentage": "5"}, {"percentage": 100}]}, "stages[0].percentage"),
    ({"stages": [{}, {"percentage": 100}]}, "stages[0].percentage"),
    ({"stages": []}, "stages"),
    ({"stages": [{"percentage": 5, "margin": 1.5}, {"percentage": 100}]}, "stages[0].margin"),
    ({"stages": [{"percentage": 5, "margin": 0}, {"percentage": 100}]}, "stages[0].margin"),
    ({"stages": [{"percentage": 5, "min_users_per_arm": 1.5}, {"percentage": 100}]}, "stages[0].min_users_per_arm"),
    ({"stages": [{"percentage": 5, "min_users_per_arm": -1}, {"percentage": 100}]}, "stages[0].min_users_per_arm"),
    ({"stages": [{"percentage": 5, "min_duration_seconds": -1}, {"percentage": 100}]},
     "stages[0].min_duration_seconds"),
    ({"stages": [{"percentage": 5, "max_hold_seconds": 0}, {"percentage": 100}]}, "stages[0].max_hold_seconds"),
    ({"stages": [{"percentage": 5, "colour": "red"}, {"percentage": 100}]}, "stages[0].colour"),
    ({"guardrails": []}, "guardrails"),
    ({"guardrails": [{"event": "error", "kind": "error"}]}, "guardrails"),
    ({"guardrails": [CONV, {"event": "checkout_completed", "kind": "error"}]}, "guardrails[1].event"),
    ({"guardrails": [{"event": "x", "kind": "latency"}]}, "guardrails[0].kind"),
    ({"guardrails": [{"event": "", "kind": "conversion"}]}, "guardrails[0].event"),
    ({"guardrails": [{"event": "x", "kind": "conversion", "margin": -0.1}]}, "guardrails[0].margin"),
    ({"mode": "yolo"}, "mode"),
    ({"rollback_to": "yesterday"}, "rollback_to"),
    ({"on_srm": "ignore"}, "on_srm"),
    ({"interval_seconds": 0.5}, "interval_seconds"),
    ({"alpha": 0}, "alpha"),
    ({"alpha": 1}, "alpha"),
    ({"alpha_promotion": 1.2}, "alpha_promotion"),
    ({"srm_alpha": -0.1}, "srm_alpha"),
    ({"tau_rel": 0}, "tau_rel"),
    ({"srm_concentration": -5}, "srm_concentration"),
    ({"surprise": 1}, "surprise"),
]


def _flat(messages: Any) -> dict[str, list[str]]:
    return errors._flatten(messages)


@pytest.mark.parametrize(("change", "field"), BAD, ids=[f for _, f in BAD])
def test_a_bad_field_is_named_by_the_schema(change: dict[str, Any], field: str):
    body = {"guardrails": [CONV], **change}
    with pytest.raises(ValidationError) as caught:
        RolloutPlanSchema().load(body)
    assert field in _flat(caught.value.messages)


@pytest.mark.parametrize(("change", "field"), [(c, f) for c, f in BAD if f not in ("stages[0].colour", "surprise")],
                         ids=[f for _, f in BAD if f not in ("stages[0].colour", "surprise")])
def test_a_bad_field_is_named_by_from_dict(change: dict[str, Any], field: str):
    # from_dict (used for stored plans) ignores unknown keys but checks every value
    with pytest.raises(PlanError) as caught:
        PlanConfig.from_dict({"guardrails": [CONV], **change})
    assert field in caught.value.fields


def test_every_bad_field_is_named_at_once():
    body = {"guardrails": [CONV], "stages": [{"percentage": True}, {"percentage": 100, "margin": 2}],
            "mode": "yolo", "alpha": 0}
    with pytest.raises(ValidationError) as caught:
        RolloutPlanSchema().load(body)
    assert {"stages[0].percentage", "stages[1].margin", "mode", "alpha"} <= set(_flat(caught.value.messages))


def test_the_app_answers_422_naming_each_bad_field():
    # Given the app's error handler and a view that loads the schema, as the API does
    app = Flask(__name__)
    errors.init_app(app)

    @app.put("/plan")
    def put_plan() -> Any:
        return jsonify(RolloutPlanSchema().load(request.get_json()).to_dict())

    client = app.test_client()
    bad = client.put("/plan", json={"guardrails": [{"event": "error", "kind": "error"}],
                                    "stages": [{"percentage": 50}, {"percentage": 25}, {"percentage": 100}]})
    assert bad.status_code == 422
    assert bad.get_json()["error"]["fields"]["stages[1].percentage"] == ["must be greater than the previous stage's 50"]

    bad = client.put("/plan", json={"guardrails": [CONV], "stages": [{"percentage": 5, "margin": 3},
                                                                      {"percentage": 100}], "mode": "x"})
    assert bad.status_code == 422
    assert {"stages[0].margin", "mode"} <= set(bad.get_json()["error"]["fields"])

    good = client.put("/plan", json={"guardrails": [CONV]})
    assert good.status_code == 200 and good.get_json()["stages"][0]["margin"] == 0.3


def test_config_round_trips_through_json_and_the_schema():
    config = PlanConfig.from_dict({
        "guardrails": [CONV, {"event": "error", "kind": "error", "margin": 1.0}],
        "stages": [{"percentage": 1, "max_hold_seconds": 3600, "min_users_per_arm": 500}, {"percentage": 33.33},
                   {"percentage": 100}],
        "mode": "hybrid", "interval_seconds": 15, "rollback_to": "previous_stage", "on_srm": "pause",
        "alpha": 0.01, "alpha_promotion": 0.1, "tau_rel": 0.3, "srm_alpha": 0.0001, "srm_concentration": 10_000})
    data = json.loads(json.dumps(config.to_dict()))
    assert PlanConfig.from_dict(data) == config
    assert RolloutPlanSchema().load(data) == config
    assert RolloutPlanSchema().dump(config) == config.to_dict()


def test_state_and_plan_round_trip():
    state = PlanState(status="waiting_for_approval", stage_index=2, stage_started_at=1200.5, ticks_in_stage=7,
                      tau={"checkout_completed": 0.024}, error_log_lr={"error": (0.1, -0.2, 0.3, 1.0, 2.0, -3.0)},
                      last_counts=(StageMark(0.0, 5.0, {"error": 3}, {"error": 40}),), srm_log_bayes_factor=-1.5,
                      hold_notified=True, status_reason="manual mode", status_since=1500.0, last_tick_at=1560.0)
    assert PlanState.from_dict(json.loads(json.dumps(state.to_dict()))) == state

    plan = RolloutPlan(PlanConfig.from_dict({"guardrails": [CONV]}), state)
    assert RolloutPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    started = RolloutPlan.start(plan.config, 42.0)
    assert started.state.status == "running" and started.state.stage_started_at == 42.0
    assert started.state.stage_index == 0 and started.state.tau_for("checkout_completed") is None


def test_a_stored_state_that_cannot_be_read_is_refused():
    with pytest.raises(StateError, match="unknown status"):
        PlanState.from_dict({"status": "flying"})
    with pytest.raises(StateError, match="unreadable"):
        PlanState.from_dict({"stage_index": "two"})
    with pytest.raises(StateError):
        PlanState.from_dict({"last_counts": [{"percentage": 5}]})


def test_constructing_an_invalid_config_directly_is_refused():
    with pytest.raises(PlanError) as caught:
        PlanConfig(stages=(Stage(50, 600), Stage(25, 600)), guardrails=(Guardrail("x", "conversion", 0.1),))
    assert "stages[1].percentage" in caught.value.fields
