"""The kill switch against real workers: a paused control loop sweeps nothing; its resume
waits for a second person's approval, then the next sweep runs again."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from fleet import control
from fleet.approvals import SelfApproval
from fleet.audit.models import AuditEntry
from fleet.control.models import ControlPause
from fleet.hotstate import connect
from fleet.monitoring import sweep as sweeping
from fleet.runtime import Runtime
from stack.local import Stack, local_stack
from stack.parts import wait_until
from tests.support.fleet_rows import insert_agents, seeded_ids, sessions_for
from workers import runtime as worker_runtime
from workers.queues import TaskName

pytestmark = pytest.mark.integration

AGENTS = 6


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("kill")
    policy = base / "policy.yaml"
    default = Path(__file__).resolve().parents[2] / "config" / "defaults" / "policy.yaml"
    # One tick per period: every sweep reads every agent.
    policy.write_text(f"extends: {default}\nmonitoring:\n  wallet_period_s: 2\n")
    with local_stack(base, policy_file=policy, schedule={"metrics_sweep_s": 2.0}) as st:
        st.start_worker(["metrics"], concurrency=2, name="metrics")
        st.start_worker(["audit"], concurrency=1, name="audit")
        yield st


@pytest.fixture
def rt(stack: Stack) -> Iterator[Runtime]:
    yield worker_runtime.start(stack.celery(), stack.settings)
    worker_runtime.stop()


def _sweep(stack: Stack) -> str:
    tick = uuid.uuid4().hex
    stack.celery().send_task(TaskName.METRICS_SWEEP.value, kwargs={"tick": tick})
    return tick


def _stats(stack: Stack) -> dict[str, int]:
    r = connect(stack.settings.redis_url)
    return {k: int(v) for k, v in r.hgetall(sweeping.STATS_KEY).items()}


def _audit(rt: Runtime, action: str) -> list[Any]:
    with rt.audit_log.engine.connect() as c:
        return list(c.execute(select(AuditEntry).where(AuditEntry.action == action)).all())


def test_paused_loop_sweeps_nothing_and_resumes_after_a_second_person(
    stack: Stack, rt: Runtime
) -> None:
    ids = seeded_ids(stack.sandbox().seed(AGENTS, prefix="kill", profile="healthy"))
    insert_agents(
        sessions_for(stack.settings.sqlalchemy_url), ids, fleet="kill", policy=stack.settings.policy
    )
    r = connect(stack.settings.redis_url)

    out = control.pause_loop(rt.control, "user:alice", "incident 42: stop everything")
    assert out["status"] == "paused"
    assert r.get(control.LOOP_KEY) is not None
    stack.sandbox().reset_counters()
    before = _stats(stack)

    _sweep(stack)
    wait_until(
        lambda: _stats(stack).get("skipped_paused", 0) == before.get("skipped_paused", 0) + 1,
        timeout_s=30,
    )
    time.sleep(0.5)
    assert _stats(stack).get("started", 0) == before.get("started", 0)
    assert stack.sandbox().counters(agents=False)["tools"] == {}

    # Redis losing the flag does not un-pause: the sync re-asserts it from the database.
    r.delete(control.LOOP_KEY)
    stack.celery().send_task(TaskName.CONTROL_SYNC.value)
    wait_until(lambda: r.get(control.LOOP_KEY) is not None, timeout_s=30)

    gate = control.request_resume(rt.control, "user:alice", "incident 42 closed")
    assert not gate.may_run and gate.request_id is not None
    with pytest.raises(SelfApproval):
        rt.approvals.approve(gate.request_id, "user:alice")
    # Still paused: asking is not resuming.
    _sweep(stack)
    wait_until(
        lambda: _stats(stack).get("skipped_paused", 0) == before.get("skipped_paused", 0) + 2,
        timeout_s=30,
    )
    rt.approvals.approve(gate.request_id, "user:bob")
    stack.celery().send_task(TaskName.AUDIT_APPROVALS_SWEEP.value)

    def resumed() -> bool:
        with rt.sessions() as s:
            return r.get(control.LOOP_KEY) is None and s.get(ControlPause, "loop") is None

    wait_until(resumed, timeout_s=30)
    tick = _sweep(stack)

    def finished() -> list[dict[str, Any]]:
        found = [sweeping.sweep_status(r, s) for s in sweeping.recent_sweeps(r, 50)]
        return [s for s in found if s and s["tick"] == tick and s["status"] == "finished"]

    wait_until(lambda: bool(finished()), timeout_s=30)
    assert stack.sandbox().counters(agents=False)["tools"], "the resumed sweep read wallets"

    wait_until(lambda: bool(_audit(rt, "control_loop_resumed")), timeout_s=30)
    [paused] = _audit(rt, "control_loop_paused")
    assert paused.actor == "user:alice"
    [resumed_entry] = _audit(rt, "control_loop_resumed")
    assert resumed_entry.approval == "approved"
    assert '"approvers":["user:bob"]' in resumed_entry.body


def test_a_fleet_freeze_answers_at_once_and_a_worker_freezes_its_wallets(
    stack: Stack, rt: Runtime
) -> None:
    ids = seeded_ids(stack.sandbox().seed(AGENTS, prefix="icy", profile="healthy"))
    insert_agents(
        sessions_for(stack.settings.sqlalchemy_url), ids, fleet="icy", policy=stack.settings.policy
    )
    out = control.freeze_fleet(rt.control, "icy", "user:alice", "runaway spend")
    assert out == {"status": "frozen", "fleet": "icy", "agents": AGENTS, "wallets": "queued"}

    def frozen() -> list[str]:
        return [a for a in ids if stack.sandbox().agent(a)["wallet"]["frozen"]]

    # The audit worker takes the message and freezes each wallet at the gateway.
    wait_until(lambda: len(frozen()) == AGENTS, timeout_s=30)
    wait_until(lambda: bool(_audit(rt, "fleet_wallets_frozen")), timeout_s=30)
    [entry] = _audit(rt, "fleet_wallets_frozen")
    assert f'"agents":{AGENTS}' in entry.body and '"wallets_not_frozen":[]' in entry.body
