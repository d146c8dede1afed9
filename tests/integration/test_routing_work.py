"""The work plane with real parts: Redis, a `routing` worker process, the sandbox's A2A agents
over HTTP, SQLite.

Tasks are sent as `routing.submit_tasks` messages; which agent received each one is read
from the sandbox (what the agents themselves counted) and from the task records."""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from fleet.hotstate import connect, inflight_key
from fleet.monitoring.snapshot import read_snapshot
from fleet.storage.records import Agent, AgentStatus
from fleet.work import store
from fleet.work.records import WorkTask
from stack.local import Stack, local_stack
from stack.parts import wait_until
from tests.support.fleet_rows import insert_agents, seeded_ids, sessions_for
from workers.queues import TaskName

pytestmark = pytest.mark.integration

AGENTS = 4
TASKS = 1000
BATCH = 100


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("routing")
    policy = base / "policy.yaml"
    default = Path(__file__).resolve().parents[2] / "config" / "defaults" / "policy.yaml"
    # Equal scores (idleness weighs nothing), so shares follow the traffic weights alone;
    # a 2 s drain timeout for the retirement test.
    policy.write_text(
        f"extends: {default}\n"
        "routing:\n"
        "  reputation_weight: 0.5\n  headroom_weight: 0\n  idleness_weight: 0\n"
        "  sla_margin_weight: 0.5\n"
        "scaling:\n  drain_timeout_s: 20\n"
        "budgets:\n  pools: {itw-pool: '1000.00'}\n"
    )
    with local_stack(base, latency_ms=1, jitter_ms=0, policy_file=policy) as st:
        st.start_worker(["routing"], concurrency=2, pool="threads", name="routing")
        yield st


def _sessions(stack: Stack) -> sessionmaker[Session]:
    return sessions_for(stack.settings.sqlalchemy_url)


@pytest.fixture(scope="module")
def agents(stack: Stack) -> list[str]:
    ids = seeded_ids(stack.sandbox().seed(AGENTS, prefix="itwork", profile="idle"))
    insert_agents(_sessions(stack), ids, fleet="itw", policy=stack.settings.policy)
    return sorted(ids)


def _received(stack: Stack) -> dict[str, int]:
    url = f"{stack.settings.gateway_url}/_sandbox/a2a"
    key = stack.settings.gateway.admin_key.get_secret_value()
    answer = httpx.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=10)
    answer.raise_for_status()
    received: dict[str, int] = answer.json()["received"]
    return received


def _submission(i: int, tag: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "summarise",
        "capabilities": ["support"],
        "estimated_tokens": 500,
        "payer": {"kind": "pool", "id": "itw-pool"},
        "idempotency_key": f"{tag}-{i}",
        "fleet": "itw",
        **extra,
    }


def _route(stack: Stack, count: int, tag: str) -> dict[str, int]:
    """Send ``count`` tasks, wait for all of them; the tasks each agent received."""
    before = _received(stack)
    app = stack.celery()
    for start in range(0, count, BATCH):
        tasks = [_submission(i, tag) for i in range(start, min(start + BATCH, count))]
        app.send_task(TaskName.SUBMIT_TASKS.value, kwargs={"tasks": tasks})
    r = connect(stack.settings.redis_url)

    def done() -> bool:
        keys = [store.idem_key(f"{tag}-{i}") for i in range(count)]
        holders = [h for h in r.mget(keys) if h]
        if len(holders) < count:
            return False
        phases = store.phases(r, [str(h) for h in holders])
        return all(p == "done" for p in phases)

    wait_until(done, timeout_s=90, interval_s=0.2)
    after = _received(stack)
    return {a: after.get(a, 0) - before.get(a, 0) for a in after}


def _set(stack: Stack, agent_id: str, **values: Any) -> None:
    with _sessions(stack).begin() as s:
        s.execute(
            update(Agent)
            .where(Agent.agent_id == agent_id)
            .values(**values, updated_at=datetime.now(UTC))
        )


def test_a_tier2_cut_halves_the_agents_share_over_1000_routed_tasks(
    stack: Stack, agents: list[str]
) -> None:
    cut = agents[0]
    _set(stack, cut, traffic_weight="0.5")  # what tier 2 writes (traffic_cut_fraction 0.5)
    try:
        got = _route(stack, TASKS, f"cut-{uuid.uuid4().hex[:6]}")
    finally:
        _set(stack, cut, traffic_weight="1")
    # Each task reached an agent; the few that failed before any spend (the agents'
    # error rates) reached a second one.
    sent = sum(got.get(a, 0) for a in agents)
    assert TASKS <= sent < TASKS * 1.06, got
    # Equal scores: the cut agent's chance is 0.5 / (3 + 0.5), half an uncut agent's.
    p = 0.5 / (AGENTS - 1 + 0.5)
    sigma = math.sqrt(sent * p * (1 - p))
    assert abs(got[cut] - sent * p) < 4 * sigma, got
    others = [got[a] for a in agents[1:]]
    ratio = got[cut] / (sum(others) / len(others))
    print(f"\nwork tier-2 cut: {got[cut]} of {TASKS} (expected {TASKS * p:.0f}); ratio {ratio:.2f}")
    assert 0.38 < ratio < 0.65, got


def test_a_paused_agent_receives_none_of_the_next_1000(stack: Stack, agents: list[str]) -> None:
    paused = agents[1]
    _set(stack, paused, status=AgentStatus.PAUSED)
    try:
        got = _route(stack, TASKS, f"pause-{uuid.uuid4().hex[:6]}")
    finally:
        _set(stack, paused, status=AgentStatus.ACTIVE)
    assert got.get(paused, 0) == 0, got
    assert sum(got.values()) >= TASKS


def test_records_reach_the_database_with_the_model_and_its_reason(
    stack: Stack, agents: list[str]
) -> None:
    tag = f"rec-{uuid.uuid4().hex[:6]}"
    app = stack.celery()
    small = _submission(0, tag, estimated_tokens=50)
    traced = _submission(1, tag, trace={"traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"})
    app.send_task(TaskName.SUBMIT_TASKS.value, kwargs={"tasks": [small, traced]})
    app.send_task(TaskName.FLUSH_WORK_RECORDS.value)
    sessions = _sessions(stack)

    def rows() -> list[WorkTask]:
        app.send_task(TaskName.FLUSH_WORK_RECORDS.value)
        with sessions() as s:
            found = list(
                s.scalars(select(WorkTask).where(WorkTask.idempotency_key.like(f"{tag}-%")))
            )
        return found if len(found) == 2 else []

    found = {r.idempotency_key: r for r in wait_until(rows, timeout_s=30, interval_s=0.5)}  # type: ignore[union-attr]
    assert found[f"{tag}-0"].model == "small"
    assert "50 estimated tokens < 100" in found[f"{tag}-0"].model_reason
    assert found[f"{tag}-1"].model == "frontier"
    assert found[f"{tag}-1"].trace_id == "ab" * 16
    assert all(r.state == "completed" and r.agent_id in agents for r in found.values())
    # A second submission with the same key runs nothing.
    before = _received(stack)
    r = connect(stack.settings.redis_url)
    assert r.get(store.idem_key(f"{tag}-0")) == found[f"{tag}-0"].task_id

    def measured() -> bool:
        # Each duplicate runs nothing, and lets the worker flush the measured signals
        # (at most once a second, after a batch), which then reach the snapshot.
        app.send_task(TaskName.SUBMIT_TASK.value, kwargs={"task": small})
        snap = read_snapshot(r, str(found[f"{tag}-0"].agent_id))
        return (
            snap is not None and bool(snap.measured_tasks) and snap.measured_latency_p50 is not None
        )

    wait_until(measured, timeout_s=20, interval_s=0.5)
    import time

    time.sleep(1.0)
    assert sum(_received(stack).values()) == sum(before.values())


def test_a_task_sent_in_a_batch_or_alone_can_be_named_as_a_sub_tasks_parent(
    stack: Stack, agents: list[str]
) -> None:
    """Task ids from queue messages are 32 hex, the form parent_task_id takes."""
    tag = f"tree-{uuid.uuid4().hex[:6]}"
    app = stack.celery()
    r = connect(stack.settings.redis_url)
    trace = "ef" * 16
    carrier = {"traceparent": f"00-{trace}-{'12' * 8}-01"}

    def done(key: str) -> dict[str, Any]:
        def ended() -> dict[str, Any] | None:
            task_id = r.get(store.idem_key(key))
            state = store.task_state(r, _sessions(stack), str(task_id)) if task_id else {}
            return state if state.get("state") in ("completed", "failed", "refused") else None

        found: dict[str, Any] = wait_until(ended, timeout_s=30, interval_s=0.2)  # type: ignore[assignment]
        return found

    app.send_task(
        TaskName.SUBMIT_TASKS.value,
        kwargs={"tasks": [_submission(0, tag, trace=carrier), _submission(1, tag)]},
    )
    root = done(f"{tag}-0")
    assert re.fullmatch(r"[0-9a-f]{32}", root["task_id"]), root["task_id"]
    child = _submission(2, tag, trace=carrier, parent_task_id=root["task_id"])
    app.send_task(TaskName.SUBMIT_TASK.value, kwargs={"task": child})
    sub = done(f"{tag}-2")
    assert sub["state"] == "completed", sub
    assert re.fullmatch(r"[0-9a-f]{32}", sub["task_id"]), sub["task_id"]
    assert sub["parent_task_id"] == root["task_id"] and sub["root_task_id"] == root["task_id"]
    grandchild = _submission(3, tag, trace=carrier, parent_task_id=sub["task_id"])
    app.send_task(TaskName.SUBMIT_TASKS.value, kwargs={"tasks": [grandchild]})
    leaf = done(f"{tag}-3")
    assert leaf["state"] == "completed" and leaf["root_task_id"] == root["task_id"], leaf
    # A parent in another trace is refused, naming it.
    stray = _submission(4, tag, parent_task_id=root["task_id"])
    stray["trace"] = {"traceparent": f"00-{'9a' * 16}-{'12' * 8}-01"}
    app.send_task(TaskName.SUBMIT_TASK.value, kwargs={"task": stray})
    refused = done(f"{tag}-4")
    assert refused["state"] == "refused" and "parent_task_id" in refused["reason"], refused


def test_a_task_failed_before_any_spend_is_rerouted_once_and_never_after_a_spend(
    stack: Stack,
) -> None:
    dead = seeded_ids(stack.sandbox().seed(1, prefix="itdead", profile="dead"))
    alive = seeded_ids(stack.sandbox().seed(1, prefix="italive", profile="idle"))
    insert_agents(_sessions(stack), dead + alive, fleet="itd", policy=stack.settings.policy)
    tag = f"rr-{uuid.uuid4().hex[:6]}"
    app = stack.celery()
    tasks = [{**_submission(i, tag), "fleet": "itd"} for i in range(40)]
    app.send_task(TaskName.SUBMIT_TASKS.value, kwargs={"tasks": tasks})
    r = connect(stack.settings.redis_url)

    def records() -> list[dict[str, Any]]:
        holders = r.mget([store.idem_key(f"{tag}-{i}") for i in range(40)])
        if not all(holders):
            return []
        found = [store.task_state(r, _sessions(stack), str(h)) for h in holders]
        return (
            found
            if all(f.get("state") not in (None, "claimed", "dispatched") for f in found)
            else []
        )

    found: list[dict[str, Any]] = wait_until(records, timeout_s=30)  # type: ignore[assignment]
    assert all(f["state"] == "completed" and f["agent_id"] == alive[0] for f in found), found
    rerouted = [f for f in found if len(f["attempts"]) == 2]
    # The dead agent fails every task before any work: each one it got went to the other.
    assert rerouted and all(f["attempts"][0]["agent_id"] == dead[0] for f in rerouted)
    assert all(len(f["attempts"]) <= 2 for f in found)
    got = _received(stack)
    assert got[dead[0]] == len(rerouted) and got[alive[0]] == 40


def test_admission_refuses_a_task_over_the_per_task_budget_before_any_agent_sees_it(
    stack: Stack, agents: list[str]
) -> None:
    tag = f"big-{uuid.uuid4().hex[:6]}"
    before = _received(stack)
    # 400,000 frontier tokens at 0.015 per 1,000: 6.00, over the policy's 5.00 per task.
    big = _submission(0, tag, estimated_tokens=400_000)
    unknown_pool = _submission(1, tag, payer={"kind": "pool", "id": "no-such-pool"})
    stack.celery().send_task(TaskName.SUBMIT_TASKS.value, kwargs={"tasks": [big, unknown_pool]})
    r = connect(stack.settings.redis_url)

    def records() -> list[dict[str, Any]]:
        holders = r.mget([store.idem_key(f"{tag}-{i}") for i in range(2)])
        if not all(holders):
            return []
        found = [store.task_state(r, _sessions(stack), str(h)) for h in holders]
        return found if all(f.get("state") == "refused" for f in found) else []

    found: list[dict[str, Any]] = wait_until(records, timeout_s=20)  # type: ignore[assignment]
    assert found[0]["reason"].startswith("per_task:"), found[0]
    assert found[0]["estimate"] == "6.000000" or Decimal(found[0]["estimate"]) == Decimal("6")
    assert found[1]["reason"].startswith("pool:"), found[1]
    assert _received(stack) == before


def test_in_flight_counters_return_to_zero(stack: Stack, agents: list[str]) -> None:
    r = connect(stack.settings.redis_url)
    assert all(int(r.get(inflight_key(a)) or 0) == 0 for a in agents)
