"""The segments API: `/api/v1/envs/{env}/segments[/{key}]`, on both storage backends."""

from __future__ import annotations

import pytest

from tests.api_helpers import (
    BACKENDS,
    SEGMENTS,
    assert_error,
    audit_entries,
    create_flag,
    create_segment,
    storage_state,
)

pytestmark = pytest.mark.parametrize("backend", BACKENDS, indirect=True)

PROD = SEGMENTS.format(env="production")
STAGING = SEGMENTS.format(env="staging")
EVALUATE = "/api/v1/envs/production/evaluate"


def test_create_answers_201_with_the_segment_its_defaults_and_etag(client, admin):
    response = client.post(PROD, json={"key": "beta-testers", "included": ["user-1", "user-2"]}, headers=admin)

    assert response.status_code == 201
    assert response.headers["ETag"] == '"1"'
    segment = response.get_json()
    assert {k: v for k, v in segment.items() if k != "updated_at"} == {
        "key": "beta-testers", "description": "", "included": ["user-1", "user-2"], "excluded": [],
        "conditions": [], "percentage": None, "bucket_by": "key", "version": 1,
    }


def test_get_and_list(client, admin):
    internal = create_segment(client, admin, key="internal", description="staff",
                              conditions=[{"attribute": "email", "op": "ends_with", "values": ["@company.com"],
                                           "ignore_case": True}])
    random10 = create_segment(client, admin, key="random-10", percentage=10)

    one = client.get(f"{PROD}/internal", headers=admin)
    listed = client.get(PROD, headers=admin)

    assert one.status_code == 200 and one.headers["ETag"] == '"1"'
    assert one.get_json() == internal
    assert listed.status_code == 200
    assert listed.get_json()["segments"] == [internal, random10]


def test_segments_belong_to_one_environment(client, admin):
    create_segment(client, admin, key="internal", included=["u1"])

    assert client.get(STAGING, headers=admin).get_json()["segments"] == []
    assert_error(client.get(f"{STAGING}/internal", headers=admin), 404)
    staging_config = client.get("/api/v1/envs/staging/config", headers=admin).get_json()
    assert staging_config["segments"] == {}


def test_the_same_key_may_exist_in_two_environments(client, admin):
    create_segment(client, admin, key="internal", included=["prod-user"])

    response = client.post(STAGING, json={"key": "internal", "included": ["staging-user"]}, headers=admin)

    assert response.status_code == 201
    assert client.get(f"{PROD}/internal", headers=admin).get_json()["included"] == ["prod-user"]


def test_patch_changes_only_the_fields_sent(client, admin):
    create_segment(client, admin, key="s", included=["u1"], description="d")

    response = client.patch(f"{PROD}/s", json={"percentage": 12.5}, headers={**admin, "If-Match": '"1"'})

    assert response.status_code == 200
    assert response.headers["ETag"] == '"2"'
    segment = response.get_json()
    assert (segment["percentage"], segment["included"], segment["description"], segment["version"]) == (
        12.5, ["u1"], "d", 2)
    assert client.get(f"{PROD}/s", headers=admin).get_json() == segment


def test_put_replaces_the_segment(client, admin):
    create_segment(client, admin, key="s", included=["u1"], description="d")

    response = client.put(f"{PROD}/s", json={"excluded": ["u9"]}, headers=admin)

    assert response.status_code == 200
    segment = response.get_json()
    assert (segment["included"], segment["excluded"], segment["description"], segment["version"]) == (
        [], ["u9"], "", 2)


@pytest.mark.parametrize("method", ["patch", "put", "delete"])
def test_a_stale_if_match_gets_412_and_changes_nothing(app, client, admin, method):
    create_segment(client, admin, key="s", included=["u1"])
    client.patch(f"{PROD}/s", json={"included": ["u2"]}, headers=admin)
    before = storage_state(app)

    kwargs = {} if method == "delete" else {"json": {"included": ["u3"]}}
    response = getattr(client, method)(f"{PROD}/s", headers={**admin, "If-Match": '"1"'}, **kwargs)

    assert assert_error(response, 412)["current_version"] == 2
    assert storage_state(app) == before


def test_a_change_to_a_segment_changes_what_flags_using_it_serve(client, admin):
    create_segment(client, admin, key="beta", included=["user-1"])
    create_flag(client, admin, key="f", enabled=True, rules=[{"id": "beta", "segments": ["beta"], "serve": "on"}])

    def variant(user: str) -> str:
        return client.post(EVALUATE, json={"flag": "f", "user": {"key": user}}, headers=admin).get_json()["variant"]

    assert (variant("user-1"), variant("user-2")) == ("on", "off")
    client.patch(f"{PROD}/beta", json={"included": ["user-2"]}, headers=admin)
    assert (variant("user-1"), variant("user-2")) == ("off", "on")


def test_a_rule_naming_a_missing_segment_is_refused(app, client, admin):
    create_segment(client, admin, key="beta", included=["u1"], env="staging")  # exists, but elsewhere
    before = storage_state(app)

    response = client.post("/api/v1/envs/production/flags", headers=admin,
                           json={"key": "f", "rules": [{"id": "r", "segments": ["beta"], "serve": "on"}]})

    assert_error(response, 422, "rules[0].segments")
    assert storage_state(app) == before


def test_deleting_a_segment_in_use_is_409_until_no_rule_names_it(app, client, admin):
    create_segment(client, admin, key="beta", included=["u1"])
    create_flag(client, admin, key="f", rules=[{"id": "r", "segments": ["beta"], "serve": "on"}])
    before = storage_state(app)

    refused = client.delete(f"{PROD}/beta", headers=admin)

    assert_error(refused, 409, "key")
    assert "f" in refused.get_json()["error"]["message"]  # says which flag uses it
    assert storage_state(app) == before
    client.patch("/api/v1/envs/production/flags/f", json={"rules": []}, headers=admin)
    deleted = client.delete(f"{PROD}/beta", headers=admin)
    assert deleted.status_code == 204
    assert_error(client.get(f"{PROD}/beta", headers=admin), 404)


def test_a_segment_used_in_another_environment_only_may_be_deleted(client, admin):
    create_segment(client, admin, key="beta", included=["u1"])
    create_segment(client, admin, key="beta", included=["u1"], env="staging")
    create_flag(client, admin, key="f", rules=[{"id": "r", "segments": ["beta"], "serve": "on"}])

    assert client.delete(f"{STAGING}/beta", headers=admin).status_code == 204
    assert client.get(f"{PROD}/beta", headers=admin).status_code == 200


def test_writes_are_audited_and_change_the_config_document(app, client, admin):
    config_url = "/api/v1/envs/production/config"
    v0 = client.get(config_url, headers=admin).get_json()["version"]

    create_segment(client, admin, key="s", percentage=10)
    v1 = client.get(config_url, headers=admin).get_json()
    client.patch(f"{PROD}/s", json={"percentage": 20}, headers=admin)
    v2 = client.get(config_url, headers=admin).get_json()
    client.delete(f"{PROD}/s", headers=admin)
    v3 = client.get(config_url, headers=admin).get_json()

    assert v0 < v1["version"] < v2["version"] < v3["version"]
    assert v1["segments"]["s"] == {"percentage": 10} and v2["segments"]["s"] == {"percentage": 20}
    assert "s" not in v3["segments"]
    entries = audit_entries(app, target_key="s")
    assert [e["action"] for e in entries] == ["delete", "update", "create"]
    assert entries[1]["before"]["percentage"] == 10 and entries[1]["after"]["percentage"] == 20
    assert {e["target_type"] for e in entries} == {"segment"}
