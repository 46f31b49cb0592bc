"""The SDK distribution stands alone: flagsdk imports nothing but the standard library,
mmh3 and requests, never flagserver; its engine is pure (stdlib + mmh3, no I/O, no
clock, no randomness); and sdk/pyproject.toml depends on exactly mmh3 and requests."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

SDK = Path(__file__).resolve().parent.parent / "sdk"
PACKAGE = SDK / "flagsdk"
ALLOWED_THIRD_PARTY = {"mmh3", "requests"}
# What the engine may not touch: DESIGN says it is pure (no I/O, no clock, no globals).
IMPURE_FOR_THE_ENGINE = {"requests", "socket", "threading", "subprocess", "urllib", "http", "time", "random",
                         "os", "io", "asyncio", "multiprocessing", "secrets", "uuid", "flagsdk.client"}


def imported_modules(source: str, module: str) -> list[tuple[int, str]]:
    """`(line, absolute module)` for every import in `source`, relative ones resolved
    against `module` (a dotted name such as `flagsdk.engine.evaluate`), and for
    `__import__("x")` / `importlib.import_module("x")` calls with a literal name."""
    package = module.rsplit(".", 1)[0]  # the package a relative import starts from (also for __init__)
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # `from flagsdk import client` imports the submodule flagsdk.client
            found.extend((node.lineno, f"{target}.{alias.name}") for alias in node.names if alias.name != "*")
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in ("__import__", "import_module") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def sdk_modules() -> list[tuple[Path, str]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        dotted = ".".join(path.relative_to(SDK).with_suffix("").parts)
        out.append((path, dotted))
    return out


def foreign_imports(allowed_third_party: set[str], paths: list[tuple[Path, str]]) -> list[str]:
    """`file:line: module` for each import outside the stdlib, `allowed_third_party` and flagsdk."""
    allowed = set(sys.stdlib_module_names) | allowed_third_party | {"flagsdk"}
    return [
        f"{path.name}:{line}: {name}"
        for path, dotted in paths
        for line, name in imported_modules(path.read_text(encoding="utf-8"), dotted)
        if name.split(".")[0] not in allowed
    ]


def test_the_sdk_has_modules_to_check() -> None:
    names = {dotted for _, dotted in sdk_modules()}
    assert {"flagsdk.__init__", "flagsdk.client", "flagsdk.engine.evaluate", "flagsdk.engine.bucketing"} <= names


def test_flagsdk_never_imports_flagserver() -> None:
    offending = [f"{path.relative_to(SDK)}:{line}: {name}"
                 for path, dotted in sdk_modules()
                 for line, name in imported_modules(path.read_text(encoding="utf-8"), dotted)
                 if name.split(".")[0] == "flagserver"]
    assert offending == []


def test_flagsdk_imports_only_the_standard_library_mmh3_and_requests() -> None:
    assert foreign_imports(ALLOWED_THIRD_PARTY, sdk_modules()) == []


def test_the_engine_is_pure_stdlib_and_mmh3_without_io_clock_or_randomness() -> None:
    engine = [(p, d) for p, d in sdk_modules() if d.startswith("flagsdk.engine.")]
    assert len(engine) >= 5
    assert foreign_imports({"mmh3"}, engine) == []
    assert impure_imports(engine) == []


def impure_imports(paths: list[tuple[Path, str]]) -> list[str]:
    return [f"{path.name}:{line}: {name}"
            for path, dotted in paths
            for line, name in imported_modules(path.read_text(encoding="utf-8"), dotted)
            if any(name == bad or name.startswith(bad + ".") for bad in IMPURE_FOR_THE_ENGINE)]


def test_the_purity_check_catches_io_clock_and_the_client(tmp_path: Path) -> None:
    module = tmp_path / "probe.py"
    module.write_text("import time\nfrom os import environ\nfrom .. import client\nimport math\n", encoding="utf-8")
    reported = impure_imports([(module, "flagsdk.engine.probe")])
    assert [r.rsplit(": ", 1)[1] for r in reported] == ["time", "os", "os.environ", "flagsdk.client"]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import flagserver", ["flagserver"]),
        ("from flagserver.storage import open_store", ["flagserver.storage", "flagserver.storage.open_store"]),
        ("import flask, json", ["flask"]),
        ("from redis import Redis", ["redis", "redis.Redis"]),
        ("import importlib\nimportlib.import_module('flagserver.api')", ["flagserver.api"]),
        ("__import__('marshmallow')", ["marshmallow"]),
        ("if TYPE_CHECKING:\n    import flagserver", ["flagserver"]),
        ("from flagserver import storage", ["flagserver", "flagserver.storage"]),
        ("def f():\n    import numpy", ["numpy"]),
        ("import mmh3, requests, json\nfrom collections.abc import Mapping\nfrom .model import Flag", []),
    ],
)
def test_the_import_walker_sees_every_kind_of_import(tmp_path: Path, source: str, expected: list[str]) -> None:
    """The checks above can fail: the walker reports foreign imports wherever they hide."""
    module = tmp_path / "probe.py"
    module.write_text(source, encoding="utf-8")
    reported = foreign_imports(ALLOWED_THIRD_PARTY, [(module, "flagsdk.engine.probe")])
    assert [r.rsplit(": ", 1)[1] for r in reported] == expected


def test_relative_imports_resolve_inside_the_package() -> None:
    found = imported_modules("from ..client import User\nfrom . import bucketing\nfrom .model import Flag",
                             "flagsdk.engine.evaluate")
    assert [name for _, name in found] == ["flagsdk.client", "flagsdk.client.User", "flagsdk.engine",
                                           "flagsdk.engine.bucketing", "flagsdk.engine.model",
                                           "flagsdk.engine.model.Flag"]
    assert imported_modules("from . import client", "flagsdk.__init__") == [(1, "flagsdk"), (1, "flagsdk.client")]


def requirement_names(pyproject: str) -> list[str]:
    try:
        import tomllib
    except ImportError:  # Python 3.10: read the one array we need
        block = re.search(r"^dependencies\s*=\s*\[(.*?)\]", pyproject, re.S | re.M)
        assert block is not None
        dependencies = re.findall(r"[\"']([^\"']+)[\"']", block.group(1))
    else:
        dependencies = tomllib.loads(pyproject)["project"]["dependencies"]
    names = []
    for requirement in dependencies:
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
        assert match is not None, requirement
        names.append(re.sub(r"[-_.]+", "-", match.group(1)).lower())
    return names


def test_sdk_pyproject_depends_on_exactly_mmh3_and_requests() -> None:
    names = requirement_names((SDK / "pyproject.toml").read_text(encoding="utf-8"))
    assert sorted(names) == ["mmh3", "requests"]


def test_sdk_pyproject_has_no_optional_or_dynamic_dependencies() -> None:
    text = (SDK / "pyproject.toml").read_text(encoding="utf-8")
    try:
        import tomllib
    except ImportError:
        assert "optional-dependencies" not in text and "dynamic" not in text
        return
    project = tomllib.loads(text)["project"]
    assert "dependencies" not in project.get("dynamic", [])
    assert all(extra == [] for extra in project.get("optional-dependencies", {}).values())


def test_the_requirement_parser_sees_extra_dependencies() -> None:
    text = '[project]\nname = "x"\ndependencies = ["mmh3>=4.0", "requests>=2.28", "Flask_Login[x]==1"]\n'
    assert requirement_names(text) == ["mmh3", "requests", "flask-login"]
