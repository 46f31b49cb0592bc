"""The `flagserver` command: serve, init, tokens, flags (and, later, rollouts and the demo)."""

from __future__ import annotations

import getpass
import json
import sys
from typing import Any

import click
from flask import Flask

from . import create_app
from .auth import create_token
from .errors import APIError
from .storage import Store, StoreError
from .writes import change_flag

DEFAULT_ENVIRONMENTS = ("production", "staging")


def _app() -> Flask:
    return create_app()


def _store(app: Flask) -> Store:
    return app.extensions["flagserver.store"]  # type: ignore[no-any-return]


def _cli_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:
        return "cli"


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _run(action: Any) -> Any:
    """Turn the errors a user can cause into one line and exit status 1."""
    try:
        return action()
    except APIError as exc:
        _fail(exc.message)
    except StoreError as exc:
        _fail(str(exc))


@click.group()
def main() -> None:
    """The flag server: feature flags whose rollouts run themselves.

    Storage comes from FLAGSERVER_DATABASE_URL (default: an SQLite file in the
    instance folder); see `flagserver serve --help`.
    """


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=2, show_default=True, type=int, help="gunicorn worker processes")
@click.option("--threads", default=4, show_default=True, type=int, help="threads per worker")
def serve(host: str, port: int, workers: int, threads: int) -> None:
    """Run the server under gunicorn (the production server)."""
    from .serving import run_gunicorn

    run_gunicorn(host=host, port=port, workers=workers, threads=threads)


@main.command()
def init() -> None:
    """Create the database, the environments production and staging, and a first admin token."""
    app = _app()
    store = _store(app)
    for env in DEFAULT_ENVIRONMENTS:
        if store.get_environment(env) is None:
            store.create_environment(env, env.capitalize(), actor=_cli_actor())
            click.echo(f"created environment {env}")
    click.echo(f"database: {app.config['DATABASE_URL']}")
    if any(t["kind"] == "admin" for t in store.list_tokens()):
        click.echo("an admin token exists already; create another with `flagserver tokens create --kind admin`")
        return
    record = create_token(store, "admin", "first-admin", None, _cli_actor())
    click.echo("your first admin token (shown once, keep it safe):")
    click.echo(record["token"])


@main.group()
def tokens() -> None:
    """Admin tokens and SDK keys."""


@tokens.command("create")
@click.option("--kind", type=click.Choice(["admin", "sdk"]), required=True)
@click.option("--env", "environment", default=None, help="the environment of an SDK key")
@click.option("--name", required=True)
def tokens_create(kind: str, environment: str | None, name: str) -> None:
    """Create a token and print its secret (shown once)."""
    store = _store(_app())
    if kind == "sdk" and not environment:
        _fail("an SDK key needs --env")
    if kind == "admin" and environment:
        _fail("admin tokens are not bound to an environment; leave out --env")
    if environment and store.get_environment(environment) is None:
        _fail(f"no environment {environment!r}")
    record = create_token(store, kind, name, environment, _cli_actor())
    click.echo(record["token"])


@main.group()
def flags() -> None:
    """Flags of an environment."""


@flags.command("list")
@click.option("--env", "environment", default="production", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def flags_list(environment: str, as_json: bool) -> None:
    """List flags: key, on/off, rollout, version."""
    store = _store(_app())
    if store.get_environment(environment) is None:
        _fail(f"no environment {environment!r}")
    records = store.list_flags(environment)
    if as_json:
        click.echo(json.dumps(records, indent=2))
        return
    click.echo(f"{'KEY':30} {'STATE':8} {'ROLLOUT':>10} {'RULES':>5} {'VERSION':>7}")
    for flag in records:
        rollout = flag["rollout"]
        shown = f"{rollout:g}%" if isinstance(rollout, (int, float)) else "weights"
        state = "on" if flag["enabled"] else "off"
        click.echo(f"{flag['key']:30} {state:8} {shown:>10} {len(flag['rules']):>5} {flag['version']:>7}")


@flags.command("set-percentage")
@click.argument("key")
@click.argument("percent", type=float)
@click.option("--env", "environment", default="production", show_default=True)
def flags_set_percentage(key: str, percent: float, environment: str) -> None:
    """Set the share of users who get the flag (0-100, steps of 0.01); enables the flag."""
    store = _store(_app())
    value: float | int = int(percent) if percent.is_integer() else percent
    record = _run(lambda: change_flag(store, environment, key, {"rollout": value, "enabled": True},
                                      actor=_cli_actor()))
    click.echo(f"{key} in {environment}: {record['rollout']}% (version {record['version']})")


@flags.command("kill")
@click.argument("key")
@click.option("--env", "environment", default="production", show_default=True)
def flags_kill(key: str, environment: str) -> None:
    """Switch a flag off for everyone (the kill switch)."""
    store = _store(_app())
    record = _run(lambda: change_flag(store, environment, key, {"enabled": False}, actor=_cli_actor()))
    click.echo(f"{key} in {environment}: killed (version {record['version']})")
