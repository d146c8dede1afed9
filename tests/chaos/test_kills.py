"""Workers SIGKILLed mid-task, repeatedly, and Redis killed and restarted mid-provisioning
and mid-sweep, on one private stack (Redis append-only with a password, the sandbox,
SQLite, real worker processes).

Counted at the gateway with its own reads (identities, keys, balances) and in our
records (jobs, audit entries): 0 jobs lost, 0 agents duplicated, 0 spends repeated,
0 audit entries lost or doubled. An agent killed between its registration and
storing its key cannot get that key back (the gateway shows a key once): it fails
saying so and the operator's key import finishes it, as README says; it is counted.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from decimal import Decimal
from typing import Any

import httpx
import pytest
import redis

from config.settings import ScheduleSettings
from fleet.monitoring.sweep import recent_sweeps, sweep_status
from fleet.provisioning import pipeline
from fleet.provisioning.pipeline import JobProgress, job_progress
from fleet.storage.db import engine_for, session_factory
from stack.local import Stack, local_stack
from stack.parts import wait_until
from stack.processes import Managed, RestartPolicy
from tests.chaos.support import kill_group, report
from tests.support.workload import fleet_manifest
from workers.queues import TaskName
from workers.runtime import celery_runtime

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

TREASURY = "fleet-treasury"
SETTLED = {"active", "failed", "awaiting_key"}
KEY_LOST = "its answer, which alone carries the key, was lost"
WORKERS: dict[str, dict[str, Any]] = {
    "provisioning": {"queues": ["provisioning"], "concurrency": 8, "pool": "threads"},
    "audit": {"queues": ["audit"], "concurrency": 1, "pool": "prefork"},
    "metrics": {"queues": ["metrics"], "concurrency": 2, "pool": "prefork"},
    "sla": {
        "queues": [
            "sla",
            "escalation.tier1",
            "escalation.tier2",
            "escalation.tier3",
            "escalation.tier4",
        ],
        "concurrency": 1,
        "pool": "prefork",
    },
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with local_stack(
        tmp_path_factory.mktemp("chaos"),
        latency_ms=20,
        # A sweep killed mid-way holds its no-overlap window (0.9 interval): short here.
        schedule=ScheduleSettings(
            provisioning_stall_s=2, provisioning_lock_ttl_s=3, metrics_sweep_s=4
        ),
        gateway={"breaker_reset_s": 1.0},
    ) as st:
        assert httpx.post(f"{st.sandbox().url}/v1/register", json={"agent_id": TREASURY})
        for name in WORKERS:
            start(st, name)
        yield st


def start(stack: Stack, name: str) -> Managed:
    spec = WORKERS[name]
    return stack.start_worker(
        spec["queues"], concurrency=spec["concurrency"], pool=spec["pool"], name=name
    )


def kill_and_restart(stack: Stack, name: str) -> None:
    victim = next(c for c in stack.sup.children if c.name == name)
    kill_group(victim.process.pid)
    stack.sup.remove(victim)
    start(stack, name)


def sessions(stack: Stack) -> Any:
    return session_factory(engine_for(stack.settings.sqlalchemy_url))


def submit(stack: Stack, manifest: dict[str, Any]) -> str:
    job_id = uuid.uuid4().hex
    app = stack.celery()
    try:
        app.send_task(TaskName.PROVISION_FLEET, kwargs={"manifest": manifest, "job_id": job_id})
    finally:
        app.close()
    return job_id


def progress(stack: Stack, job_id: str) -> JobProgress:
    p = job_progress(sessions(stack), job_id)
    assert p is not None
    return p


def done(stack: Stack, job_id: str) -> int:
    """Agents active so far; 0 before the job's message has run."""
    p = job_progress(sessions(stack), job_id, with_agents=False)
    return 0 if p is None else p.done


def all_done(stack: Stack, job_id: str) -> bool:
    p = job_progress(sessions(stack), job_id, with_agents=False)
    return p is not None and p.total > 0 and p.pending == 0


def settled(stack: Stack, job_id: str) -> bool:
    """Every agent of the job active, failed, or waiting for a key (which only the operator
    can give)."""
    p = job_progress(sessions(stack), job_id)
    return (
        p is not None
        and p.total > 0
        and len(p.agents) == p.total
        and all(a.status in SETTLED for a in p.agents)
    )


def settle(stack: Stack, job_id: str, manifest: dict[str, Any], timeout_s: float) -> int:
    """Wait for the job; agents whose key a kill lost get one from the operator and the
    manifest runs again. Returns how many keys were lost."""
    wait_until(lambda: settled(stack, job_id), timeout_s=timeout_s, interval_s=0.2)
    agents = progress(stack, job_id).agents
    assert not [a for a in agents if a.status == "failed"], agents
    lost = [a for a in agents if a.status == "awaiting_key"]
    for agent in lost:
        assert KEY_LOST in (agent.failure_reason or ""), agent
    if lost:
        rt = celery_runtime(stack.celery(), stack.settings)
        rt.install_audit_sink()
        try:
            for agent in lost:
                key = stack.sandbox().mint_key(agent.agent_id, "free")
                pipeline.import_agent_key(rt.provisioning, agent.agent_id, key, "chaos-operator")
        finally:
            rt.close()
        rerun = submit(stack, manifest)
        wait_until(lambda: all_done(stack, rerun), timeout_s=120, interval_s=0.2)
    return len(lost)


def audit_counts(stack: Stack, prefix: str) -> Counter[str]:
    with closing(sqlite3.connect(stack.base_dir / "fleet.db", timeout=30)) as conn:
        rows = conn.execute(
            "SELECT subject FROM audit_entries WHERE action = 'provision_agent' AND subject LIKE ?",
            (prefix + "%",),
        ).fetchall()
    return Counter(subject for (subject,) in rows)


def check_fleet(stack: Stack, job_id: str, prefix: str, total: int) -> dict[str, int]:
    """The invariants, counted; asserts each is zero."""
    final = progress(stack, job_id)
    sandbox = stack.sandbox()
    duplicated = repeated_spends = 0
    for agent in final.agents:
        view = sandbox.agent(agent.agent_id)
        # One identity per id at the gateway; a second key is the operator's import.
        duplicated += len([k for k in view["keys"] if k["tier"] == "free"]) > 2
        repeated_spends += Decimal(view["wallet"]["balance"]) != Decimal("25.00")
    wait_until(lambda: sum(audit_counts(stack, prefix).values()) >= total, timeout_s=60)
    audited = audit_counts(stack, prefix)
    counts = {
        "jobs_lost": int(final.done != total),
        "agents_duplicated": duplicated,
        "spends_repeated": repeated_spends,
        "audit_entries_lost": sum(1 for a in final.agents if audited[a.agent_id] == 0),
        "audit_entries_doubled": sum(1 for n in audited.values() if n > 1),
    }
    assert counts == dict.fromkeys(counts, 0), counts
    verify = subprocess.run(
        [sys.executable, "-m", "cli.main", "audit", "verify"],
        env={**os.environ, **stack.env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    return counts


def test_each_queue_worker_sigkilled_mid_task_repeatedly(stack: Stack) -> None:
    total, rounds = 36, 3
    manifest = fleet_manifest(total, fleet="kills")
    job_id = submit(stack, manifest)
    kills: Counter[str] = Counter()
    started = time.monotonic()
    last = 0
    r = redis.Redis.from_url(stack.settings.redis_url, decode_responses=True)
    for _ in range(rounds):
        wait_until(lambda n=last + 4: done(stack, job_id) >= n, timeout_s=120, interval_s=0.1)
        last = done(stack, job_id)
        if last >= total:
            break
        # The sweep and the SLA check run while their workers die under them.
        stack.celery().send_task(TaskName.METRICS_SWEEP, kwargs={"tick": uuid.uuid4().hex})
        stack.celery().send_task(TaskName.SLA_SWEEP)
        time.sleep(0.3)
        for name in WORKERS:
            kill_and_restart(stack, name)
            kills[name] += 1
    keys_lost = settle(stack, job_id, manifest, timeout_s=180)
    recovered_s = time.monotonic() - started
    # A sweep after the kills covers every agent.
    swept = sweep_until_finished(stack, r)
    assert swept["agents_done"] == swept["agents"] > 0, swept
    counts = check_fleet(stack, job_id, "kills-", total)
    r.close()
    report(
        "SIGKILL each queue's worker mid-task",
        agents=total,
        kills=dict(kills),
        keys_lost_at_a_kill=keys_lost,
        job_to_done_s=round(recovered_s, 1),
        sweep_after_kills=f"{swept['agents_done']}/{swept['agents']}",
        **counts,
    )


def test_redis_killed_and_restarted_mid_provisioning_and_mid_sweep(stack: Stack) -> None:
    total = 40
    manifest = fleet_manifest(total, fleet="redis-kill")
    job_id = submit(stack, manifest)
    wait_until(lambda: done(stack, job_id) >= 5, timeout_s=120, interval_s=0.1)
    stack.celery().send_task(TaskName.METRICS_SWEEP, kwargs={"tick": uuid.uuid4().hex})
    time.sleep(0.2)
    redis_child = next(c for c in stack.sup.children if c.name == "redis")
    done_at_kill = done(stack, job_id)
    kill_group(redis_child.process.pid)
    killed_at = time.monotonic()
    # The supervisor `fleet up` uses brings it back, from its append-only file.
    policy = RestartPolicy(backoff_s=0.5)
    wait_until(
        lambda: (
            stack.sup.tend(policy) is not None and redis_child.restarts == 1 and redis_child.alive()
        ),
        timeout_s=30,
        interval_s=0.1,
    )
    r = redis.Redis.from_url(stack.settings.redis_url, decode_responses=True)
    wait_until(lambda: _pings(r), timeout_s=30)
    restarted_s = time.monotonic() - killed_at
    # Workers that lost Redis exit; the supervisor starts fresh ones.
    tending = threading.Event()

    def tend() -> None:
        while not tending.is_set():
            stack.sup.tend(policy)
            time.sleep(0.2)

    tender = threading.Thread(target=tend, daemon=True)
    tender.start()
    try:
        keys_lost = settle(stack, job_id, manifest, timeout_s=240)
        to_done_s = time.monotonic() - killed_at
        swept = sweep_until_finished(stack, r)
    finally:
        tending.set()
        tender.join(5)
    assert swept["agents_done"] == swept["agents"] > 0, swept
    restarted = {c.name: c.restarts for c in stack.sup.children if c.restarts}
    counts = check_fleet(stack, job_id, "redis-kill-", total)
    r.close()
    report(
        "Redis SIGKILLed mid-provisioning and mid-sweep",
        agents=total,
        done_at_kill=done_at_kill,
        redis_back_s=round(restarted_s, 1),
        restarted=restarted,
        kill_to_job_done_s=round(to_done_s, 1),
        keys_lost_at_a_kill=keys_lost,
        **counts,
    )


def sweep_until_finished(stack: Stack, r: redis.Redis, timeout_s: float = 90) -> dict[str, Any]:
    """Send sweep ticks until one reads wallets to the end (one killed mid-way holds its
    window). The wallet plan reads one slot of the fleet per tick interval, and at the
    stack's short interval most slots of a small fleet are empty: those are passed over."""
    deadline = time.monotonic() + timeout_s
    app = stack.celery()
    try:
        while time.monotonic() < deadline:
            tick = uuid.uuid4().hex
            app.send_task(TaskName.METRICS_SWEEP, kwargs={"tick": tick})
            until = time.monotonic() + stack.settings.schedule.metrics_sweep_s
            while time.monotonic() < until:
                for sid in recent_sweeps(r, 5):
                    s = sweep_status(r, sid)
                    if s and s.get("tick") == tick and s["status"] == "finished":
                        if int(s["agents"]) > 0:
                            return s
                        until = 0.0  # an empty slot: the next tick reads the next one
                time.sleep(0.2)
    finally:
        app.close()
    raise AssertionError(f"no sweep finished within {timeout_s} s")


def _pings(r: redis.Redis) -> bool:
    try:
        return bool(r.ping())
    except redis.RedisError:
        return False
