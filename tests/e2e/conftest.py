"""The console in a real browser: Debian's Chromium driven by Playwright, against a real
``fleet up --demo`` stack.

- ``stack``: one ``fleet up --demo`` for the session, on free ports in a temporary data
  folder, with people created for the tests (:data:`PEOPLE`: a viewer, two operators
  and two approvers) through the ``fleet users`` CLI;
- ``browser`` / ``page``: Chromium at :data:`CHROMIUM` (no browser download);
- :func:`sign_in`, :func:`shot` (PNG under the test's output folder) and
  :func:`check_a11y` (axe-core; serious or critical violations fail the test).

Without Chromium or Playwright these tests skip with the reason, unless
``FLEET_E2E_REQUIRED=1`` (CI sets it), which makes them fail instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from stack.processes import free_port

CHROMIUM = os.environ.get("FLEET_E2E_CHROMIUM", "/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "e2e correct horse battery"


@dataclass(frozen=True)
class Person:
    username: str
    role: str
    password: str = PASSWORD


PEOPLE = {
    "viewer": Person("vic-viewer", "viewer"),
    "operator": Person("olga-operator", "operator"),
    "approver": Person("ada-approver", "approver"),
    "approver2": Person("bo-approver", "approver"),
    "admin2": Person("cy-admin", "admin"),
}


def _missing_browser() -> str | None:
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    try:
        import axe_playwright_python  # noqa: F401
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        return f"Playwright or axe-playwright-python is not installed: {exc}"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    reason = _missing_browser()
    for item in items:
        if here not in Path(str(item.fspath)).parents:
            continue
        item.add_marker(pytest.mark.e2e)
        if reason is None:
            continue
        if os.environ.get("FLEET_E2E_REQUIRED") == "1":
            item.add_marker(pytest.mark.usefixtures("_e2e_required_but_missing"))
        else:
            item.add_marker(pytest.mark.skip(reason=f"e2e: {reason}"))


@pytest.fixture
def _e2e_required_but_missing() -> None:
    pytest.fail(f"FLEET_E2E_REQUIRED=1 but {_missing_browser()}")


# --- the stack ---------------------------------------------------------------------------


@dataclass
class Stack:
    url: str  # the API, which serves the console under /console
    data_dir: Path
    env: dict[str, str]
    sandbox_url: str
    output: Path  # what `fleet up` printed
    people: dict[str, Person]

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.data_dir / "fleet.db")

    def agent_statuses(self) -> dict[str, str]:
        with contextlib.closing(self.db()) as conn:
            try:
                return dict(conn.execute("SELECT agent_id, status FROM agents").fetchall())
            except sqlite3.OperationalError:
                return {}

    def demo_agents(self) -> list[str]:
        return sorted(a for a in self.agent_statuses() if a.startswith(("support-", "research-")))

    def sandbox(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(
            method,
            f"{self.sandbox_url}/_sandbox{path}",
            headers={"Authorization": "Bearer sandbox-admin-key"},
            timeout=10,
            **kwargs,
        )

    def fleet(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cli.main", *args],
            env=self.env,
            cwd=self.data_dir.parent,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
        )


def wait_for(check: Any, timeout_s: float, what: str, interval_s: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    reason = _missing_browser()
    if reason is not None:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("fleet-up")
    # The demo's policy, with silences short enough that an agent gone quiet turns
    # critical within half a minute (3 heartbeat intervals of 10 s), approved work sent
    # within 5 s rather than the minute of the default approvals sweep, and an autoscaler
    # pass every 10 s rather than every minute (the Scaling page shows its decisions).
    policy = base / "e2e-policy.yaml"
    policy.write_text(
        f"extends: {ROOT / 'config' / 'defaults' / 'demo-policy.yaml'}\n"
        "monitoring:\n  heartbeat_unknown_after: 1.5\n  heartbeat_critical_after: 3\n"
        "approvals:\n  sweep_s: 5\n"
        "scaling:\n  evaluate_every_s: 10\n"
    )
    ports = {name: free_port() for name in ("redis", "sandbox", "flower", "api")}
    env = {
        **os.environ,
        "FLEET_DATA_DIR": str(base / "var"),
        "FLEET_REDIS__EMBEDDED_PORT": str(ports["redis"]),
        "FLEET_SANDBOX__PORT": str(ports["sandbox"]),
        "FLEET_FLOWER__PORT": str(ports["flower"]),
        "FLEET_API__PORT": str(ports["api"]),
        "FLEET_FLOWER__PASSWORD": "e2e",
        "FLEET_POLICY_FILE": str(policy),
        # A sweep (and the silence pass with it) every 5 s rather than the demo's 15 s.
        "FLEET_SCHEDULE__METRICS_SWEEP_S": "5",
        "PYTHONPATH": str(ROOT),
    }
    for name in ("FLEET_REDIS__URL", "FLEET_DATABASE_URL", "FLEET_GATEWAY__BASE_URL"):
        env.pop(name, None)
    output = base / "fleet-up.log"
    with output.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "up", "--demo", "--concurrency", "1"],
            env=env,
            cwd=base,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
    st = Stack(
        url=f"http://127.0.0.1:{ports['api']}",
        data_dir=base / "var",
        env=env,
        sandbox_url=f"http://127.0.0.1:{ports['sandbox']}",
        output=output,
        people=PEOPLE,
    )
    try:

        def api_up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"fleet up exited:\n{output.read_text()}")
            try:
                return httpx.get(f"{st.url}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(api_up, 180, "the API of `fleet up --demo`")
        for person in PEOPLE.values():
            done = st.fleet(
                "users",
                "add",
                person.username,
                "--role",
                person.role,
                "--password-stdin",
                stdin=person.password + "\n",
            )
            assert done.returncode == 0, done.stdout + done.stderr
        wait_for(lambda: len(st.demo_agents()) == 10, 240, "the demo fleet's ten agents")
        yield st
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# --- the browser -------------------------------------------------------------------------


@pytest.fixture(scope="package")
def browser(stack: Stack) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def new_page(browser: Any) -> Iterator[Any]:
    """A factory of pages, each in its own browser context (its own cookies: one person)."""
    contexts: list[Any] = []

    def make() -> Any:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.set_default_timeout(15_000)
        contexts.append(context)
        return context.new_page()

    yield make
    for context in contexts:
        context.close()


@pytest.fixture
def page(new_page: Any) -> Any:
    return new_page()


@pytest.fixture
def shots(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test's screenshot folder (under pytest's base temp folder)."""
    folder = tmp_path_factory.getbasetemp() / "screenshots" / request.node.name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def sign_in(page: Any, stack: Stack, person: Person, next_path: str = "/console/") -> None:
    """Sign ``person`` in through the console's form; ends on ``next_path``."""
    page.goto(f"{stack.url}/console/sign-in?next={next_path}")
    page.get_by_label("Username").fill(person.username)
    page.get_by_label("Password").fill(person.password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{stack.url}{next_path}*")


def shot(page: Any, folder: Path, name: str) -> Path:
    """A full-page PNG of what the browser shows, as ``folder/name.png``."""
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def check_a11y(page: Any) -> None:
    """axe-core on the page as it is: a serious or critical violation fails the test."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    bad = [
        v
        for v in results.response.get("violations", [])
        if v.get("impact") in {"serious", "critical"}
    ]
    assert not bad, (
        "accessibility violations on "
        + page.url
        + ":\n"
        + "\n".join(
            f"- {v['id']} ({v['impact']}): {v['help']} — "
            + ", ".join(str(n.get("target")) for n in v.get("nodes", [])[:5])
            for v in bad
        )
    )
