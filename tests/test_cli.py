"""The `flagserver` command: init, tokens, flags; and `serve` as a real gunicorn process.

The CLI builds its app with `create_app()` from FLAGSERVER_* variables, so each test
points FLAGSERVER_DATABASE_URL at a temporary SQLite file (usually the one the `app`
fixture serves, so that what the CLI does can be checked through the API).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from flagserver import create_app
from flagserver.cli import main
from tests.api_helpers import create_flag, storage_state, wait_for

ADMIN_TOKEN = re.compile(r"^fsa_[0-9a-f]+_[A-Za-z0-9_-]+$", re.MULTILINE)
SDK_KEY = re.compile(r"^fss_[0-9a-f]+_[A-Za-z0-9_-]+$", re.MULTILINE)
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def cli_env(monkeypatch, tmp_path):
    """FLAGSERVER_* variables for a fresh database; returns its URL."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("FLAGSERVER_DATABASE_URL", url)
    monkeypatch.setenv("FLAGSERVER_INSTANCE_PATH", str(tmp_path / "instance"))
    monkeypatch.setenv("FLAGSERVER_SECRET_KEY", "test")
    monkeypatch.delenv("FLAGSERVER_ADMIN_TOKEN", raising=False)
    return url


@pytest.fixture
def shared(app, cli_env, monkeypatch):
    """Point the CLI at the database the `app` fixture serves (production and staging exist)."""
    monkeypatch.setenv("FLAGSERVER_DATABASE_URL", app.config["DATABASE_URL"])
    return app


def flag_of(app, key: str, env: str = "production"):
    return app.extensions["flagserver.store"].get_flag(env, key)


# --- init --------------------------------------------------------------------------------------

def test_init_creates_both_environments_and_prints_one_working_admin_token(runner, cli_env):
    result = runner.invoke(main, ["init"])

    assert result.exit_code == 0, result.output
    assert "created environment production" in result.stdout
    assert "created environment staging" in result.stdout
    tokens = ADMIN_TOKEN.findall(result.stdout)
    assert len(tokens) == 1
    app = create_app({"DATABASE_URL": cli_env, "TESTING": True})
    try:
        response = app.test_client().get("/api/v1/envs", headers={"Authorization": f"Bearer {tokens[0]}"})
        assert response.status_code == 200
        assert [e["key"] for e in response.get_json()["environments"]] == ["production", "staging"]
    finally:
        app.extensions["flagserver.store"].close()


def test_a_second_init_creates_nothing_and_prints_no_token(runner, cli_env):
    assert runner.invoke(main, ["init"]).exit_code == 0

    again = runner.invoke(main, ["init"])

    assert again.exit_code == 0, again.output
    assert not ADMIN_TOKEN.search(again.output)
    assert "created environment" not in again.output
    assert "admin token exists" in again.output
    app = create_app({"DATABASE_URL": cli_env, "TESTING": True})
    try:
        store = app.extensions["flagserver.store"]
        assert [t["kind"] for t in store.list_tokens()] == ["admin"]
        assert [e["key"] for e in store.list_environments()] == ["production", "staging"]
    finally:
        app.extensions["flagserver.store"].close()


# --- tokens ------------------------------------------------------------------------------------

def test_tokens_create_admin_prints_a_token_that_works(runner, shared):
    result = runner.invoke(main, ["tokens", "create", "--kind", "admin", "--name", "ops"])

    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert ADMIN_TOKEN.fullmatch(token)
    response = shared.test_client().get("/api/v1/tokens", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert [(t["name"], t["kind"]) for t in response.get_json()["tokens"]] == [("ops", "admin")]


def test_tokens_create_sdk_prints_a_key_for_its_environment(runner, shared):
    result = runner.invoke(main, ["tokens", "create", "--kind", "sdk", "--env", "staging", "--name", "web"])

    assert result.exit_code == 0, result.output
    key = result.stdout.strip()
    assert SDK_KEY.fullmatch(key)
    response = shared.test_client().get("/api/v1/sdk/config", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200
    assert response.get_json()["environment"] == "staging"


@pytest.mark.parametrize(("args", "message"), [
    (["--kind", "sdk", "--name", "web"], "needs --env"),
    (["--kind", "admin", "--env", "production", "--name", "ops"], "not bound to an environment"),
    (["--kind", "sdk", "--env", "nope", "--name", "web"], "no environment 'nope'"),
])
def test_tokens_create_refuses_with_exit_1_and_a_message(runner, shared, args, message):
    before = storage_state(shared)

    result = runner.invoke(main, ["tokens", "create", *args])

    assert result.exit_code == 1
    assert message in result.stderr
    assert result.stderr.startswith("error: ")
    assert not ADMIN_TOKEN.search(result.output) and not SDK_KEY.search(result.output)
    assert storage_state(shared) == before


def test_tokens_create_with_an_unknown_kind_is_a_usage_error(runner, shared):
    result = runner.invoke(main, ["tokens", "create", "--kind", "root", "--name", "x"])

    assert result.exit_code == 2
    assert "root" in result.output


# --- flags -------------------------------------------------------------------------------------

def test_flags_list_shows_key_state_rollout_rules_and_version(runner, shared, client, admin):
    create_flag(client, admin, key="new-checkout", enabled=True, rollout=12.5,
                rules=[{"id": "staff", "conditions": [{"attribute": "email", "op": "ends_with",
                                                        "values": ["@company.com"]}], "serve": "on"}])
    create_flag(client, admin, key="layout", variants=["control", "blue"], rollout={"control": 5000, "blue": 5000})

    result = runner.invoke(main, ["flags", "list", "--env", "production"])

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["KEY", "STATE", "ROLLOUT", "RULES", "VERSION"]
    assert [line.split() for line in lines[1:]] == [
        ["layout", "off", "weights", "0", "1"],
        ["new-checkout", "on", "12.5%", "1", "1"],
    ]
    staging = runner.invoke(main, ["flags", "list", "--env", "staging"])
    assert [line.split()[:3] for line in staging.stdout.splitlines()[1:]] == [
        ["layout", "off", "weights"], ["new-checkout", "off", "0%"]]


def test_flags_list_json(runner, shared, client, admin):
    create_flag(client, admin, key="f", enabled=True, rollout=5)

    result = runner.invoke(main, ["flags", "list", "--env", "production", "--json"])

    assert result.exit_code == 0, result.output
    flags = json.loads(result.stdout)
    assert [(f["key"], f["enabled"], f["rollout"], f["version"]) for f in flags] == [("f", True, 5, 1)]


def test_flags_list_of_an_unknown_environment_exits_1(runner, shared):
    result = runner.invoke(main, ["flags", "list", "--env", "nope"])

    assert result.exit_code == 1
    assert "no environment 'nope'" in result.stderr


@pytest.mark.parametrize(("percent", "stored"), [("25", 25), ("12.5", 12.5), ("0.01", 0.01), ("100", 100),
                                                 ("0", 0)])
def test_set_percentage_stores_the_rollout_and_enables_the_flag(runner, shared, client, admin, percent, stored):
    create_flag(client, admin, key="f", enabled=False, rollout=5)
    sdk_etag = client.get("/api/v1/sdk/config?environment=production", headers=admin).headers["ETag"]

    result = runner.invoke(main, ["flags", "set-percentage", "f", percent, "--env", "production"])

    assert result.exit_code == 0, result.output
    flag = flag_of(shared, "f")
    assert (flag["rollout"], flag["enabled"], flag["version"]) == (stored, True, 2)
    assert f"{stored}%" in result.stdout and "version 2" in result.stdout
    assert flag_of(shared, "f", "staging")["rollout"] == 0  # only the named environment
    entry = shared.extensions["flagserver.store"].list_audit(target_key="f", limit=1)[0]
    assert entry["actor"].startswith("cli")
    # SDKs see it on their next poll: the config document moved on.
    assert client.get("/api/v1/sdk/config?environment=production", headers=admin).headers["ETag"] != sdk_etag


@pytest.mark.parametrize(("percent", "message"), [
    ("101", "rollout"),
    ("100.001", "rollout"),
    ("12.345", "0.01"),
    ("nan", "rollout"),
])
def test_set_percentage_refuses_a_bad_percentage_with_exit_1(runner, shared, client, admin, percent, message):
    create_flag(client, admin, key="f", enabled=False, rollout=5)
    before = storage_state(shared)

    result = runner.invoke(main, ["flags", "set-percentage", "f", percent, "--env", "production"])

    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: ")
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert storage_state(shared) == before


def test_set_percentage_that_is_not_a_number_is_a_usage_error(runner, shared, client, admin):
    create_flag(client, admin, key="f")

    result = runner.invoke(main, ["flags", "set-percentage", "f", "lots", "--env", "production"])

    assert result.exit_code == 2
    assert flag_of(shared, "f")["version"] == 1


def test_kill_switches_the_flag_off_and_keeps_its_rollout(runner, shared, client, admin):
    create_flag(client, admin, key="f", enabled=True, rollout=40)

    result = runner.invoke(main, ["flags", "kill", "f", "--env", "production"])

    assert result.exit_code == 0, result.output
    assert "killed" in result.stdout
    flag = flag_of(shared, "f")
    assert (flag["enabled"], flag["rollout"], flag["version"]) == (False, 40, 2)
    evaluation = client.post("/api/v1/envs/production/evaluate", json={"flag": "f", "user": {"key": "u"}},
                             headers=admin).get_json()
    assert (evaluation["variant"], evaluation["reason"]) == ("off", "DISABLED")


@pytest.mark.parametrize(("args", "message"), [
    (["flags", "set-percentage", "ghost", "25", "--env", "production"], "no flag 'ghost'"),
    (["flags", "set-percentage", "f", "25", "--env", "nope"], "no environment 'nope'"),
    (["flags", "kill", "ghost", "--env", "production"], "no flag 'ghost'"),
    (["flags", "kill", "f", "--env", "nope"], "no environment 'nope'"),
])
def test_unknown_flag_or_environment_exits_1_with_a_message(runner, shared, client, admin, args, message):
    create_flag(client, admin, key="f", enabled=True, rollout=40)
    before = storage_state(shared)

    result = runner.invoke(main, args)

    assert result.exit_code == 1, result.output
    assert result.stderr.strip() == f"error: {message}"
    assert storage_state(shared) == before


# --- serve: a real gunicorn with two workers ------------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.slow
def test_serve_runs_gunicorn_that_serves_the_sdk_config(runner, cli_env, tmp_path):
    assert runner.invoke(main, ["init"]).exit_code == 0
    created = runner.invoke(main, ["tokens", "create", "--kind", "sdk", "--env", "production", "--name", "web"])
    assert created.exit_code == 0, created.output
    sdk_key = created.stdout.strip()
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-c", "from flagserver.cli import main; main(prog_name='flagserver')",
         "serve", "--port", str(port), "--workers", "2"],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        with requests.Session() as http:
            wait_for(lambda: process.poll() is None and http.get(f"{base}/healthz", timeout=2).status_code == 200,
                     timeout=30)
            assert http.get(f"{base}/readyz", timeout=5).json()["status"] == "ready"
            # Several requests: with two workers, both are likely to answer; they must agree.
            responses = [http.get(f"{base}/api/v1/sdk/config", headers={"Authorization": f"Bearer {sdk_key}"},
                                  timeout=5) for _ in range(6)]
            assert {r.status_code for r in responses} == {200}
            assert responses[0].json()["environment"] == "production"
            assert len({r.headers["ETag"] for r in responses}) == 1
            not_modified = http.get(f"{base}/api/v1/sdk/config", timeout=5, headers={
                "Authorization": f"Bearer {sdk_key}", "If-None-Match": responses[0].headers["ETag"]})
            assert not_modified.status_code == 304
            assert http.get(f"{base}/api/v1/envs", headers={"Authorization": f"Bearer {sdk_key}"},
                            timeout=5).status_code == 403
    finally:
        process.send_signal(signal.SIGTERM)  # gunicorn's graceful shutdown
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        log.close()
    output = (tmp_path / "serve.log").read_text(errors="replace")
    assert process.returncode == 0, output[-2000:]
    assert "Booting worker" in output
