"""One set of rollout rules for the API and the pages: `allowed_actions`,
`can_replace_plan` and `rollback_target` (flagserver/rollout/actions.py) are what
`act` and `put_plan` enforce and what the admin pages show; and the audit page
reads the log a page at a time."""

from __future__ import annotations

import re

import pytest
from flask import Flask
from flask.testing import FlaskClient

from flagserver.rollout.actions import ACTIONS, allowed_actions, can_replace_plan, rollback_target
from flagserver.rollout.plan import PlanConfig
from flagserver.rollout.state import STATUSES, PlanState
from tests.test_admin_pages import FLAGS, create_flag, sign_in, store_of

# action -> the statuses that allow it (as tests/test_rollout_api.py checks through the API)
ALLOWED_IN = {
    "start": {"draft", "rolled_back", "completed", "aborted"},
    "pause": {"running", "waiting_for_approval"},
    "resume": {"paused"},
    "approve": {"waiting_for_approval"},
    "rollback": {"running", "waiting_for_approval", "paused"},
    "abort": {"running", "waiting_for_approval", "paused"},
}
ROLLOUT = f"{FLAGS}/search-v2/rollout"


@pytest.fixture
def csrf(client: FlaskClient, admin_token: str) -> str:
    return sign_in(client, admin_token)


def config(rollback_to: str) -> PlanConfig:
    return PlanConfig.from_dict({"stages": [{"percentage": p} for p in (5, 25, 50, 100)],
                                 "guardrails": [{"event": "checkout", "kind": "conversion"}],
                                 "rollback_to": rollback_to})


@pytest.mark.parametrize("status", ["draft", *STATUSES])
def test_allowed_actions_are_those_the_status_allows(status: str) -> None:
    assert set(allowed_actions(status)) == {a for a in ACTIONS if status in ALLOWED_IN[a]}
    assert len(set(allowed_actions(status))) == len(allowed_actions(status))


def test_an_unknown_status_allows_nothing() -> None:
    assert allowed_actions("exploded") == ()


@pytest.mark.parametrize("status", ["draft", *STATUSES])
def test_a_plan_can_be_replaced_unless_it_runs_waits_or_is_paused(status: str) -> None:
    assert can_replace_plan(status) is (status not in ("running", "waiting_for_approval", "paused"))


@pytest.mark.parametrize(("rollback_to", "stage_index", "target"),
                         [("zero", 0, 0.0), ("zero", 2, 0.0), ("previous_stage", 0, 0.0),
                          ("previous_stage", 1, 5.0), ("previous_stage", 3, 50.0)])
def test_a_rollback_goes_to_zero_or_the_previous_stage(rollback_to: str, stage_index: int, target: float) -> None:
    state = PlanState(stage_index=stage_index, stage_started_at=1000.0)

    assert rollback_target(config(rollback_to), state) == target


def buttons(html: str) -> list[str]:
    return re.findall(r'/rollout/(start|pause|resume|approve|rollback|abort)"', html)


def test_the_rollout_page_offers_the_allowed_actions_and_locks_the_plan_while_it_runs(
        app: Flask, client: FlaskClient, csrf: str) -> None:
    create_flag(app, "search-v2")
    stages = {f"stages[{i}].percentage": str(p) for i, p in enumerate((5, 25, 50, 100))}
    saved = client.post(f"{ROLLOUT}/plan", data={"csrf_token": csrf, "guardrails[0].event": "checkout",
                                                 "guardrails[0].kind": "conversion",
                                                 "rollback_to": "previous_stage", **stages})
    assert saved.status_code == 302
    draft = client.get(ROLLOUT).text
    assert buttons(draft) == list(allowed_actions("draft"))
    assert "The plan cannot change" not in draft

    assert client.post(f"{ROLLOUT}/start", data={"csrf_token": csrf}).status_code == 302
    running = client.get(ROLLOUT).text

    assert buttons(running) == list(allowed_actions("running"))
    assert "The plan cannot change while the rollout is running" in running
    assert "back to 0% now?" in running  # the first stage rolls back to 0 even with previous_stage


def test_the_audit_page_shows_a_page_and_links_to_older_entries(app: Flask, client: FlaskClient, csrf: str) -> None:
    store = store_of(app)
    for n in range(55 - len(store.list_audit(limit=1000))):
        create_flag(app, f"flag-{n:02d}")
    assert len(store.list_audit(limit=1000)) == 55

    first = client.get("/admin/audit")
    assert first.status_code == 200
    assert first.text.count('class="audit-entry"') == 50
    assert "routine checks" not in first.text
    older = re.search(r'href="([^"]*before=(\d+)[^"]*)">Older entries', first.text)
    assert older, "no link to older entries"
    assert int(older.group(2)) == store.list_audit(limit=50)[-1]["id"]

    second = client.get(older.group(1).replace("&amp;", "&"))
    assert second.text.count('class="audit-entry"') == 5
    assert "Older entries" not in second.text


def test_a_full_last_page_has_no_link_to_older_entries(app: Flask, client: FlaskClient, csrf: str) -> None:
    store = store_of(app)
    for n in range(50 - len(store.list_audit(limit=1000))):
        create_flag(app, f"flag-{n:02d}")

    page = client.get("/admin/audit").text

    assert page.count('class="audit-entry"') == 50
    assert "Older entries" not in page
