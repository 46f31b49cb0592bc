"""FlagClient offline (bootstrap from a dict or a JSON file) and flagsdk.testing.TestData,
used as an application would use them. The evaluation cases themselves run
against the offline client in test_engine_cases.py; this file covers the client's
own manners: construction, bad input, logging once, on_change, closing."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flagsdk import FlagClient, Snapshot, User, bucket
from flagsdk.testing import TestData

from tests.evaluation_cases import load_cases

CONFIG: dict[str, Any] = {
    "environment": "production",
    "version": 42,
    "segments": {
        "internal": {"conditions": [{"attribute": "email", "op": "ends_with", "values": ["@company.com"],
                                     "ignore_case": True}]},
        "beta-testers": {"included": ["user-1", "user-2", "user-3"]},
    },
    "flags": {
        "new-checkout": {"enabled": True, "salt": "new-checkout", "variants": ["off", "on"], "version": 7,
                         "rules": [{"id": "staff", "segments": ["internal", "beta-testers"], "serve": "on"}],
                         "rollout": 25},
        "layout": {"enabled": True, "variants": ["control", "blue"], "rollout": {"control": 0, "blue": 10000}},
        "kill-switched": {"enabled": False, "rollout": 100},
        "reads-plan": {"enabled": True, "rules": [{"id": "gold", "conditions": [
            {"attribute": "plan", "op": "in", "values": ["gold"]}], "serve": "on"}], "version": 3},
        "unknown-op": {"enabled": True, "rules": [{"id": "r", "conditions": [
            {"attribute": "plan", "op": "resembles", "values": ["gold"]}], "serve": "on"}]},
        "bad-regex": {"enabled": True, "rules": [{"id": "r", "conditions": [
            {"attribute": "plan", "op": "matches", "values": ["(unclosed"]}], "serve": "on"}]},
        "unknown-segment": {"enabled": True, "rules": [{"id": "r", "segments": ["nobody-defined-me"], "serve": "on"}]},
        "garbage-fields": {"enabled": "sometimes", "variants": 7, "rollout": "lots"},
    },
}
STAFF = {"key": "alice", "email": "alice@Company.COM"}
BUCKET_2499 = "user-1385"  # bucket("new-checkout", key) == 2499: inside the 25%
BUCKET_2500 = "user-2482"  # == 2500: outside


@pytest.fixture
def client() -> Iterator[FlagClient]:
    with FlagClient(offline=True, bootstrap=CONFIG) as made:
        yield made


def test_the_keys_used_here_sit_on_the_25_percent_line() -> None:
    assert (bucket("new-checkout", BUCKET_2499), bucket("new-checkout", BUCKET_2500)) == (2499, 2500)


# --- bootstrap -------------------------------------------------------------------------


def test_a_dict_bootstrap_serves_its_flags(client: FlagClient) -> None:
    assert client.is_ready()
    assert client.snapshot.config.version == 42
    assert client.is_enabled("new-checkout", STAFF) is True
    assert client.is_enabled("new-checkout", {"key": BUCKET_2499}) is True
    assert client.is_enabled("new-checkout", {"key": BUCKET_2500}) is False
    assert client.variant("layout", {"key": "anyone"}) == "blue"
    result = client.evaluate("new-checkout", STAFF)
    assert (result.variant, result.reason, result.rule_id, result.randomized) == (
        "on", "TARGETING_MATCH", "staff", False)


@pytest.mark.parametrize("as_path", [str, Path], ids=["str", "Path"])
def test_a_json_file_bootstrap_serves_the_same_as_the_dict(tmp_path: Path, as_path: Any) -> None:
    path = tmp_path / "flags.json"
    path.write_text(json.dumps(CONFIG), encoding="utf-8")

    def answers(made: FlagClient) -> list[tuple[Any, ...]]:
        return [(r.variant, r.reason, r.error_code, r.rule_id)
                for flag in [*CONFIG["flags"], "no-such-flag"]
                for user in (STAFF, {"key": BUCKET_2499}, {"key": BUCKET_2500}, None)
                for r in [made.evaluate(flag, user, "d")]]

    with FlagClient(offline=True, bootstrap=as_path(path)) as from_file, \
            FlagClient(offline=True, bootstrap=CONFIG) as from_dict:
        assert from_file.is_ready()
        assert from_file.snapshot.config == from_dict.snapshot.config
        assert answers(from_file) == answers(from_dict)
        assert from_file.is_enabled("new-checkout", {"key": BUCKET_2499}) is True


def test_a_bootstrap_file_of_unicode_json_is_read_as_utf8(tmp_path: Path) -> None:
    path = tmp_path / "flags.json"
    config = {"flags": {"café": {"enabled": True, "rules": [{"id": "r", "conditions": [
        {"attribute": "city", "op": "in", "values": ["Zürich"]}], "serve": "on"}]}}}
    path.write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")

    with FlagClient(offline=True, bootstrap=path) as from_file:
        assert from_file.is_enabled("café", {"key": "u", "city": "Zürich"}) is True


@pytest.mark.parametrize(
    ("bootstrap", "message"),
    [
        ({"no": "flags"}, "not a config"),
        ({"flags": []}, "not a config"),
        ({"flags": {}, "version": "7"}, "not a config"),
    ],
)
def test_a_bootstrap_that_is_not_a_config_raises_value_error(bootstrap: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FlagClient(offline=True, bootstrap=bootstrap)


@pytest.mark.parametrize("content", ["{not json", "", "[1, 2]", "\"flags\""], ids=["broken", "empty", "list", "string"])
def test_a_bootstrap_file_that_is_not_a_config_raises_value_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "flags.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError):
        FlagClient(offline=True, bootstrap=path)


def test_a_missing_bootstrap_file_raises_at_construction(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        FlagClient(offline=True, bootstrap=tmp_path / "missing.json")


def test_offline_without_bootstrap_and_online_without_url_are_programmer_errors() -> None:
    with pytest.raises(ValueError, match="bootstrap"):
        FlagClient(offline=True)
    with pytest.raises(ValueError, match="url"):
        FlagClient()


def test_a_bootstrap_with_malformed_flags_skips_them_and_serves_the_others(caplog: pytest.LogCaptureFixture) -> None:
    """Given a bootstrap whose flags include garbage, then construction succeeds, each
    malformed flag is logged once as skipped and answers PARSE_ERROR, the others work."""
    document = {"flags": {
        "good": {"enabled": True, "rollout": 100},
        "enabled-string": {"enabled": "yes"},
        "hash-version-list": {"enabled": True, "hash_version": []},
        "rules-object": {"enabled": True, "rules": {"id": "r"}},
    }}
    with caplog.at_level(logging.WARNING, logger="flagsdk"):
        made = FlagClient(offline=True, bootstrap=document)

    assert made.is_enabled("good", {"key": "u"}) is True
    for key in ("enabled-string", "hash-version-list", "rules-object"):
        result = made.evaluate(key, {"key": "u"}, "fallback")
        assert (result.variant, result.reason, result.error_code) == ("fallback", "ERROR", "PARSE_ERROR")
        assert sum(key in record.getMessage() and "skipped" in record.getMessage() for record in caplog.records) == 1


# --- users -----------------------------------------------------------------------------


def test_a_user_dataclass_is_a_user(client: FlagClient) -> None:
    alice = User("alice", {"email": "alice@Company.COM"})

    assert client.is_enabled("new-checkout", alice) is True
    assert client.variant("new-checkout", alice) == "on"
    assert client.evaluate("new-checkout", alice) == client.evaluate("new-checkout", STAFF)
    assert client.is_enabled("new-checkout", User(BUCKET_2500)) is False


def test_a_user_dataclass_key_wins_over_a_key_attribute(client: FlagClient) -> None:
    user = User("user-2", {"key": BUCKET_2500})  # user-2 is a beta tester
    assert client.evaluate("new-checkout", user).rule_id == "staff"


# --- bad input never raises -------------------------------------------------------------


class Opaque:
    """An object that is neither a mapping nor a User."""


BAD_INPUTS = [
    ("user None", "new-checkout", None, "INVALID_CONTEXT"),
    ("user a string", "new-checkout", "user-1", "INVALID_CONTEXT"),
    ("user a number", "new-checkout", 42, "INVALID_CONTEXT"),
    ("user a list", "new-checkout", [("key", "u")], "INVALID_CONTEXT"),
    ("user an object", "new-checkout", Opaque(), "INVALID_CONTEXT"),
    ("no key", "new-checkout", {"email": "a@company.com"}, "TARGETING_KEY_MISSING"),
    ("key None", "new-checkout", {"key": None}, "TARGETING_KEY_MISSING"),
    ("key empty", "new-checkout", {"key": ""}, "TARGETING_KEY_MISSING"),
    ("key a number", "new-checkout", {"key": 42}, "INVALID_CONTEXT"),
    ("key a boolean", "new-checkout", {"key": True}, "INVALID_CONTEXT"),
    ("key a list", "new-checkout", {"key": ["u"]}, "INVALID_CONTEXT"),
    ("key bytes", "new-checkout", {"key": b"u"}, "INVALID_CONTEXT"),
    ("attribute a dict", "reads-plan", {"key": "u", "plan": {"tier": "gold"}}, "INVALID_CONTEXT"),
    ("attribute a set", "reads-plan", {"key": "u", "plan": {"gold"}}, "INVALID_CONTEXT"),
    ("attribute an object", "reads-plan", {"key": "u", "plan": Opaque()}, "INVALID_CONTEXT"),
    ("attribute a list of numbers", "reads-plan", {"key": "u", "plan": [1, 2]}, "INVALID_CONTEXT"),
    ("attribute bytes", "reads-plan", {"key": "u", "plan": b"gold"}, "INVALID_CONTEXT"),
    ("unknown flag", "no-such-flag", {"key": "u"}, "FLAG_NOT_FOUND"),
    ("unknown segment", "unknown-segment", {"key": "u"}, "PARSE_ERROR"),
    ("unknown operator", "unknown-op", {"key": "u", "plan": "gold"}, "PARSE_ERROR"),
    ("malformed regex", "bad-regex", {"key": "u", "plan": "gold"}, "PARSE_ERROR"),
    ("flag with garbage fields", "garbage-fields", {"key": "u"}, "PARSE_ERROR"),
]


@pytest.mark.parametrize(("flag", "user", "code"), [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_gives_the_default_with_an_error_code(client: FlagClient, flag: str, user: Any, code: str) -> None:
    result = client.evaluate(flag, user, "fallback")

    assert (result.variant, result.reason, result.error_code) == ("fallback", "ERROR", code)
    assert (result.enabled, result.randomized, result.rule_id) == (False, False, None)
    assert client.variant(flag, user, "fallback") == "fallback"
    assert client.variant(flag, user) is None
    assert client.is_enabled(flag, user) is False
    assert client.is_enabled(flag, user, default=True) is True


@pytest.mark.parametrize("user", [None, {}, {"key": 42}, "user-1", Opaque()], ids=repr)
def test_a_disabled_flag_answers_off_even_for_a_bad_user(client: FlagClient, user: Any) -> None:
    result = client.evaluate("kill-switched", user, "fallback")
    assert (result.variant, result.reason, result.error_code) == ("off", "DISABLED", None)
    assert client.is_enabled("kill-switched", user, default=True) is False


@pytest.mark.parametrize("flag_key", [["new-checkout"], {"flag": "new-checkout"}, None, 7],
                         ids=["list", "dict", "None", "int"])
def test_a_flag_key_of_the_wrong_type_gives_the_default(client: FlagClient, flag_key: Any) -> None:
    """Never raises, even when the flag key itself is not a string (unhashable ones included)."""
    assert client.is_enabled(flag_key, {"key": "u"}, default=True) is True
    assert client.variant(flag_key, {"key": "u"}, "fallback") == "fallback"
    result = client.evaluate(flag_key, {"key": "u"}, "fallback")
    assert (result.variant, result.reason) == ("fallback", "ERROR")
    assert Snapshot.from_dict(CONFIG).evaluate(flag_key, {"key": "u"}, "fallback").reason == "ERROR"


_LONE_SURROGATE_IN_CHILD = textwrap.dedent(
    """
    import json, sys
    from flagsdk import FlagClient, bucket
    where = sys.argv[1]
    bad = json.loads('"user-\\\\ud800"')  # valid JSON: a lone surrogate escape
    config = {"segments": {"half": {"percentage": 50}}, "flags": {
        "by-key": {"enabled": True, "rollout": 50},
        "by-org": {"enabled": True, "bucket_by": "org", "rollout": 50},
        "in-segment": {"enabled": True, "rules": [{"id": "r", "segments": ["half"], "serve": "on"}]},
    }}
    client = FlagClient(offline=True, bootstrap=config)
    if where == "bucket":
        try:
            print(json.dumps(bucket("salt", bad)))
        except ValueError:  # UnicodeEncodeError included: refusing such a value is fine
            print(json.dumps("ValueError"))
    else:
        user = {"key": bad} if where != "by-org" else {"key": "u", "org": bad}
        result = client.evaluate(where, user, "fallback")
        print(json.dumps([client.is_enabled(where, user), result.reason, result.error_code]))
    """
)


@pytest.mark.parametrize("where", ["by-key", "by-org", "in-segment", "bucket"])
def test_a_lone_surrogate_in_a_bucketed_value_does_not_crash_the_process(where: str) -> None:
    """Given a user key (or bucket_by attribute) holding a lone surrogate, which
    `json.loads` produces from a request body such as {"key": "user-\\ud800"}, when a
    percentage is evaluated, then the process survives and the answer is an
    ordinary result or an ERROR. (mmh3 5.x crashes the interpreter with SIGSEGV on
    such a str; the engine must not hand it one.) Runs in a child process."""
    done = subprocess.run([sys.executable, "-c", _LONE_SURROGATE_IN_CHILD, where],
                          capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, f"the process died (return code {done.returncode}): {done.stderr[-300:]}"
    answer = json.loads(done.stdout)
    if where == "bucket":
        assert answer == "ValueError" or (isinstance(answer, int) and 0 <= answer < 10_000)
    else:
        enabled, reason, code = answer
        assert isinstance(enabled, bool)
        assert reason in ("SPLIT", "DEFAULT", "TARGETING_MATCH") or (reason, code) == ("ERROR", "INVALID_CONTEXT")


# --- logging once ----------------------------------------------------------------------


def warnings_about(caplog: pytest.LogCaptureFixture, flag: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and repr(flag) in r.getMessage()]


def test_an_error_is_logged_once_per_flag_and_kind_not_once_per_call(
    client: FlagClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="flagsdk"):
        for default in ("a", "b", None):
            for _ in range(20):
                client.evaluate("new-checkout", None, default)
                client.is_enabled("new-checkout", None)
                client.variant("new-checkout", None, default)
        assert len(warnings_about(caplog, "new-checkout")) == 1
        assert "INVALID_CONTEXT" in warnings_about(caplog, "new-checkout")[0]

        for _ in range(5):
            client.evaluate("new-checkout", {"email": "x"})  # another kind, same flag
            client.evaluate("no-such-flag", {"key": "u"})  # another flag
            client.evaluate("unknown-op", {"key": "u"})
            client.evaluate("unknown-op", {"key": 5})
        assert len(warnings_about(caplog, "new-checkout")) == 2
        assert len(warnings_about(caplog, "no-such-flag")) == 1
        assert len(warnings_about(caplog, "unknown-op")) == 2


def test_good_evaluations_log_nothing(client: FlagClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="flagsdk"):
        for key in ("alice", BUCKET_2499, BUCKET_2500):
            client.is_enabled("new-checkout", {"key": key, "email": f"{key}@company.com"})
            client.variant("layout", {"key": key})
            client.evaluate("kill-switched", {"key": key})
    assert caplog.records == []


# --- engine and client agree -----------------------------------------------------------


def test_the_client_gives_the_engines_result_field_for_field_on_every_case() -> None:
    """The client must not be a second implementation: for every evaluation case its
    result equals `Snapshot.evaluate`'s in every field but the free-text message
    (an ERROR keeps the flag version, as the engine's does)."""
    fields = ("flag_key", "variant", "enabled", "reason", "error_code", "rule_id", "randomized", "flag_version")
    differences = []
    loaded: dict[str, tuple[Snapshot, FlagClient]] = {}
    for file_name, case, config in load_cases():
        if file_name == "garbage.json":
            continue  # cannot load today (see test_engine_cases)
        if file_name not in loaded:
            loaded[file_name] = (Snapshot.from_dict(config), FlagClient(offline=True, bootstrap=config))
        snapshot, made = loaded[file_name]
        args = (case["flag"], case["user"], case.get("default"))
        engine, via_client = snapshot.evaluate(*args), made.evaluate(*args)
        for name in fields:
            if getattr(engine, name) != getattr(via_client, name):
                differences.append(f"{file_name}/{case['name']}: {name} {getattr(engine, name)!r} != "
                                   f"{getattr(via_client, name)!r}")
    for _, made in loaded.values():
        made.close()
    assert differences == []


# --- on_change, close, context manager -------------------------------------------------


def test_on_change_is_called_with_each_new_snapshot_and_not_for_a_refused_document() -> None:
    seen: list[Snapshot] = []
    made = FlagClient(offline=True, bootstrap=CONFIG, on_change=seen.append)
    assert seen == [made.snapshot]
    assert seen[0].config.version == 42

    assert made._apply_document({**CONFIG, "version": 43}, source="test") is True  # what the sync calls
    assert [s.config.version for s in seen] == [42, 43]
    assert made.snapshot is seen[-1]

    assert made._apply_document(["not", "a", "config"], source="test") is False
    assert [s.config.version for s in seen] == [42, 43]
    made.close()


def test_a_failing_on_change_is_logged_and_the_config_still_applies(caplog: pytest.LogCaptureFixture) -> None:
    def explode(snapshot: Snapshot) -> None:
        raise RuntimeError("callback bug")

    with caplog.at_level(logging.ERROR, logger="flagsdk"):
        made = FlagClient(offline=True, bootstrap=CONFIG, on_change=explode)

    assert made.is_ready() and made.snapshot.config.version == 42
    assert any("on_change" in r.getMessage() for r in caplog.records)
    made.close()


def test_close_is_idempotent_and_the_context_manager_closes() -> None:
    with FlagClient(offline=True, bootstrap=CONFIG) as made:
        assert made.is_enabled("new-checkout", STAFF) is True
    assert made._closed is True
    assert made.close() is None
    assert made.close() is None
    assert made.flush() is True
    assert made.stats()["queued"] == 0


def test_the_context_manager_does_not_swallow_exceptions() -> None:
    with pytest.raises(KeyError), FlagClient(offline=True, bootstrap=CONFIG):
        raise KeyError("application error")


def test_an_offline_client_records_nothing_and_track_never_raises(client: FlagClient) -> None:
    client.track("checkout_completed", STAFF, value=49.90)
    client.track("checkout_completed", None, value=float("nan"))
    client.track(None, {"key": 7})  # type: ignore[arg-type]
    assert client.stats() == {"sent": 0, "failed": 0, "dropped": 0, "queued": 0, "stopped": None}


# --- flagsdk.testing.TestData, as an application's test suite would use it ------------


@pytest.fixture
def data() -> TestData:
    return TestData()


def test_testdata_flag_on_and_off_reach_existing_clients_at_once(data: TestData) -> None:
    data.flag("new-checkout").on()
    made = data.client()
    assert made.is_enabled("new-checkout", {"key": "anyone"}) is True

    data.flag("new-checkout").off()

    assert made.is_enabled("new-checkout", {"key": "anyone"}) is False
    assert data.client().is_enabled("new-checkout", {"key": "anyone"}) is False


def test_testdata_a_new_flag_is_served_to_nobody(data: TestData) -> None:
    data.flag("fresh")
    made = data.client()
    assert made.is_enabled("fresh", {"key": "u"}) is False
    assert made.evaluate("fresh", {"key": "u"}).error_code is None


def test_testdata_variants_and_serve(data: TestData) -> None:
    data.flag("layout").variants("control", "blue", "green").serve("blue")
    made = data.client()
    assert made.variant("layout", {"key": "u"}) == "blue"
    assert made.is_enabled("layout", {"key": "u"}) is True

    data.flag("layout").serve("control")
    assert made.variant("layout", {"key": "u"}) == "control"
    assert made.is_enabled("layout", {"key": "u"}) is False


def test_testdata_for_users_targets_only_them(data: TestData) -> None:
    data.flag("beta").percentage(0).for_users("on", "user-1", "user-2")
    made = data.client()
    assert [made.is_enabled("beta", {"key": k}) for k in ("user-1", "user-2", "user-3")] == [True, True, False]
    assert made.evaluate("beta", {"key": "user-1"}).reason == "TARGETING_MATCH"


def test_testdata_when_targets_by_attribute(data: TestData) -> None:
    data.flag("staff-only").when("email", "ends_with", ["@company.com"], "on")
    made = data.client()
    assert made.is_enabled("staff-only", {"key": "a", "email": "a@company.com"}) is True
    assert made.is_enabled("staff-only", {"key": "b", "email": "b@gmail.com"}) is False


def test_testdata_disabled_is_the_kill_switch(data: TestData) -> None:
    data.flag("risky").on().disabled()
    made = data.client()
    result = made.evaluate("risky", {"key": "u"})
    assert (result.variant, result.reason) == ("off", "DISABLED")

    data.flag("risky").on()
    assert made.is_enabled("risky", {"key": "u"}) is True


def test_testdata_percentage_uses_the_real_bucketing(data: TestData) -> None:
    data.flag("gradual").percentage(25)
    made = data.client()
    keys = [f"user-{i}" for i in range(2000)]
    assert [made.is_enabled("gradual", {"key": k}) for k in keys] == [bucket("gradual", k) < 2500 for k in keys]


def test_testdata_unknown_flags_get_the_default(data: TestData) -> None:
    made = data.client()
    assert made.is_enabled("never-declared", {"key": "u"}, default=True) is True
    assert made.variant("never-declared", {"key": "u"}, "fallback") == "fallback"
