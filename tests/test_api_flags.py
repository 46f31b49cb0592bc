"""The flags API: `/api/v1/envs/{env}/flags[/{key}]`, on both storage backends."""

from __future__ import annotations

import json

import pytest

from tests.api_helpers import BACKENDS, FLAGS, assert_error, audit_entries, create_flag, create_segment, storage_state

pytestmark = pytest.mark.parametrize("backend", BACKENDS, indirect=True)

PROD = FLAGS.format(env="production")
STAGING = FLAGS.format(env="staging")


def test_create_answers_201_with_the_flag_its_defaults_and_etag(client, admin):
    response = client.post(PROD, json={"key": "new-checkout", "enabled": True, "rollout": 5}, headers=admin)

    assert response.status_code == 201
    assert response.headers["ETag"] == '"1"'
    flag = response.get_json()
    assert {k: v for k, v in flag.items() if k != "updated_at"} == {
        "key": "new-checkout", "description": "", "tags": [], "owner": None, "variants": ["off", "on"],
        "salt": "new-checkout", "bucket_by": "key", "hash_version": 1, "enabled": True, "rules": [],
        "rollout": 5, "version": 1,
    }
    assert isinstance(flag["updated_at"], float)


def test_get_serves_the_flag_with_its_version_as_etag(client, admin):
    created = create_flag(client, admin, key="f", rollout=12.5, tags=["checkout"], owner="ada")

    response = client.get(f"{PROD}/f", headers=admin)

    assert response.status_code == 200
    assert response.headers["ETag"] == '"1"'
    assert response.get_json() == created


def test_create_in_one_environment_creates_it_disabled_at_zero_everywhere_else(client, admin):
    create_segment(client, admin, key="staff", included=["u1"])
    create_flag(client, admin, key="f", enabled=True, rollout=40,
                rules=[{"id": "staff", "segments": ["staff"], "serve": "on"}])

    staging = client.get(f"{STAGING}/f", headers=admin)

    assert staging.status_code == 200
    flag = staging.get_json()
    assert (flag["enabled"], flag["rollout"], flag["rules"], flag["version"]) == (False, 0, [], 1)
    assert staging.headers["ETag"] == '"1"'
    assert client.get(f"{PROD}/f", headers=admin).get_json()["rollout"] == 40


def test_a_weights_rollout_elsewhere_puts_all_weight_on_the_first_variant(client, admin):
    create_flag(client, admin, key="layout", variants=["control", "blue", "green"],
                rollout={"control": 5000, "blue": 2500, "green": 2500}, enabled=True)

    staging = client.get(f"{STAGING}/layout", headers=admin).get_json()

    assert staging["rollout"] == {"control": 10000}
    assert staging["enabled"] is False


def test_the_declared_order_of_weights_is_kept_in_responses(app, client, admin):
    """Weights are cumulative ranges in the declared order (DESIGN.md): the order is
    their meaning, so a GET-then-PUT round trip must not reorder them."""
    weights = {"control": 5000, "blue": 2500, "green": 2500}
    created = create_flag(client, admin, key="layout", variants=["control", "blue", "green"], rollout=weights)

    fetched = client.get(f"{PROD}/layout", headers=admin)

    assert list(app.extensions["flagserver.store"].get_flag("production", "layout")["rollout"]) == list(weights)
    assert list(created["rollout"]) == list(weights)
    assert list(json.loads(fetched.get_data())["rollout"]) == list(weights)


def test_a_new_environment_receives_every_flag_disabled(client, admin):
    create_flag(client, admin, key="f", enabled=True, rollout=100)

    assert client.post("/api/v1/envs", json={"key": "qa"}, headers=admin).status_code == 201
    flag = client.get(FLAGS.format(env="qa") + "/f", headers=admin).get_json()

    assert (flag["enabled"], flag["rollout"], flag["version"]) == (False, 0, 1)


def test_list_filters_by_text_and_tag(client, admin):
    create_flag(client, admin, key="new-checkout", tags=["checkout"], description="The one-page checkout")
    create_flag(client, admin, key="dark-mode", tags=["ui"])
    create_flag(client, admin, key="search-v2", tags=["ui", "search"], description="faster CHECKOUT search")

    def keys(query: str) -> list[str]:
        response = client.get(PROD + query, headers=admin)
        assert response.status_code == 200
        return [f["key"] for f in response.get_json()["flags"]]

    assert keys("") == ["dark-mode", "new-checkout", "search-v2"]
    assert keys("?q=checkout") == ["new-checkout", "search-v2"]
    assert keys("?tag=ui") == ["dark-mode", "search-v2"]
    assert keys("?q=dark&tag=ui") == ["dark-mode"]
    assert keys("?tag=nothing") == []


def test_patch_rollout_changes_only_the_rollout_and_bumps_the_version(client, admin):
    create_flag(client, admin, key="f", enabled=True, rollout=5, description="d", tags=["t"])

    response = client.patch(f"{PROD}/f", json={"rollout": 25}, headers=admin)

    assert response.status_code == 200
    assert response.headers["ETag"] == '"2"'
    flag = response.get_json()
    assert (flag["rollout"], flag["enabled"], flag["description"], flag["tags"], flag["version"]) == (
        25, True, "d", ["t"], 2)
    assert client.get(f"{PROD}/f", headers=admin).get_json() == flag
    staging = client.get(f"{STAGING}/f", headers=admin).get_json()
    assert (staging["rollout"], staging["version"]) == (0, 1)  # a per-environment field stays in its environment


def test_patch_enabled_false_is_the_kill_switch(client, admin):
    create_flag(client, admin, key="f", enabled=True, rollout=100)

    response = client.patch(f"{PROD}/f", json={"enabled": False}, headers=admin)

    assert response.status_code == 200
    assert response.get_json()["enabled"] is False
    assert response.get_json()["rollout"] == 100
    result = client.post("/api/v1/envs/production/evaluate", json={"flag": "f", "user": {"key": "u1"}},
                         headers=admin).get_json()
    assert (result["variant"], result["reason"]) == ("off", "DISABLED")


def test_patch_with_the_current_if_match_applies(client, admin):
    create_flag(client, admin, key="f")

    response = client.patch(f"{PROD}/f", json={"rollout": 50}, headers={**admin, "If-Match": '"1"'})

    assert response.status_code == 200
    assert response.headers["ETag"] == '"2"'
    assert response.get_json()["rollout"] == 50


@pytest.mark.parametrize("method", ["patch", "put"])
def test_a_stale_if_match_gets_412_and_changes_nothing(app, client, admin, method):
    create_flag(client, admin, key="f")
    client.patch(f"{PROD}/f", json={"rollout": 1}, headers=admin)
    before = storage_state(app)

    response = getattr(client, method)(f"{PROD}/f", json={"rollout": 99}, headers={**admin, "If-Match": '"1"'})

    error = assert_error(response, 412)
    assert error["current_version"] == 2
    assert storage_state(app) == before


def test_if_match_star_writes_whatever_the_version(client, admin):
    create_flag(client, admin, key="f")
    client.patch(f"{PROD}/f", json={"rollout": 1}, headers=admin)

    response = client.patch(f"{PROD}/f", json={"rollout": 2}, headers={**admin, "If-Match": "*"})

    assert response.status_code == 200
    assert response.get_json()["version"] == 3


def test_put_replaces_the_flag_and_unsent_fields_take_their_defaults(client, admin):
    create_flag(client, admin, key="f", enabled=True, rollout=30, description="old", tags=["a"])

    response = client.put(f"{PROD}/f", json={"rollout": 60}, headers={**admin, "If-Match": '"1"'})

    assert response.status_code == 200
    flag = response.get_json()
    assert (flag["key"], flag["rollout"], flag["enabled"], flag["description"], flag["tags"], flag["version"]) == (
        "f", 60, False, "", [], 2)


def test_put_may_repeat_the_key_of_the_url(client, admin):
    create_flag(client, admin, key="f")

    response = client.put(f"{PROD}/f", json={"key": "f", "enabled": True}, headers=admin)

    assert response.status_code == 200
    assert response.get_json()["enabled"] is True


def test_a_global_field_changes_in_every_environment_and_bumps_the_version_there(client, admin):
    create_flag(client, admin, key="f")

    response = client.patch(f"{PROD}/f", json={"description": "the new checkout", "variants": ["off", "on", "x"]},
                            headers=admin)

    assert response.status_code == 200
    staging = client.get(f"{STAGING}/f", headers=admin)
    assert staging.get_json()["description"] == "the new checkout"
    assert staging.get_json()["variants"] == ["off", "on", "x"]
    assert staging.get_json()["version"] == 2
    assert staging.headers["ETag"] == '"2"'


def test_rules_are_stored_in_order_with_segments_conditions_and_rollouts(client, admin):
    create_segment(client, admin, key="internal",
                   conditions=[{"attribute": "email", "op": "ends_with", "values": ["@company.com"],
                                "ignore_case": True}])
    create_segment(client, admin, key="free-tier", conditions=[{"attribute": "plan", "op": "in",
                                                                "values": ["free"]}])
    rules = [
        {"id": "staff", "segments": ["internal"], "serve": "on"},
        {"id": "free", "segments": ["free-tier"], "rollout": 50},
        {"id": "beta", "conditions": [{"attribute": "version", "op": "semver_gte", "values": ["2.0.0"]}],
         "serve": "on"},
    ]

    flag = create_flag(client, admin, key="f", enabled=True, rules=rules, rollout=25)

    assert [r["id"] for r in flag["rules"]] == ["staff", "free", "beta"]
    config = client.get("/api/v1/envs/production/config", headers=admin).get_json()
    wire = config["flags"]["f"]
    assert [r["id"] for r in wire["rules"]] == ["staff", "free", "beta"]
    assert wire["rules"][0]["segments"] == ["internal"] and wire["rules"][1]["rollout"] == 50
    evaluate = "/api/v1/envs/production/evaluate"
    staff = client.post(evaluate, json={"flag": "f", "user": {"key": "u", "email": "A@COMPANY.COM"}},
                        headers=admin).get_json()
    assert (staff["variant"], staff["reason"], staff["rule_id"]) == ("on", "TARGETING_MATCH", "staff")


def test_delete_removes_the_flag_from_every_environment(app, client, admin):
    create_flag(client, admin, key="f", enabled=True)

    response = client.delete(f"{PROD}/f", headers={**admin, "If-Match": '"1"'})

    assert response.status_code == 204
    assert response.get_data() == b""
    assert_error(client.get(f"{PROD}/f", headers=admin), 404)
    assert_error(client.get(f"{STAGING}/f", headers=admin), 404)
    for env in ("production", "staging"):
        assert "f" not in client.get(f"/api/v1/envs/{env}/config", headers=admin).get_json()["flags"]
    assert audit_entries(app, target_key="f")[0]["action"] == "delete"


def test_delete_with_a_stale_if_match_gets_412_and_keeps_the_flag(app, client, admin):
    create_flag(client, admin, key="f")
    client.patch(f"{PROD}/f", json={"rollout": 3}, headers=admin)
    before = storage_state(app)

    assert_error(client.delete(f"{PROD}/f", headers={**admin, "If-Match": '"1"'}), 412)
    assert storage_state(app) == before


def test_every_write_is_in_the_audit_log_with_before_and_after(app, client, admin, admin_token):
    create_flag(client, admin, key="f", rollout=5)
    client.patch(f"{PROD}/f", json={"rollout": 25}, headers=admin)
    client.delete(f"{PROD}/f", headers=admin)

    entries = client.get("/api/v1/audit?key=f", headers=admin).get_json()["entries"]

    # newest first; the action is the verb, the target_type says of what
    assert [e["action"] for e in entries] == ["delete", "update", "create"]
    delete, update, create = entries
    assert create["before"] is None and create["after"]["rollout"] == 5
    assert update["before"]["rollout"] == 5 and update["after"]["rollout"] == 25
    assert update["after"]["version"] == update["before"]["version"] + 1
    assert delete["before"]["rollout"] == 25 and delete["after"] is None
    assert {e["actor"] for e in entries} == {"admin:test-admin"}
    assert {e["environment"] for e in entries} == {"production"}
    assert {e["target_type"] for e in entries} == {"flag"}


def test_the_config_document_follows_each_write(client, admin):
    config_url = "/api/v1/envs/production/config"
    first = client.get(config_url, headers=admin).get_json()

    create_flag(client, admin, key="f", rollout=10, enabled=True)
    second = client.get(config_url, headers=admin).get_json()
    client.patch(f"{PROD}/f", json={"rollout": 20}, headers=admin)
    third = client.get(config_url, headers=admin).get_json()

    assert first["flags"] == {}
    assert second["flags"]["f"]["rollout"] == 10 and third["flags"]["f"]["rollout"] == 20
    assert first["version"] < second["version"] < third["version"]
    assert third["flags"]["f"]["version"] == 2
