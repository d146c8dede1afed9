"""A message that kills its worker every time ends in the dead letters, and can be replayed.

The pool process running a `provisioning.provision_agent` is SIGKILLed each time
the message is delivered (Celery hands it back: late ack, reject on worker lost);
after `worker.max_deliveries` deliveries the next one is not run but buried, and
`fleet status`, `fleet dlq list` and `fleet dlq replay` see it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from config.settings import WorkerSettings
from fleet.durability.deadletters import deliveries_key, open_letters
from fleet.provisioning.pipeline import job_progress
from fleet.storage.db import engine_for, session_factory
from stack.local import Stack, local_stack
from stack.parts import wait_until
from tests.chaos.support import process_table
from tests.support.workload import fleet_manifest
from workers.queues import TaskName

pytestmark = pytest.mark.integration

MAX_DELIVERIES = 3


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with local_stack(tmp_path, worker=WorkerSettings(max_deliveries=MAX_DELIVERIES)) as st:
        yield st


def _fleet(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        env={**os.environ, **stack.env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_message_that_kills_its_worker_is_buried_after_max_deliveries_then_replayed(
    stack: Stack,
) -> None:
    sandbox = stack.sandbox()
    r = redis.Redis.from_url(stack.settings.redis_url, decode_responses=True)
    worker = stack.start_worker(["provisioning"], concurrency=1, name="poisoned")
    log_file = stack.base_dir / "logs" / "poisoned.log"
    # The worker's own start-up resume runs first, so the only counts later are the job's.
    resumed = re.compile(rb"resume_interrupted\[[^\]]+\] succeeded")
    wait_until(lambda: resumed.search(log_file.read_bytes()), timeout_s=60)
    sessions = session_factory(engine_for(stack.settings.sqlalchemy_url))
    # Every gateway call takes seconds: each delivery is mid-task when its process dies.
    sandbox.set_faults(latency_ms=4000, latency_jitter_ms=0)
    job_id = uuid.uuid4().hex
    celery = stack.celery()
    celery.send_task(
        TaskName.PROVISION_FLEET,
        kwargs={"manifest": fleet_manifest(1, fleet="poison", groups=1), "job_id": job_id},
        task_id=job_id,
    )

    def agent_delivery() -> tuple[str, int] | None:
        for key in r.scan_iter(deliveries_key("*")):
            task_id = key.rsplit(":", 1)[1]
            if task_id != job_id:
                return task_id, int(r.get(key) or 0)
        return None

    for kills in range(MAX_DELIVERIES):
        found = wait_until(
            lambda n=kills + 1: (d := agent_delivery()) and d[1] == n and d, timeout_s=60
        )
        assert isinstance(found, tuple)
        task_id = found[0]
        children = [p for p, (pp, _) in process_table().items() if pp == worker.process.pid]
        assert children, "no pool process under the worker"
        for pid in children:
            os.kill(pid, signal.SIGKILL)
    letters = wait_until(lambda: open_letters(sessions), timeout_s=60)
    assert isinstance(letters, list) and len(letters) == 1
    letter = letters[0]
    assert (letter.task_id, letter.task_name) == (task_id, TaskName.PROVISION_AGENT)
    assert letter.deliveries == MAX_DELIVERIES and letter.queue == "provisioning"
    assert worker.alive(), "the worker itself must survive its pool processes"
    progress = job_progress(sessions, job_id)
    assert progress is not None and progress.pending == 1  # buried, not run

    status = _fleet(stack, "status")
    assert "dead letters: 1" in status.stdout, status.stdout + status.stderr
    listed = _fleet(stack, "dlq", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["task_id"] == task_id

    sandbox.set_faults(latency_ms=0, latency_jitter_ms=0)
    replayed = _fleet(stack, "dlq", "replay", letter.letter_id, "--by", "alice")
    assert replayed.returncode == 0, replayed.stderr
    again = _fleet(stack, "dlq", "replay", letter.letter_id, "--by", "bob")
    assert again.returncode != 0 and "no open dead letter" in again.stderr
    wait_until(
        lambda: (p := job_progress(sessions, job_id)) is not None and p.done == 1, timeout_s=60
    )
    assert open_letters(sessions) == []
    assert len(sandbox.agent(letter.args[1])["keys"]) == 1
    r.close()
