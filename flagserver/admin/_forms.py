"""HTML forms → the API's JSON bodies.

Inputs are named by the path of the field they edit in the API's JSON
(`rules[0].conditions[1].values`, `stages[2].percentage`), so the API's 422
`fields` map (same paths) puts each message beside its input. Parsing here is
only about the form's text: numbers from number boxes, one value per line,
checkboxes. Whether the result is valid is decided by the API's own schemas and
the engine (`flagserver.schemas`, `check_flag`, `RolloutPlanSchema`), which the
views call, so nothing is validated twice in two ways. What cannot be parsed is
passed on as text, for the schema to name.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from werkzeug.datastructures import MultiDict

NUMERIC_OPS = frozenset({"lt", "lte", "gt", "gte"})
TEMPORAL_OPS = frozenset({"before", "after"})
LIST_OPS = frozenset({"in", "not_in"})
SPLIT = "__split__"  # the "serve" choice meaning: this rule splits by its own percentage

# Operators in the order the editor lists them, with words for people.
OPERATORS: tuple[tuple[str, str], ...] = (
    ("in", "is one of"),
    ("not_in", "is not one of"),
    ("starts_with", "starts with"),
    ("ends_with", "ends with"),
    ("contains", "contains"),
    ("matches", "matches regex"),
    ("lt", "< (number)"),
    ("lte", "≤ (number)"),
    ("gt", "> (number)"),
    ("gte", "≥ (number)"),
    ("semver_eq", "= (semver)"),
    ("semver_lt", "< (semver)"),
    ("semver_lte", "≤ (semver)"),
    ("semver_gt", "> (semver)"),
    ("semver_gte", "≥ (semver)"),
    ("before", "before (time)"),
    ("after", "after (time)"),
)


def number(text: str) -> Any:
    """"25" → 25, "12.5" → 12.5, "7%" → 7; text that is no finite number comes back as
    it was (stripped), so the schema names it; "" → None."""
    text = text.strip()
    if not text:
        return None
    candidate = text[:-1].strip() if text.endswith("%") else text
    try:
        value = float(candidate)
    except ValueError:
        return text
    if not math.isfinite(value):
        return text
    if re.fullmatch(r"[-+]?\d+", candidate):
        return int(candidate)
    return value


def lines(text: str | None) -> list[str]:
    """Non-empty lines, stripped."""
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def words(text: str | None) -> list[str]:
    """Comma- or line-separated items (tags), stripped, empty ones dropped, order kept."""
    return [item.strip() for item in re.split(r"[,\n]", text or "") if item.strip()]


def indices(form: MultiDict[str, str], prefix: str) -> list[int]:
    """The item numbers present under `prefix` (`rules` → [0, 1, 3]), in order."""
    pattern = re.compile(re.escape(prefix) + r"\[(\d+)\]")
    found = {int(m.group(1)) for key in form for m in [pattern.match(key)] if m}
    return sorted(found)


def condition_values(op: str, text: str, as_json: bool) -> list[Any]:
    values: list[Any] = []
    for line in lines(text):
        if op in NUMERIC_OPS:
            values.append(number(line))
        elif op in TEMPORAL_OPS:
            parsed = number(line)
            values.append(parsed if isinstance(parsed, (int, float)) else line)
        elif as_json:
            try:
                values.append(json.loads(line))
            except ValueError:
                values.append(line)
        else:
            values.append(line)
    return values


def conditions(form: MultiDict[str, str], prefix: str) -> list[dict[str, Any]]:
    out = []
    for j in indices(form, f"{prefix}conditions"):
        at = f"{prefix}conditions[{j}]."
        op = form.get(at + "op", "in")
        as_json = form.get(at + "json_values") == "1"
        condition: dict[str, Any] = {
            "attribute": form.get(at + "attribute", "").strip(),
            "op": op,
            "values": condition_values(op, form.get(at + "values", ""), as_json),
            "ignore_case": form.get(at + "ignore_case") == "1",
            "negate": form.get(at + "negate") == "1",
        }
        out.append(condition)
    return out


def rule_rollout(text: str) -> Any:
    text = text.strip()
    if text.startswith("{"):
        try:
            return json.loads(text)
        except ValueError:
            return text
    return number(text)


def rules(form: MultiDict[str, str]) -> list[dict[str, Any]]:
    """The `rules` list of a flag from the rules editor."""
    out = []
    for i in indices(form, "rules"):
        at = f"rules[{i}]."
        rule: dict[str, Any] = {
            "id": form.get(at + "id", "").strip(),
            "segments": form.getlist(at + "segments"),
            "conditions": conditions(form, at),
        }
        serve = form.get(at + "serve", "")
        if serve == SPLIT:
            rule["rollout"] = rule_rollout(form.get(at + "rollout", ""))
            if rule["rollout"] is None:
                rule["rollout"] = ""
        else:
            rule["serve"] = serve
        out.append(rule)
    return out


def flag_rollout(form: MultiDict[str, str], variants: list[str]) -> Any:
    """The flag's `rollout`: a percentage, or variant weights given in percent
    (`weights.<variant>`) turned into basis points."""
    if form.get("rollout_kind") == "weights":
        weights: dict[str, Any] = {}
        for variant in variants:
            value = number(form.get(f"weights.{variant}", ""))
            if value is None:
                value = 0
            weights[variant] = round(value * 100) if isinstance(value, (int, float)) else value
        return weights
    value = number(form.get("rollout", ""))
    return "" if value is None else value


def flag_settings(form: MultiDict[str, str]) -> dict[str, Any]:
    """The global fields a flag's settings form edits."""
    out: dict[str, Any] = {
        "description": form.get("description", "").strip(),
        "tags": words(form.get("tags")),
        "owner": form.get("owner", "").strip() or None,
        "variants": lines(form.get("variants")),
        "bucket_by": form.get("bucket_by", "").strip() or "key",
    }
    salt = form.get("salt", "").strip()
    if salt:
        out["salt"] = salt
    return out


def new_flag(form: MultiDict[str, str]) -> dict[str, Any]:
    body = flag_settings(form)
    body["key"] = form.get("key", "").strip()
    if not body["variants"]:
        body["variants"] = ["off", "on"]
    body["enabled"] = form.get("enabled") == "1"
    return body


def segment(form: MultiDict[str, str], *, with_key: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "description": form.get("description", "").strip(),
        "included": lines(form.get("included")),
        "excluded": lines(form.get("excluded")),
        "conditions": conditions(form, ""),
        "percentage": number(form.get("percentage", "")),
        "bucket_by": form.get("bucket_by", "").strip() or "key",
    }
    if with_key:
        body["key"] = form.get("key", "").strip()
    return body


PLAN_STAGE_FIELDS = ("percentage", "min_duration_seconds", "min_users_per_arm", "margin", "max_hold_seconds")
PLAN_NUMBERS = ("interval_seconds", "alpha", "alpha_promotion", "tau_rel", "srm_alpha", "srm_concentration")


def plan(form: MultiDict[str, str]) -> dict[str, Any]:
    """A rollout plan body; blank boxes are left out, so the plan's defaults apply."""
    body: dict[str, Any] = {"stages": [], "guardrails": []}
    for i in indices(form, "stages"):
        stage: dict[str, Any] = {}
        for name in PLAN_STAGE_FIELDS:
            value = number(form.get(f"stages[{i}].{name}", ""))
            if value is not None:
                stage[name] = value
        body["stages"].append(stage)
    for i in indices(form, "guardrails"):
        guardrail: dict[str, Any] = {"event": form.get(f"guardrails[{i}].event", "").strip(),
                                     "kind": form.get(f"guardrails[{i}].kind", "conversion")}
        margin = number(form.get(f"guardrails[{i}].margin", ""))
        if margin is not None:
            guardrail["margin"] = margin
        body["guardrails"].append(guardrail)
    for name in ("mode", "rollback_to", "on_srm"):
        if form.get(name):
            body[name] = form[name]
    for name in PLAN_NUMBERS:
        value = number(form.get(name, ""))
        if value is not None:
            body[name] = value
    return body


def user(text: str) -> tuple[Any, str | None]:
    """The preview's user from JSON text: `(user, None)` or `(None, message)`."""
    text = text.strip()
    if not text:
        return None, "type a user as JSON, e.g. {\"key\": \"user-123\", \"email\": \"ada@example.com\"}"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
    except RecursionError:
        return None, "nested too deeply"
    if not isinstance(value, Mapping):
        return None, "must be a JSON object of attributes, with a \"key\""
    return value, None


def show(value: Any) -> str:
    """A value as a form shows it: numbers without a needless ".0", None as blank."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def show_values(values: Any, as_json: bool) -> str:
    if not isinstance(values, list):
        return show(values)
    if as_json:
        # Strings quoted, so that "42" stays a string and 42 a number.
        return "\n".join(json.dumps(v, ensure_ascii=False) for v in values)
    return "\n".join(show(v) for v in values)


def needs_json(values: Any) -> bool:
    """Whether a list operator's values hold numbers or booleans, which plain lines
    (read as text) would turn into strings."""
    return isinstance(values, list) and any(not isinstance(v, str) for v in values)
