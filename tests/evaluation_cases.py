"""The evaluation cases of `tests/cases/*.json`, for every suite that evaluates.

Each file is `{"description", "config", "tests": [...]}`; a test is
`{"name", "flag", "user", "default", "expect"}` where `expect` lists the fields of
the `Evaluation` it checks (always `variant` and `reason`). The engine, the
offline client, the server's evaluate endpoint and the benchmarks all run these
same cases:

    from tests.evaluation_cases import case_ids, load_cases

    CASES = load_cases()

    @pytest.mark.parametrize(("file_name", "case", "config"), CASES, ids=case_ids(CASES))
    def test_case(file_name, case, config): ...
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CASES_DIR = Path(__file__).parent / "cases"

# The fields of an `Evaluation` a case may check.
EXPECT_FIELDS = frozenset({"variant", "reason", "rule_id", "error_code", "enabled", "randomized"})

Case = tuple[str, dict[str, Any], dict[str, Any]]


def load_cases(directory: Path = CASES_DIR) -> list[Case]:
    """Every case as `(file_name, case, config)`, files in name order, cases in file order.

    The config dict is shared by the cases of one file (do not mutate it). Raises
    `ValueError` naming the file and case when a file does not have the format.
    """
    out: list[Case] = []
    for path in sorted(directory.glob("*.json")):
        document = json.loads(path.read_text(encoding="utf-8"))
        config = document["config"]
        names: set[str] = set()
        for case in document["tests"]:
            _check_case(path.name, case, names)
            out.append((path.name, case, config))
    return out


def case_ids(cases: list[Case]) -> list[str]:
    """Readable test ids: `operators/in: listed value`."""
    return [f"{file_name.removesuffix('.json')}/{case['name']}" for file_name, case, _ in cases]


def _check_case(file_name: str, case: Any, names: set[str]) -> None:
    where = f"{file_name}: {case.get('name', case) if isinstance(case, dict) else case!r}"
    if not isinstance(case, dict) or not {"name", "flag", "user", "expect"} <= case.keys():
        raise ValueError(f"{where}: a case needs name, flag, user and expect")
    if case["name"] in names:
        raise ValueError(f"{where}: duplicate case name")
    names.add(case["name"])
    expect = case["expect"]
    if not {"variant", "reason"} <= expect.keys():
        raise ValueError(f"{where}: expect must check variant and reason")
    unknown = expect.keys() - EXPECT_FIELDS
    if unknown:
        raise ValueError(f"{where}: expect has unknown fields {sorted(unknown)}")
