"""The monitoring sweep with real parts: Redis, a metrics worker process, the sandbox over HTTP,
SQLite.

Per agent the sweep reads the wallet balance, the budget and the agent's latest self-reported
p99 latency and error rate, all with the admin key; the sandbox's simulated agents report those
figures by their behaviour profile, so a healthy agent must come out healthy and a dead one
critical, and an agent whose reads fail must come out unknown."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from fleet.hotstate import connect
from fleet.monitoring import sweep as sweeping
from fleet.monitoring.models import AgentHourly
from fleet.monitoring.poller import SWEEP_OPERATIONS
from fleet.monitoring.snapshot import Health, read_snapshot
from fleet.storage.records import Agent
from stack.local import Stack, local_stack
from stack.parts import wait_until
from tests.support.fleet_rows import insert_agents, seeded_ids, sessions_for
from workers.queues import TaskName

pytestmark = pytest.mark.integration

HEALTHY = 100
DEAD = 20
AGENTS = HEALTHY + DEAD
BATCH = 25
MAX_ATTEMPTS = 3


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("sweep")
    with local_stack(
        base,
        latency_ms=5,
        jitter_ms=1,
        metrics={"batch_size": BATCH, "in_flight": 40, "poll_timeout_s": 0.5},
        gateway={"max_attempts": MAX_ATTEMPTS, "backoff_initial_s": 0.01, "backoff_max_s": 0.05},
    ) as st:
        st.start_worker(["metrics"], concurrency=2, name="metrics")
        yield st


def _seed(stack: Stack, n: int, prefix: str, profile: str) -> list[str]:
    return seeded_ids(stack.sandbox().seed(n, prefix=prefix, profile=profile))


def _sessions(stack: Stack) -> sessionmaker[Session]:
    return sessions_for(stack.settings.sqlalchemy_url)


@pytest.fixture(scope="module")
def fleet(stack: Stack) -> dict[str, list[str]]:
    agents = {
        "healthy": _seed(stack, HEALTHY, "it", "healthy"),
        "dead": _seed(stack, DEAD, "itdead", "dead"),
    }
    everyone = agents["healthy"] + agents["dead"]
    insert_agents(_sessions(stack), everyone, fleet="it", policy=stack.settings.policy)
    # The simulated agents publish their heartbeats and settle what they spent so far.
    assert stack.sandbox().tick()["heartbeats"] >= HEALTHY
    return agents


def run_sweep(stack: Stack, timeout_s: float = 60) -> dict[str, Any]:
    r = connect(stack.settings.redis_url)
    tick = uuid.uuid4().hex
    stack.celery().send_task(TaskName.METRICS_SWEEP.value, kwargs={"tick": tick})

    def finished() -> dict[str, Any] | None:
        for sweep_id in sweeping.recent_sweeps(r, 5):
            status = sweeping.sweep_status(r, sweep_id)
            if status and status["tick"] == tick and status["status"] == "finished":
                return status
        return None

    return wait_until(finished, timeout_s=timeout_s)  # type: ignore[return-value]


def _reads(stack: Stack) -> dict[str, int]:
    tools: dict[str, int] = stack.sandbox().counters(agents=False)["tools"]
    return {name: tools.get(name, 0) for name in set(SWEEP_OPERATIONS)}


def _expected(agents: int) -> dict[str, int]:
    return {name: SWEEP_OPERATIONS.count(name) * agents for name in SWEEP_OPERATIONS}


def test_a_sweep_reads_every_active_agent_once_and_classes_it_by_its_own_metrics(
    stack: Stack, fleet: dict[str, list[str]]
) -> None:
    sandbox = stack.sandbox()
    sandbox.reset_counters()
    status = run_sweep(stack)
    assert (status["agents"], status["agents_done"], status["unknown"]) == (AGENTS, AGENTS, 0)
    assert status["batches"] == -(-AGENTS // BATCH)
    # Four reads per agent, no more, all with the admin key.
    assert _reads(stack) == _expected(AGENTS)
    counters = sandbox.counters()
    assert set(counters["agents"]) == {"fleet-admin"}
    assert set(counters["statuses"]["get_balance"]) == {"200"}

    r = connect(stack.settings.redis_url)
    for agent_id in fleet["healthy"]:
        snap = read_snapshot(r, agent_id)
        assert snap is not None and snap.sweep_id == status["sweep_id"]
        assert snap.health is Health.HEALTHY, snap
        assert snap.balance is not None and Decimal(0) < snap.balance <= Decimal(500)
        assert snap.latency_p99 is not None and snap.error_rate is not None
        assert snap.burn_rate_per_hour is not None and snap.error is None
    for agent_id in fleet["dead"]:
        snap = read_snapshot(r, agent_id)
        # A dead agent reports an error rate of 1 and no latency: critical, not unknown.
        assert snap is not None and snap.sweep_id == status["sweep_id"]
        assert (snap.health, snap.error_rate, snap.latency_p99) == (Health.CRITICAL, 1.0, None)
    fleets, meta = sweeping.fleet_health(r)
    assert meta["sweep_id"] == status["sweep_id"] and fleets["it"]["agents"] == AGENTS
    assert (fleets["it"]["healthy"], fleets["it"]["critical"]) == (HEALTHY, DEAD)

    # The class follows what the agent reports: one that dies is critical on the next sweep.
    victim = fleet["healthy"][0]
    sandbox.set_profile(victim, "dead")
    try:
        status = run_sweep(stack)
        snap = read_snapshot(r, victim)
        assert snap is not None and snap.sweep_id == status["sweep_id"]
        assert snap.health is Health.CRITICAL
        assert sweeping.fleet_health(r)[0]["it"]["critical"] == DEAD + 1
    finally:
        sandbox.set_profile(victim, "healthy")


def test_with_gateway_faults_the_sweep_completes_failed_agents_are_unknown_and_the_ceiling_holds(
    stack: Stack, fleet: dict[str, list[str]]
) -> None:
    sandbox = stack.sandbox()
    # Five agents the gateway does not know: their wallet reads fail at once, every time.
    strangers = [f"ghost-{i:04d}-0000000{i}" for i in range(5)]
    insert_agents(_sessions(stack), strangers, fleet="it", policy=stack.settings.policy)
    everyone = fleet["healthy"] + fleet["dead"] + strangers
    sandbox.reset_counters()
    # Every read fails now and then; the budget read fails often enough that some agents
    # use up every attempt on it.
    sandbox.set_faults(
        error_rate=0.10,
        timeout_rate=0.01,
        timeout_s=2.0,
        tools={"get_budget_status": {"error_rate": 0.5, "error_status": 502}},
    )
    try:
        started = time.monotonic()
        status = run_sweep(stack, timeout_s=90)
        took = time.monotonic() - started
    finally:
        sandbox.clear_faults()
    try:
        assert status["agents_done"] == len(everyone)
        r = connect(stack.settings.redis_url)
        failures = sweeping.sweep_failures(r, status["sweep_id"], limit=10000)
        for agent_id in everyone:
            snap = read_snapshot(r, agent_id)
            assert snap is not None and snap.sweep_id == status["sweep_id"]
            # Failed means unknown: neither healthy nor critical, with the reason kept.
            assert (
                (snap.health is Health.UNKNOWN)
                == (snap.error is not None)
                == (agent_id in failures)
            ), snap
        for agent_id in strangers:
            assert "NotFound" in failures[agent_id]
        assert status["unknown"] == len(failures) > len(strangers)
        for agent_id in set(failures) - set(strangers):
            # Only the injected faults: a server error, a timeout, or the breaker they opened.
            for reason in failures[agent_id].split("; "):
                assert reason.split(": ")[1].split()[0] in ("Unavailable", "CircuitOpen"), reason
        assert took < 60

        counters = sandbox.counters(agents=False)
        logical = _expected(len(everyone))
        reads = _reads(stack)
        failed = {
            name: sum(
                n for code, n in counters["statuses"].get(name, {}).items() if code[0] in "5d"
            )
            for name in logical
        }
        assert sum(failed.values()) > 0, counters["statuses"]
        for name, calls in logical.items():
            retries = reads[name] - calls
            # Retries happened, each after a failure, never past the ceiling. (An open breaker
            # may spare calls, so fewer than the logical number can reach the gateway.)
            assert retries <= failed[name], (name, reads, failed)
            assert reads[name] <= MAX_ATTEMPTS * calls, (name, reads)
        assert sum(reads.values()) > sum(logical.values()), "no retries at all"
        # With the faults gone every known agent is back to a real class.
        status = run_sweep(stack)
        assert status["unknown"] == len(strangers)
        assert set(sweeping.sweep_failures(r, status["sweep_id"])) == set(strangers)
    finally:
        with _sessions(stack).begin() as s:
            s.execute(update(Agent).where(Agent.agent_id.in_(strangers)).values(status="retired"))


def test_agents_not_active_in_the_database_are_not_read(
    stack: Stack, fleet: dict[str, list[str]]
) -> None:
    retired = _seed(stack, 1, "itretired", "healthy")
    insert_agents(
        _sessions(stack), retired, fleet="it", policy=stack.settings.policy, status="retired"
    )
    stack.sandbox().reset_counters()
    status = run_sweep(stack)
    assert status["agents"] == AGENTS
    assert _reads(stack) == _expected(AGENTS)
    assert read_snapshot(connect(stack.settings.redis_url), retired[0]) is None


def test_retention_deletes_history_older_than_the_policy_and_keeps_the_rest(
    stack: Stack, fleet: dict[str, list[str]]
) -> None:
    sessions = _sessions(stack)
    agent_id = fleet["healthy"][1]
    keep_days = stack.settings.policy.retention.metrics_days
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    old, recent = now - timedelta(days=keep_days + 1), now - timedelta(days=keep_days - 1)
    with sessions.begin() as s:
        s.add_all(
            [
                AgentHourly(agent_id=agent_id, hour=old, fleet="it", samples=1),
                AgentHourly(agent_id=agent_id, hour=recent, fleet="it", samples=1),
            ]
        )

    def hours() -> set[datetime]:
        with sessions() as s:
            rows = s.scalars(select(AgentHourly.hour).where(AgentHourly.agent_id == agent_id))
            return {h if h.tzinfo else h.replace(tzinfo=UTC) for h in rows}

    assert old in hours()
    stack.celery().send_task(TaskName.ENFORCE_RETENTION.value)
    wait_until(lambda: old not in hours(), timeout_s=30)
    assert hours() == {recent}


def test_logs_show_no_errors(stack: Stack) -> None:
    log = Path(stack.base_dir / "logs" / "metrics.log").read_text()
    assert "Traceback" not in log, log[-4000:]
