"""Running the app under gunicorn from the `flagserver serve` command."""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    def __init__(self, options: dict[str, Any]) -> None:
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from . import create_app

        return create_app()


def run_gunicorn(*, host: str, port: int, workers: int, threads: int) -> None:
    """Serve `create_app()` with gunicorn's threaded workers; each worker builds its own app
    (no preload), so each has its own storage connections."""
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
    }).run()
