"""What every benchmark here shares: its section of RESULTS.md and the facts it records.

Each benchmark owns one section of RESULTS.md, between `<!-- NAME:start -->` and
`<!-- NAME:end -->`, and refreshes only that section (`write_section`); the facts
about the machine and the code that every section names come from
`common_machine_info` and the git helpers. A few small helpers the benchmarks
that run a server share live here too (`free_port`, `delete_redis_prefix`).

The benchmarks are scripts, not a package: each puts this folder on `sys.path`
and imports this module by its name.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path

BENCHMARKS_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCHMARKS_DIR.parent
RESULTS_PATH = BENCHMARKS_DIR / "RESULTS.md"
RESULTS_HEADER = """# Benchmark results

Recorded by the benchmarks in this folder. Each benchmark refreshes only its own
section, between its `<!-- NAME:start -->` and `<!-- NAME:end -->` markers; figures
are from the machine and the date each section names, so compare rows within one
section rather than across sections.
"""

_START = re.compile(r"<!-- (\S+):start -->")


# -- the sections of RESULTS.md -----------------------------------------------------------


def section_markers(name: str) -> tuple[str, str]:
    """The start and end markers of benchmark `name`'s section."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def _section_pattern(name: str, group: bool = False) -> re.Pattern[str]:
    start, end = section_markers(name)
    body = r"(.*?)" if group else r".*?"
    return re.compile(re.escape(start) + body + re.escape(end), re.DOTALL)


def read_section(path: Path, name: str) -> str | None:
    """What stands between `name`'s markers in the file at `path` (markers excluded);
    None when the file or the section is missing."""
    if not path.exists():
        return None
    match = _section_pattern(name, group=True).search(path.read_text(encoding="utf-8"))
    return None if match is None else match.group(1)


def write_section(path: Path, section: str) -> None:
    """Put `section` into the file at `path`, replacing only the section of the same
    name (between its markers) and leaving every other byte alone; append it when the
    file has no such section, and create the file with RESULTS_HEADER if missing.

    `section` names itself: it must begin with its start marker and end with its end
    marker (as every `render_section` makes it), else ValueError and nothing is written.
    """
    match = _START.match(section)
    if match is None or not section.endswith(section_markers(match.group(1))[1]):
        raise ValueError("a section must begin with `<!-- NAME:start -->` and end with `<!-- NAME:end -->`")
    text = path.read_text(encoding="utf-8") if path.exists() else RESULTS_HEADER
    pattern = _section_pattern(match.group(1))
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text, encoding="utf-8")


# -- the machine and the code -------------------------------------------------------------


def cpu_model(fallback: str | None = None) -> str:
    """The CPU's model name from /proc/cpuinfo; where there is none, `fallback`
    (by default `platform.processor()`, or "unknown")."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return fallback if fallback is not None else (platform.processor() or "unknown")


def python_version() -> str:
    """The interpreter and its version, e.g. `CPython 3.11.7`."""
    return f"{platform.python_implementation()} {platform.python_version()}"


def utc_minute() -> str:
    """Now, to the minute, e.g. `2026-11-27 08:40 UTC`."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def load_average(count: int = 3) -> str:
    """The first `count` load averages (1, 5, 15 minutes), e.g. `7.3, 10.3, 9.3`;
    "unknown" where the system does not say."""
    try:
        loads = os.getloadavg()[:count]
    except OSError:
        return "unknown"
    return ", ".join(f"{x:.1f}" for x in loads)


def common_machine_info(cpu_fallback: str | None = None) -> dict[str, str]:
    """The facts every section names: `cpu`, `nproc`, `python` and `date` (UTC, to the
    minute). Benchmarks add their own keys (versions, commit, load) to a copy."""
    return {
        "cpu": cpu_model(cpu_fallback),
        "nproc": str(os.cpu_count()),
        "python": python_version(),
        "date": utc_minute(),
    }


def dist_version(name: str) -> str:
    """The installed version of distribution `name`, or "unknown"."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def _git(cwd: Path, *args: str) -> str | None:
    try:
        return subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def git_commit(cwd: Path = REPO_ROOT) -> str | None:
    """The short hash of HEAD of the checkout at `cwd`; None when it is not a git
    checkout or git is missing."""
    return _git(cwd, "rev-parse", "--short", "HEAD") or None


def git_has_changes(paths: Sequence[str], cwd: Path = REPO_ROOT) -> bool | None:
    """Whether `paths` (relative to the checkout at `cwd`) have uncommitted changes;
    None when git cannot tell."""
    status = _git(cwd, "status", "--porcelain", "--", *paths)
    return None if status is None else bool(status)


# -- small helpers of the benchmarks that run a server --------------------------------------


def free_port() -> int:
    """A loopback port nobody listens on now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def delete_redis_prefix(url: str, prefix: str) -> int:
    """Delete every key under `prefix` (SCAN + DEL in slices of 500; never FLUSH* or
    KEYS) and return how many were deleted. Raises redis.RedisError if Redis fails."""
    import redis

    client = redis.Redis.from_url(url)
    deleted = 0
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += int(client.delete(*batch))
                batch.clear()
        if batch:
            deleted += int(client.delete(*batch))
    finally:
        client.close()
    return deleted
