"""The monitoring sweep with real parts: Redis, a metrics worker process, the sandbox over HTTP,
SQLite."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, update

from benchmarks.common import insert_bench_agents
from fleet.hotstate import connect
from fleet.monitoring import sweep as sweeping
from fleet.monitoring.poller import SWEEP_TOOLS
from fleet.monitoring.snapshot import Health, read_snapshot
from fleet.storage.db import engine_for, session_factory
from fleet.storage.records import Agent
from stack.local import Stack, local_stack
from stack.parts import wait_until

pytestmark = pytest.mark.integration

AGENTS = 120
MAX_ATTEMPTS = 3


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("sweep")
    with local_stack(
        base,
        latency_ms=5,
        jitter_ms=1,
        metrics={"batch_size": 25, "in_flight": 40, "poll_timeout_s": 0.5},
        gateway={"max_attempts": MAX_ATTEMPTS, "backoff_initial_s": 0.01, "backoff_max_s": 0.05},
    ) as st:
        st.start_worker(["metrics"], concurrency=2, name="metrics")
        yield st


@pytest.fixture(scope="module")
def fleet(stack: Stack) -> list[str]:
    ids = list(stack.sandbox().seed(AGENTS, prefix="it")["agent_ids"])
    insert_bench_agents(
        session_factory(engine_for(stack.settings.sqlalchemy_url)),
        ids,
        fleet="it",
        policy=stack.settings.policy,
    )
    return ids


def run_sweep(stack: Stack, timeout_s: float = 60) -> dict[str, Any]:
    r = connect(stack.settings.redis_url)
    tick = uuid.uuid4().hex
    stack.celery().send_task("metrics.sweep", kwargs={"tick": tick})

    def finished() -> dict[str, Any] | None:
        for sweep_id in sweeping.recent_sweeps(r, 5):
            status = sweeping.sweep_status(r, sweep_id)
            if status and status["tick"] == tick and status["status"] == "finished":
                return status
        return None

    return wait_until(finished, timeout_s=timeout_s)  # type: ignore[return-value]


def test_a_sweep_polls_every_agent_once_and_stores_the_fleet_view(
    stack: Stack, fleet: list[str]
) -> None:
    sandbox = stack.sandbox()
    sandbox.reset_counters()
    status = run_sweep(stack)
    assert (status["agents"], status["agents_done"], status["unknown"]) == (AGENTS, AGENTS, 0)
    assert status["batches"] == AGENTS // 25 + 1
    r = connect(stack.settings.redis_url)
    for agent_id in fleet:
        snap = read_snapshot(r, agent_id)
        assert (
            snap is not None
            and snap.sweep_id == status["sweep_id"]
            and snap.health is not Health.UNKNOWN
        )
        assert (
            snap.balance is not None
            and snap.reputation is not None
            and snap.latency_p99 is not None
        )
    counters = sandbox.counters(agent_prefix="it")
    assert counters["agents"] == {a: {tool: 1 for tool in SWEEP_TOOLS} for a in fleet}
    fleets, meta = sweeping.fleet_health(r)
    assert meta["sweep_id"] == status["sweep_id"] and fleets["it"]["agents"] == AGENTS
    assert fleets["it"]["healthy"] + fleets["it"]["degraded"] + fleets["it"]["critical"] == AGENTS


def test_with_gateway_faults_the_sweep_completes_failed_agents_are_unknown_and_the_ceiling_holds(
    stack: Stack, fleet: list[str]
) -> None:
    sandbox = stack.sandbox()
    # Five agents the gateway does not know: their polls fail at once, every time.
    strangers = [f"ghost-{i:04d}-0000000{i}" for i in range(5)]
    sessions = session_factory(engine_for(stack.settings.sqlalchemy_url))
    insert_bench_agents(sessions, strangers, fleet="it", policy=stack.settings.policy)
    sandbox.reset_counters()
    sandbox.set_faults(error_rate=0.10, timeout_rate=0.01, timeout_s=2.0)
    try:
        started = time.monotonic()
        status = run_sweep(stack, timeout_s=90)
        took = time.monotonic() - started
    finally:
        sandbox.clear_faults()
    everyone = fleet + strangers
    assert status["agents_done"] == len(everyone)
    r = connect(stack.settings.redis_url)
    failures = sweeping.sweep_failures(r, status["sweep_id"], limit=10000)
    for agent_id in everyone:
        snap = read_snapshot(r, agent_id)
        assert snap is not None and snap.sweep_id == status["sweep_id"]
        # Failed means unknown: neither healthy nor critical, with the reason kept.
        assert (snap.health is Health.UNKNOWN) == (snap.error is not None) == (agent_id in failures)
    for agent_id in strangers:
        assert "NotFound" in failures[agent_id]
    assert status["unknown"] == len(failures) >= len(strangers)
    counters = sandbox.counters(agent_prefix="")
    per_agent = counters["agents"]
    assert all(n <= MAX_ATTEMPTS for calls in per_agent.values() for n in calls.values()), per_agent
    total = sum(n for calls in per_agent.values() for n in calls.values())
    assert (
        4 * len(fleet) < total <= MAX_ATTEMPTS * 4 * len(everyone)
    )  # retries happened, within the ceiling
    assert (
        sum(counters["statuses"].get(t, {}).get("dropped", 0) for t in SWEEP_TOOLS) > 0
        or sum(counters["statuses"].get(t, {}).get("500", 0) for t in SWEEP_TOOLS) > 0
    )
    assert took < 60
    # With the faults gone every known agent is back to a real class.
    status = run_sweep(stack)
    assert status["unknown"] <= len(strangers)
    with session_factory(engine_for(stack.settings.sqlalchemy_url)).begin() as s:
        s.execute(update(Agent).where(Agent.agent_id.in_(strangers)).values(status="retired"))


def test_ids_unknown_to_the_database_are_not_polled(stack: Stack, fleet: list[str]) -> None:
    sessions = session_factory(engine_for(stack.settings.sqlalchemy_url))
    with sessions.begin() as s:
        s.execute(insert(Agent), [{**_row("it-retired-0001-00000000"), "status": "retired"}])
    stack.sandbox().reset_counters()
    status = run_sweep(stack)
    assert status["agents"] == AGENTS
    assert "it-retired-0001-00000000" not in stack.sandbox().counters(agent_prefix="it")["agents"]


def _row(agent_id: str) -> dict[str, Any]:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    return {
        "agent_id": agent_id,
        "fleet": "it",
        "environment": "test",
        "id_prefix": "it",
        "tier": "standard",
        "capabilities": [],
        "sla_template": "standard-support",
        "status": "active",
        "steps_done": [],
        "traffic_weight": "1",
        "extra": {},
        "created_at": now,
        "updated_at": now,
    }


def test_logs_show_no_errors(stack: Stack) -> None:
    log = Path(stack.base_dir / "logs" / "metrics.log").read_text()
    assert "Traceback" not in log, log[-4000:]
