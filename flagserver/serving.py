"""Running the app under gunicorn from the `flagserver serve` command."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from gunicorn.app.base import BaseApplication


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    def __init__(self, options: dict[str, Any]) -> None:
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            if key in self.cfg.settings:  # settings newer than the installed gunicorn are skipped
                self.cfg.set(key, value)

    def load(self) -> Any:
        from . import create_app

        return create_app()


def run_gunicorn(*, host: str, port: int, workers: int, threads: int, with_controller: bool = True) -> None:
    """Serve `create_app()` with gunicorn's threaded workers; each worker builds its own app
    (no preload), so each has its own storage connections. With `with_controller`, the
    rollout controller runs beside them in a process of its own, stopped with gunicorn."""
    controller = None
    if with_controller:
        controller = subprocess.Popen([sys.executable, "-m", "flagserver", "controller",
                                       "--parent-pid", str(os.getpid())])
    try:
        _serve(host, port, workers, threads)
    finally:
        if controller is not None:
            controller.terminate()
            try:
                controller.wait(10)
            except subprocess.TimeoutExpired:
                controller.kill()


def _serve(host: str, port: int, workers: int, threads: int) -> None:
    _Gunicorn({
        "bind": f"{host}:{port}",
        "workers": workers,
        "threads": threads,
        "worker_class": "gthread",
        "timeout": 30,
        "graceful_timeout": 10,
        "keepalive": 5,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "info",
        # Several servers on one machine would share one control socket path; nothing here uses it.
        "control_socket_disable": True,
    }).run()
