"""The OpenAPI document tells the truth: schemathesis, every check, over every operation.

The API is served by uvicorn on a free loopback port in this process, on a
fresh database, and ``schemathesis run --checks all`` runs against its
/openapi.json as an admin (the API token), with bounded examples so it stays
well under two minutes. Tasks the API would send to the broker are recorded
instead: this checks the HTTP surface, not the queue.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from stack.parts import redis_server
from stack.processes import free_port, port_open
from tests.conftest import RecordingRuntime

MAX_EXAMPLES = 10


class _Sent:
    id = "recorded"


@pytest.fixture
def real_redis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real Redis-protocol server of this test's own; the runtime reads its URL."""
    with redis_server(tmp_path / "redis") as url:
        monkeypatch.setenv("FLEET_REDIS__URL", url)
        yield url


@pytest.fixture
def served_api(
    real_redis: str, runtime: RecordingRuntime, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    from tasks.provisioning import provision_fleet
    from tasks.routing import submit_task
    from tasks.sla import evaluate_agent
    from web.app import create_api

    monkeypatch.setattr(provision_fleet, "apply_async", lambda **_: _Sent())
    monkeypatch.setattr(evaluate_agent, "apply_async", lambda **_: _Sent())
    monkeypatch.setattr(submit_task, "apply_async", lambda **_: _Sent())
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_api(lambda: runtime), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not port_open("127.0.0.1", port):
        assert time.monotonic() < deadline, "the API did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def schemathesis_command(base_url: str, report_dir: Path) -> list[str]:
    return [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        f"{base_url}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        "1",
        "--header",
        "Authorization: Bearer fleet-demo-token",
        "--no-color",
    ]


def test_every_operation_answers_as_documented(served_api: str, tmp_path: Path) -> None:
    run = subprocess.run(
        schemathesis_command(served_api, tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    (tmp_path / "schemathesis.out").write_text(run.stdout + run.stderr)
    summary = run.stdout[-20000:]
    assert run.returncode == 0, summary + run.stderr[-2000:]
    assert "No issues found" in run.stdout or "passed" in run.stdout, summary
