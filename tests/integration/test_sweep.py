"""The wallet poll with real parts: Redis, a metrics worker process, the sandbox over HTTP,
SQLite.

Per agent the sweep reads the wallet balance and the budget, through the key its plan
gave it: agents we hold a pro key for on their own window, the others on the admin key
within its share of the gateway. It writes only the snapshot's money fields."""

from __future__ import annotations

import subprocess
import sys
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
from fleet.monitoring.snapshot import Health, read_snapshot, snapshot_key
from fleet.secrets import KeyVault
from fleet.storage.records import Agent
from stack.local import Stack, local_stack
from stack.parts import wait_until
from tests.support.fleet_rows import insert_agents, seeded_ids, sessions_for
from workers.queues import TaskName

pytestmark = pytest.mark.integration

OWN = 60  # agents we hold a pro key for
KEYLESS = 40  # agents only the admin key can read
AGENTS = OWN + KEYLESS
BATCH = 25
MAX_ATTEMPTS = 3
# Wallet reads a second on the admin key: 45 agents a minute (the keyless 40 and 5 pro).
ADMIN_CALLS_PER_S = 1.5


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("sweep")
    policy = base / "policy.yaml"
    default = Path(__file__).resolve().parents[2] / "config" / "defaults" / "policy.yaml"
    policy.write_text(
        f"extends: {default}\n"
        "monitoring:\n"
        "  wallet_period_s: 60\n"  # one tick per period: every sweep reads the whole fleet
        f"  admin_calls_per_s: {ADMIN_CALLS_PER_S}\n"
    )
    with local_stack(
        base,
        latency_ms=5,
        jitter_ms=1,
        policy_file=policy,
        metrics={"batch_size": BATCH, "in_flight": 40, "poll_timeout_s": 0.5},
        gateway={"max_attempts": MAX_ATTEMPTS, "backoff_initial_s": 0.01, "backoff_max_s": 0.05},
    ) as st:
        st.start_worker(["metrics"], concurrency=2, name="metrics")
        yield st


def _sessions(stack: Stack) -> sessionmaker[Session]:
    return sessions_for(stack.settings.sqlalchemy_url)


def hold_keys(stack: Stack, keys: dict[str, str], tier: str) -> None:
    """What provisioning leaves for an agent whose key we hold: the key, encrypted, and its tier."""
    vault = KeyVault(stack.settings.secrets_key.get_secret_value())
    with _sessions(stack).begin() as s:
        for agent_id, key in keys.items():
            s.execute(
                update(Agent)
                .where(Agent.agent_id == agent_id)
                .values(api_key_encrypted=vault.encrypt(key), extra={"key": {"tier": tier}})
            )


@pytest.fixture(scope="module")
def fleet(stack: Stack) -> dict[str, list[str]]:
    seeded = stack.sandbox().seed(OWN, prefix="itown", profile="healthy", tier="pro")
    own = {a["agent_id"]: a["api_key"] for a in seeded["agents"]}
    keyless = seeded_ids(stack.sandbox().seed(KEYLESS, prefix="itadm", profile="healthy"))
    insert_agents(_sessions(stack), [*own, *keyless], fleet="it", policy=stack.settings.policy)
    hold_keys(stack, own, "pro")
    return {"own": sorted(own), "keyless": keyless}


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


def test_a_sweep_reads_every_wallet_once_through_the_key_its_plan_gave_it(
    stack: Stack, fleet: dict[str, list[str]]
) -> None:
    r = connect(stack.settings.redis_url)
    # The heartbeat ingest's fields of one agent, there before the poll.
    watched = fleet["own"][-1]
    r.hset(
        snapshot_key(watched),
        mapping={
            "agent_id": watched,
            "polled_at": "1.0",
            "health": "healthy",
            "latency_p99": "420",
        },
    )
    sandbox = stack.sandbox()
    sandbox.reset_counters()
    started = time.time()
    status = run_sweep(stack)
    assert (status["agents"], status["agents_done"], status["failed"]) == (AGENTS, AGENTS, 0)
    assert (status["rate_limited"], status["paced"]) == (0, 0)
    assert status["batches"] == -(-AGENTS // BATCH)
    # Two reads per agent, no more: the keyless ones and the five lowest pro ids on the
    # admin key, the other pro agents each on its own window.
    assert _reads(stack) == _expected(AGENTS)
    callers = {a: sum(t.values()) for a, t in sandbox.counters()["agents"].items()}
    assert callers == {"fleet-admin": 2 * (KEYLESS + 5), **{a: 2 for a in fleet["own"][5:]}}
    plan = sweeping.last_plan(r)
    assert plan is not None and plan["fits"] is True
    assert plan["admin_by_tier"] == {"none": KEYLESS, "pro": 5}
    assert plan["own_by_tier"] == {"pro": OWN - 5}

    for agent_id in fleet["own"] + fleet["keyless"]:
        snap = read_snapshot(r, agent_id)
        assert snap is not None and snap.wallet_error is None
        assert snap.balance is not None and Decimal(0) < snap.balance <= Decimal(500)
        assert snap.burn_rate_per_hour is not None
        assert snap.wallet_read_at is not None and snap.wallet_read_at >= started
    # The poll wrote its own fields only: the heartbeat's are as they were.
    snap = read_snapshot(r, watched)
    assert snap is not None and (snap.health, snap.latency_p99) == (Health.HEALTHY, 420.0)
    # What monitoring costs: every call counted against the fleet, none charged.
    overhead = sweeping.monitoring_overhead(r, time.time())["it"]
    assert overhead.calls >= 2 * AGENTS and overhead.charged == Decimal("0.00")


def test_a_429_is_counted_as_a_plan_defect_and_shown_in_the_sweep_record(
    stack: Stack, fleet: dict[str, list[str]]
) -> None:
    r = connect(stack.settings.redis_url)
    before = int(r.hget(sweeping.STATS_KEY, "rate_limited") or 0)
    stack.sandbox().set_faults(tools={"get_balance": {"rate_limit_next": 3}})
    try:
        status = run_sweep(stack)
    finally:
        stack.sandbox().clear_faults()
    assert status["rate_limited"] == 3 and status["failed"] == 3
    assert int(r.hget(sweeping.STATS_KEY, "rate_limited") or 0) == before + 3
    failures = sweeping.sweep_failures(r, status["sweep_id"])
    assert len(failures) == 3 and all("RateLimited 429" in e for e in failures.values())
    for agent_id, error in failures.items():
        snap = read_snapshot(r, agent_id)
        assert snap is not None and snap.wallet_error == error


def test_with_gateway_faults_the_sweep_completes_failures_keep_their_error_and_the_ceiling_holds(
    stack: Stack, fleet: dict[str, list[str]]
) -> None:
    sandbox = stack.sandbox()
    # Five agents the gateway does not know: their wallet reads fail at once, every time.
    strangers = [f"ghost-{i:04d}-0000000{i}" for i in range(5)]
    insert_agents(_sessions(stack), strangers, fleet="it", policy=stack.settings.policy)
    everyone = fleet["own"] + fleet["keyless"] + strangers
    # Keyless too: they take the admin key's five places the pro agents had.
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
            assert snap is not None
            # A failed read keeps its reason on the snapshot; a good one clears it.
            assert (snap.wallet_error is not None) == (agent_id in failures), snap

        def injected(reason: str) -> bool:
            # A server error, a timeout, or the breaker they opened.
            return reason.split(": ")[1].split()[0] in ("Unavailable", "CircuitOpen")

        # A stranger's reads fail with the gateway's 404, unless an injected fault took
        # every attempt of both reads first (rare, yet seen in CI: the retry ceiling can cut
        # the attempts short).
        for agent_id in strangers:
            reasons = failures[agent_id].split("; ")
            assert "NotFound" in failures[agent_id] or all(map(injected, reasons)), reasons
        assert sum("NotFound" in failures[a] for a in strangers) >= len(strangers) - 1
        assert status["failed"] == len(failures) > len(strangers)
        for agent_id in set(failures) - set(strangers):
            for reason in failures[agent_id].split("; "):
                assert injected(reason), reason
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
        # With the faults gone only the strangers fail.
        status = run_sweep(stack)
        assert status["failed"] == len(strangers)
        assert set(sweeping.sweep_failures(r, status["sweep_id"])) == set(strangers)
    finally:
        with _sessions(stack).begin() as s:
            s.execute(update(Agent).where(Agent.agent_id.in_(strangers)).values(status="retired"))


def test_agents_not_active_in_the_database_are_not_read(
    stack: Stack, fleet: dict[str, list[str]]
) -> None:
    retired = seeded_ids(stack.sandbox().seed(1, prefix="itretired", profile="healthy"))
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
    agent_id = fleet["own"][1]
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


def test_a_plan_that_cannot_fit_is_refused_with_its_numbers_by_the_worker_and_fleet_status(
    stack: Stack, fleet: dict[str, list[str]]
) -> None:
    run_sweep(stack)  # a sweep that fitted: its calls are the last hour's overhead
    # A hundred free keys: a free window (100/h) leaves no room once its heartbeats
    # (60/h) and the headroom are taken, and the admin key's share is full already.
    seeded = stack.sandbox().seed(100, prefix="itfree", profile="healthy")
    free = {a["agent_id"]: a["api_key"] for a in seeded["agents"]}
    insert_agents(_sessions(stack), list(free), fleet="it", policy=stack.settings.policy)
    hold_keys(stack, free, "free")
    r = connect(stack.settings.redis_url)
    refused_before = int(r.hget(sweeping.STATS_KEY, "refused") or 0)
    try:
        stack.sandbox().reset_counters()
        stack.celery().send_task(TaskName.METRICS_SWEEP.value, kwargs={"tick": uuid.uuid4().hex})
        wait_until(
            lambda: int(r.hget(sweeping.STATS_KEY, "refused") or 0) == refused_before + 1,
            timeout_s=30,
        )
        plan = sweeping.last_plan(r)
        assert plan is not None and plan["fits"] is False
        # 45 admin places (1.5 calls/s × 60 s / 2 reads): the 40 keyless agents, then 5 free.
        assert plan["unplaced"] == {"free": 95}
        assert plan["refused"].startswith(
            "wallet plan refused: 200 agents × 2 reads every 60 s need 120 calls/h per agent; "
            "the admin key's share 1.5 calls/s takes 45 agents every 60 s;"
        )
        assert "free 95 agents (window 100/h leaves 0/h)" in plan["refused"]
        # 140 agents need the admin key (the pro ones have room): 1.5 × 240 / 2 = 180 places.
        assert "the smallest wallet_period_s that fits is 240 s" in plan["refused"]
        assert _reads(stack) == _expected(0)  # nothing was read
        log = Path(stack.base_dir / "logs" / "metrics.log").read_text()
        assert "wallet plan refused: 200 agents" in log

        status = subprocess.run(
            [str(Path(sys.executable).with_name("fleet")), "status"],
            env=stack.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode == 1, status.stdout + status.stderr
        assert plan["refused"] in status.stdout
        assert "plan defects: " in status.stdout
        assert "monitoring overhead it: $0.00/h (" in status.stdout
    finally:
        with _sessions(stack).begin() as s:
            s.execute(update(Agent).where(Agent.agent_id.in_(list(free))).values(status="retired"))
    status_after = run_sweep(stack)
    assert status_after["agents"] == AGENTS and sweeping.last_plan(r)["fits"] is True  # type: ignore[index]


def test_logs_show_no_errors(stack: Stack) -> None:
    log = Path(stack.base_dir / "logs" / "metrics.log").read_text()
    assert "Traceback" not in log, log[-4000:]
