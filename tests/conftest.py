"""Shared fixtures."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from config.settings import get_settings, reset_settings_cache
from fleet import audit
from fleet.audit.events import AuditEvent
from fleet.runtime import Message, Runtime
from fleet.storage.db import engine_for, migrate
from sandbox.control import SandboxControl
from tests.support.sla_world import World, make_world
from tests.support.trust import trust_env
from workers import runtime as process_runtime
from workers.queues import TaskName

# --- the runtime -------------------------------------------------------------------------


class RecordingRuntime(Runtime):
    """The runtime of tests: messages sent land in ``sent``, audit events in ``events``."""

    def __init__(self) -> None:
        self.sent: list[Message] = []
        self.events: list[AuditEvent] = []
        super().__init__(
            get_settings(),
            send=self.sent.extend,
            enqueue_audit=self.events.extend,
            alert_task=TaskName.DELIVER_ALERTS,
            escalate_task=TaskName.SLA_EVALUATE_AGENT,
        )


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordingRuntime]:
    """This process's runtime on a fresh SQLite database in tmp_path; tasks and routes use it.

    Environment set by fixtures listed before this one is read; the one reset is here.
    """
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    monkeypatch.setenv("FLEET_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("FLEET_DATABASE_URL", url)
    for name, value in trust_env(tmp_path).items():
        monkeypatch.setenv(name, value)
    reset_settings_cache()
    migrate(engine_for(url))
    rt = RecordingRuntime()
    rt.install_audit_sink()
    previous = process_runtime.use(rt)
    try:
        yield rt
    finally:
        process_runtime.use(previous)
        rt.close()
        reset_settings_cache()


# --- the gateway sandbox -----------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
SANDBOX_ADMIN_KEY = "sandbox-admin-key"


class SandboxProcess(SandboxControl):
    """A sandbox started as a subprocess: the admin client plus the process."""

    process: subprocess.Popen[str]
    started_in_s: float


@contextlib.contextmanager
def sandbox_process(*args: str, ready_timeout_s: float = 60.0) -> Iterator[SandboxProcess]:
    """Run ``python -m sandbox --port 0 ...`` until the block ends, then SIGTERM it.

    The port is the free one the server picked and announced on stdout, so
    parallel sessions never collide. Its stderr goes to a temp file that is
    shown if the server fails to start.
    """
    argv = [
        sys.executable,
        "-m",
        "sandbox",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--admin-key",
        SANDBOX_ADMIN_KEY,
        *args,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryFile("w+") as stderr:
        started = time.monotonic()
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True
        )
        lines: queue.Queue[str] = queue.Queue()

        def pump() -> None:  # keep reading so the pipe never fills
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line)

        pumper = threading.Thread(target=pump, daemon=True)
        pumper.start()
        try:
            url = None
            deadline = started + ready_timeout_s
            while url is None:
                try:
                    line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
                except queue.Empty:
                    line = ""
                if line.startswith("sandbox listening on "):
                    url = line.split(" on ", 1)[1].strip()
                elif proc.poll() is not None or time.monotonic() > deadline:
                    stderr.seek(0)
                    raise RuntimeError(
                        f"sandbox did not start (exit {proc.poll()}):\n{stderr.read()[-4000:]}"
                    )
            control = SandboxProcess(url, SANDBOX_ADMIN_KEY)
            control.process = proc
            control.started_in_s = time.monotonic() - started
            control.wait_ready(10)
            try:
                yield control
            finally:
                control.close()
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            pumper.join(5)
            if proc.stdout is not None:
                proc.stdout.close()


@pytest.fixture(scope="session")
def sandbox() -> Iterator[SandboxProcess]:
    """One sandbox for the session, no added latency; tests ``sandbox.reset()`` or use unique ids.

    ``sandbox.url`` is the base URL, ``sandbox.gateway_url`` the tool endpoint
    (base + "/v1"), ``sandbox.admin_key`` the fleet-admin key.
    """
    with sandbox_process(
        "--latency-ms",
        "0",
        "--latency-jitter-ms",
        "0",
        "--agents",
        "0",
        "--seed",
        "1234",
        "--memory",
    ) as control:
        yield control


@pytest.fixture
def spawn_sandbox() -> Iterator[Callable[..., SandboxProcess]]:
    """Start extra sandboxes with their own flags; each stops when the test ends."""
    with contextlib.ExitStack() as stack:
        yield lambda *args: stack.enter_context(sandbox_process(*args))


# --- the SLA and escalation world --------------------------------------------------------


@pytest.fixture
def world_factory(tmp_path: Path) -> Iterator[Callable[..., World]]:
    """Make worlds (migrated database, fakeredis, manual clock, scripted gateway) for this test."""
    made: list[World] = []
    with audit.capture() as events:

        def make(url: str | None = None, **policy_changes: Any) -> World:
            world = make_world(tmp_path, len(made), events, url, **policy_changes)
            made.append(world)
            return world

        try:
            yield make
        finally:
            for w in made:
                w.client.close()
                w.sessions.kw["bind"].dispose()


@pytest.fixture
def world(world_factory: Callable[..., World]) -> World:
    return world_factory(escalation__remediation_webhook="http://remediation.test/hook")
