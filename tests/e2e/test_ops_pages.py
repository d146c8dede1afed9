"""The operations pages in Chromium against a real `fleet up --demo`: the kill switch stops
the next sweep and its release (raised by one person, approved by another, never by the
one who raised it) resumes them; audit verify shows intact; provisioning validates a
manifest by path before sending; every page checked with axe and photographed."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import redis

from fleet.monitoring import sweep as sweeping
from tests.e2e.conftest import Stack, check_a11y, shot, sign_in, wait_for

# The e2e stack sweeps every 5 s and sends approved work every 5 s (conftest).
SWEEP_S = 5.0
APPROVALS_SWEEP_S = 5.0  # the e2e policy's approvals.sweep_s

# The session's `fleet up --demo` starts inside the first test (minutes on a loaded box),
# and the resume waits for one approvals sweep: more than the suite's default 300 s.
pytestmark = pytest.mark.timeout(900)


def _stats(stack: Stack) -> dict[str, int]:
    # The embedded Redis's password, generated once into the data directory.
    password = (stack.data_dir / "redis" / "password").read_text().strip()
    port = int(stack.env["FLEET_REDIS__EMBEDDED_PORT"])
    r = redis.Redis(port=port, password=password, decode_responses=True)
    try:
        return {k: int(v) for k, v in r.hgetall(sweeping.STATS_KEY).items()}
    finally:
        r.close()


def _pull(page: Any, button: str, reason: str, target: str | None = None) -> None:
    """A lever of the kill switch page: its form, then the confirmation step."""
    form = page.locator("form", has=page.get_by_role("button", name=button))
    if target is not None:
        form.locator("input[name=target]").fill(target)
    form.locator("input[name=reason]").fill(reason)
    form.get_by_role("button", name=button).click()
    page.get_by_role("heading", name="Confirm:").wait_for()


def test_the_kill_switch_stops_the_next_sweep_and_a_second_person_releases_it(
    stack: Stack, new_page: Any, shots: Path
) -> None:
    first, second = new_page(), new_page()
    sign_in(first, stack, stack.people["approver"], "/console/control")
    first.get_by_role("heading", name="Kill switch").wait_for()
    check_a11y(first)
    shot(first, shots, "control-running")

    _pull(first, "Pause the control loop…", "e2e: stop everything")
    check_a11y(first)
    shot(first, shots, "control-confirm")
    first.get_by_role("button", name="Confirm: Pause the control loop").click()
    first.locator("#loop-state", has_text="Paused").wait_for()
    paused_at = _stats(stack)
    # The next sweep is skipped, and none starts while the loop is paused.
    wait_for(
        lambda: _stats(stack).get("skipped_paused", 0) > paused_at.get("skipped_paused", 0),
        3 * SWEEP_S,
        "a sweep skipped by the pause",
    )
    started = _stats(stack).get("started", 0)
    shot(first, shots, "control-paused")
    check_a11y(first)

    _pull(first, "Ask to resume…", "e2e: incident over")
    first.get_by_role("button", name="Confirm: Ask to resume the control loop").click()
    first.get_by_role("status").filter(has_text="approval request").wait_for()

    # The one who raised it is shown no vote, and the loop stays paused.
    first.goto(f"{stack.url}/console/approvals")
    request = first.locator("article", has_text="resume_control_loop")
    request.wait_for()
    assert request.get_by_text("You raised this request").is_visible()
    assert request.get_by_role("button", name="Approve").count() == 0
    check_a11y(first)
    shot(first, shots, "approvals-own-request")

    sign_in(second, stack, stack.people["approver2"], "/console/approvals")
    theirs = second.locator("article", has_text="resume_control_loop")
    assert "HIGH" in theirs.inner_text() and "0 of 1 approval" in theirs.inner_text()
    check_a11y(second)
    shot(second, shots, "approvals")
    theirs.get_by_role("button", name="Approve").click()
    second.get_by_role("status").filter(has_text="now approved").wait_for()
    assert _stats(stack).get("started", 0) == started, "no sweep ran while paused"

    # The approvals sweep sends the resume; the sweeps run again.
    wait_for(
        lambda: _stats(stack).get("started", 0) > started,
        APPROVALS_SWEEP_S + 3 * SWEEP_S,
        "a sweep after the approved resume",
    )
    first.goto(f"{stack.url}/console/control")
    first.locator("#loop-state", has_text="Running").wait_for()
    shot(first, shots, "control-resumed")


def test_audit_verify_shows_intact_and_the_other_pages_pass_axe(
    stack: Stack, page: Any, shots: Path
) -> None:
    sign_in(page, stack, stack.people["operator"], "/console/audit")
    status = page.locator("#verify-status")
    assert status.inner_text().startswith("Intact"), status.inner_text()
    check_a11y(page)
    shot(page, shots, "audit")

    page.goto(f"{stack.url}/console/provisioning")
    page.get_by_role("heading", name="Jobs").wait_for()
    assert page.locator("progress").count() >= 1  # the demo's own job
    check_a11y(page)
    shot(page, shots, "provisioning")
    page.get_by_label("Manifest (YAML or JSON)").fill(
        "fleet: demo\nenvironment: nowhere\nagents: []\n"
    )
    page.get_by_role("button", name="Validate").click()
    problems = page.locator("#problems")
    problems.wait_for()
    assert "environment" in problems.inner_text()
    check_a11y(page)
    shot(page, shots, "provisioning-problems")

    page.goto(f"{stack.url}/console/money?fleet=demo")
    page.get_by_role("heading", name="Model mix today").wait_for()
    check_a11y(page)
    shot(page, shots, "money")

    # Last week's review, and this week's so far: the demo's callers' tasks are in it.
    assert page.get_by_role("link", name="The weekly FinOps review").count() == 1
    page.get_by_role("link", name="this week so far").click()
    page.get_by_role("heading", name=re.compile(r"^FinOps review — fleet demo, week ")).wait_for()
    assert "under way" in page.locator(".finops-review").inner_text()
    check_a11y(page)
    shot(page, shots, "finops-review")

    def scaling_decided() -> bool:
        page.goto(f"{stack.url}/console/scaling")
        page.get_by_role("heading", name="Segments").wait_for()
        return page.get_by_test_id("acted").count() > 0

    wait_for(scaling_decided, 60, "a decision of the autoscaler's pass (every 10 s here)", 2)
    assert page.get_by_role("button", name="Ask to enforce").count() >= 1
    # The demo's segments are in observe mode: no decision is shown as acted upon.
    acted = page.get_by_test_id("acted").all_inner_texts()
    assert acted and all(a.startswith("no") for a in acted), acted
    check_a11y(page)
    shot(page, shots, "scaling")
