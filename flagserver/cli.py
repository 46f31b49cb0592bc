"""The `flagserver` command: serve, controller, demo, init, tokens, flags and rollout."""

from __future__ import annotations

import getpass
import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any

import click
from flask import Flask

from . import create_app
from .auth import create_token
from .errors import APIError
from .storage import Store, StoreError
from .writes import change_flag

if TYPE_CHECKING:
    from .rollout.controller import RolloutService

DEFAULT_ENVIRONMENTS = ("production", "staging")


def _app() -> Flask:
    return create_app()


def _store(app: Flask) -> Store:
    return app.extensions["flagserver.store"]  # type: ignore[no-any-return]


def _rollouts(app: Flask) -> RolloutService:
    return app.extensions["flagserver.rollouts"]  # type: ignore[no-any-return]


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
@click.option("--controller/--no-controller", default=True, show_default=True,
              help="also run the rollout controller (one acts at a time, whatever runs it)")
def serve(host: str, port: int, workers: int, threads: int, controller: bool) -> None:
    """Run the server under gunicorn (the production server), and the rollout controller."""
    from .serving import run_gunicorn

    run_gunicorn(host=host, port=port, workers=workers, threads=threads, with_controller=controller)


@main.command("controller")
@click.option("--poll", default=1.0, show_default=True, type=float, help="seconds between looks")
@click.option("--parent-pid", default=None, type=int, hidden=True, help="stop when this process is gone")
def controller_command(poll: float, parent_pid: int | None) -> None:
    """Run the rollout controller on its own (it waits while another one holds the lease).

    SIGTERM or Ctrl-C stops it after the current look; the webhooks it queued are
    then delivered (for up to CLOSE_TIMEOUT seconds) before it exits."""
    import signal
    import threading
    import time

    from .rollout.controller import Controller
    from .rollout.webhooks import CLOSE_TIMEOUT

    app = _app()
    webhooks = _rollouts(app).webhooks
    controller = Controller(_store(app), webhooks=webhooks)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if parent_pid is not None:
        def watch_parent() -> None:
            while not stop.wait(1.0):
                if os.getppid() != parent_pid:
                    stop.set()
        threading.Thread(target=watch_parent, name="flagserver.parent-watch", daemon=True).start()
    click.echo(f"rollout controller {controller.holder}: looking every {poll:g}s", err=True)
    try:
        controller.run_forever(stop, time.time, poll)
    except KeyboardInterrupt:
        pass
    finally:
        # The sender's threads are daemons: without this, a rollback's webhook queued
        # just before SIGTERM would die with the process.
        if webhooks is not None:
            webhooks.close(CLOSE_TIMEOUT)


@main.command()
@click.option("--seconds-per-interval", default=1.0, show_default=True, type=float,
              help="the controller's interval (the demo's time scale)")
@click.option("--users-per-second", default=2000, show_default=True, type=int)
@click.option("--port", default=8000, show_default=True, type=int, help="0 picks a free port")
@click.option("--keep-serving/--exit", default=True, show_default=True,
              help="keep the demo server up afterwards (Ctrl-C stops it)")
def demo(seconds_per_interval: float, users_per_second: int, port: int, keep_serving: bool) -> None:
    """Watch a rollout run itself: a healthy release climbs to 100%, a harmful one is rolled back."""
    from .demo import run_demo

    results = run_demo(seconds_per_interval=seconds_per_interval, users_per_second=users_per_second, port=port,
                       keep_serving=keep_serving)
    if results.get("new-checkout") != "completed" or results.get("checkout-redesign") != "rolled_back":
        _fail(f"the demo did not tell its story: {results}")


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


@main.group()
def rollout() -> None:
    """Automatic rollouts: start, status, approve, pause, resume, rollback, abort."""


def _rollout_action(action: str, key: str, environment: str) -> None:
    from .rollout.actions import act
    from .rollout.webhooks import CLOSE_TIMEOUT

    service = _rollouts(_app())
    result = _run(lambda: act(service, environment, key, action, actor=_cli_actor(), now=time.time()))
    stage = result.plan_state.stage_index if result.plan_state is not None else None
    where = f" at {result.config.stages[stage].percentage:g}%" if stage is not None else ""
    click.echo(f"{key} in {environment}: {result.status.replace('_', ' ')}{where}")
    if service.webhooks is not None:
        service.webhooks.close(CLOSE_TIMEOUT)


for _action, _help in (("start", "Start the flag's rollout plan at its first stage."),
                       ("approve", "Approve the promotion the rollout is waiting for."),
                       ("pause", "Pause the rollout where it stands."),
                       ("resume", "Resume a paused rollout."),
                       ("rollback", "Roll the flag back now (to 0, or the previous stage if the plan says so)."),
                       ("abort", "Stop the rollout and leave the flag where it is.")):
    def _make(action: str) -> Any:
        @click.argument("key")
        @click.option("--env", "environment", default="production", show_default=True)
        def command(key: str, environment: str) -> None:
            _rollout_action(action, key, environment)
        return command
    rollout.command(_action, help=_help)(_make(_action))


@rollout.command("status")
@click.argument("key")
@click.option("--env", "environment", default="production", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def rollout_status(key: str, environment: str, as_json: bool) -> None:
    """Where the rollout stands, and its latest decisions."""
    from .rollout.actions import describe

    service = _rollouts(_app())
    rollout_view = _run(lambda: describe(service, service.load(environment, key), decisions_limit=10))
    if as_json:
        click.echo(json.dumps(rollout_view, indent=2))
        return
    index = rollout_view["stage_index"]
    ladder = " -> ".join(f"[{p:g}%]" if i == index else f"{p:g}%" for i, p in enumerate(rollout_view["stages"]))
    click.echo(f"{key} in {environment}: {rollout_view['status'].replace('_', ' ')}   {ladder}")
    for decision in rollout_view["decisions"]:
        stamp = time.strftime("%H:%M:%S", time.localtime(decision["at"]))
        click.echo(f"  {stamp}  {decision['reason']}")
