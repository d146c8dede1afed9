"""Retirement's drain waits for the agent's in-flight task: real provisioning, audit and
routing workers, the sandbox's A2A agent taking 4 s over a task.

`fleet retire` asks for the approval; once it is granted the retirement runs: it stops
routing to the agent (status retiring, weight 0), then its drain stage waits while the
agent's in-flight counter (incremented by the routing worker at dispatch, decremented
when the A2A task ends) is above zero, up to policy.scaling.drain_timeout_s."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from fleet.approvals import Approvals
from fleet.clock import SystemClock
from fleet.hotstate import connect, inflight
from fleet.provisioning.pipeline import job_progress
from fleet.storage.db import engine_for, session_factory
from fleet.storage.records import Agent
from fleet.work import store
from stack.local import Stack, local_stack
from stack.parts import wait_until
from tests.support.workload import fleet_manifest
from workers.queues import TaskName

pytestmark = pytest.mark.integration

TREASURY = "fleet-treasury"
# Long enough that the approval, the sweep and the retirement task reach the drain while
# the task still runs, even on a loaded machine.
WORK_MS = 12000


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("retire")
    with local_stack(base, latency_ms=1, jitter_ms=0) as st:
        made = httpx.post(f"{st.sandbox().url}/v1/register", json={"agent_id": TREASURY})
        assert made.status_code == 201, made.text
        st.start_worker(["provisioning"], concurrency=4, pool="threads", name="provisioning")
        st.start_worker(["audit"], concurrency=1, name="audit")
        st.start_worker(["routing"], concurrency=2, pool="threads", name="routing")
        yield st


def _sandbox_a2a(stack: Stack, work_ms: float | None) -> None:
    key = stack.settings.gateway.admin_key.get_secret_value()
    answer = httpx.put(
        f"{stack.settings.gateway_url}/_sandbox/a2a",
        json={"work_ms": work_ms},
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    answer.raise_for_status()


def _row(stack: Stack, agent_id: str) -> Any:
    with session_factory(engine_for(stack.settings.sqlalchemy_url))() as s:
        return s.get(Agent, agent_id)


def test_retirement_waits_for_the_agents_in_flight_task(stack: Stack) -> None:
    app = stack.celery()
    job_id = uuid.uuid4().hex
    fleet = f"ret{uuid.uuid4().hex[:4]}"
    app.send_task(
        TaskName.PROVISION_FLEET,
        kwargs={"manifest": fleet_manifest(1, fleet=fleet, groups=1), "job_id": job_id},
    )
    sessions = session_factory(engine_for(stack.settings.sqlalchemy_url))

    def provisioned() -> Any:
        p = job_progress(sessions, job_id)
        return p if p is not None and p.state == "done" else None

    progress: Any = wait_until(provisioned, timeout_s=60)
    agent_id = progress.agents[0].agent_id
    assert _row(stack, agent_id).status == "active"

    _sandbox_a2a(stack, WORK_MS)
    try:
        key = f"drain-{uuid.uuid4().hex}"
        submission = {
            "type": "long-job",
            "capabilities": ["support"],
            "estimated_tokens": 800,
            "payer": {"kind": "agent", "id": agent_id},
            "idempotency_key": key,
            "fleet": fleet,
        }
        app.send_task(TaskName.SUBMIT_TASK, kwargs={"task": submission})
        r = connect(stack.settings.redis_url)
        wait_until(lambda: inflight(r, agent_id) == 1, timeout_s=10, interval_s=0.02)
        dispatched = time.monotonic()

        events: list[Any] = []
        approvals = Approvals(
            sessions, stack.settings.policy.approvals, clock=SystemClock(), emit=events.extend
        )
        gate = approvals.request(
            "retire_agent",
            agent_id,
            "alice",
            reason="drain test",
            irreversible=True,
            task=TaskName.RETIRE_AGENT,
            task_kwargs={"agent_id": agent_id, "reason": "drain test"},
        )
        approvals.approve(gate.request_id, "bob")
        approvals.approve(gate.request_id, "carol")
        app.send_task(TaskName.AUDIT_APPROVALS_SWEEP)

        # Routing stopped at once, but the retirement waits while the task runs.
        wait_until(lambda: _row(stack, agent_id).status == "retiring", timeout_s=WORK_MS / 1000)
        assert inflight(r, agent_id) == 1
        time.sleep(1.0)
        assert _row(stack, agent_id).status == "retiring"

        wait_until(lambda: _row(stack, agent_id).status == "retired", timeout_s=60)
        retired_after = time.monotonic() - dispatched
        holder = str(r.get(store.idem_key(key)))
        record = store.task_state(r, sessions, holder)
        assert record["state"] == "completed" and record["agent_id"] == agent_id
        facts = _row(stack, agent_id).extra["retirement"]
        assert facts["drained"] is True and facts["abandoned_in_flight"] == 0
        assert retired_after >= (WORK_MS / 1000) * 0.9, retired_after
        print(f"\nwork retire: retired {retired_after:.1f} s after dispatch ({WORK_MS} ms task)")
    finally:
        _sandbox_a2a(stack, None)
