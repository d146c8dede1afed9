"""The console in Chromium against a real `fleet up --demo`: sign-in and the pages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.e2e.conftest import Stack, check_a11y, shot, sign_in


def test_signing_in_opens_the_overview_and_a_bad_password_does_not(
    stack: Stack, page: Any, shots: Path
) -> None:
    page.goto(f"{stack.url}/console/agents")
    assert "/console/sign-in" in page.url
    check_a11y(page)
    shot(page, shots, "sign-in")
    page.get_by_label("Username").fill(stack.people["viewer"].username)
    page.get_by_label("Password").fill("wrong password")
    page.get_by_role("button", name="Sign in").click()
    assert page.get_by_role("alert").inner_text().lower().startswith("wrong username")
    sign_in(page, stack, stack.people["viewer"])
    assert page.get_by_role("navigation", name="Console").is_visible()
    check_a11y(page)
