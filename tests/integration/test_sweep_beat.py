"""Two beats (a misconfigured deployment, a failover) must not double the sweeps."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet.hotstate import connect
from fleet.monitoring import sweep as sweeping
from fleet.monitoring.plan import NO_KEY
from fleet.monitoring.poller import SWEEP_OPERATIONS
from fleet.monitoring.snapshot import read_snapshot
from stack.local import Stack, local_stack
from stack.parts import wait_until
from stack.processes import beat_argv
from tests.support.fleet_rows import insert_agents, seeded_ids, sessions_for
from workers.queues import TaskName

pytestmark = pytest.mark.integration

INTERVAL_S = 2.0
AGENTS = 30


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("beat")
    policy = base / "policy.yaml"
    default = Path(__file__).resolve().parents[2] / "config" / "defaults" / "policy.yaml"
    # One tick per period: every sweep reads every agent.
    policy.write_text(f"extends: {default}\nmonitoring:\n  wallet_period_s: {INTERVAL_S}\n")
    with local_stack(
        base,
        policy_file=policy,
        schedule={"metrics_sweep_s": INTERVAL_S},
        metrics={"batch_size": 10},
    ) as st:
        st.start_worker(["metrics"], concurrency=2, name="metrics")
        yield st


def test_two_beats_sweep_once_per_tick(stack: Stack) -> None:
    ids = seeded_ids(stack.sandbox().seed(AGENTS, prefix="beat", profile="healthy"))
    insert_agents(
        sessions_for(stack.settings.sqlalchemy_url), ids, fleet="beat", policy=stack.settings.policy
    )
    stack.sandbox().reset_counters()
    r = connect(stack.settings.redis_url)
    beats = []
    started = time.monotonic()
    for n in (1, 2):
        # Two schedulers that both send (RedBeat's lock would let one only): the sweep's
        # own tick dedup is what is tested here; tests/chaos/test_two_beats.py tests the lock.
        argv = [
            *beat_argv(stack.settings),
            "--scheduler",
            "celery.beat:PersistentScheduler",
            "--schedule",
            str(stack.base_dir / f"beat-{n}-schedule"),
        ]
        beats.append(stack.sup.start(f"beat-{n}", argv, env=stack.env))
    try:
        wait_until(
            lambda: int(r.hget(sweeping.STATS_KEY, "skipped_duplicate") or 0) >= 2, timeout_s=30
        )
        time.sleep(INTERVAL_S)
    finally:
        for beat in beats:
            stack.sup.remove(beat)
    elapsed = time.monotonic() - started

    def settled() -> bool:
        return all(
            (sweeping.sweep_status(r, s) or {}).get("status") != "running"
            for s in sweeping.recent_sweeps(r, 50)
        )

    wait_until(settled, timeout_s=30)
    stats = {k: int(v) for k, v in r.hgetall(sweeping.STATS_KEY).items()}
    started_sweeps = stats["started"]
    # One beat alone would have started about elapsed / interval sweeps; two beats start no more.
    assert 2 <= started_sweeps <= math.ceil(elapsed / (0.9 * INTERVAL_S)) + 1, stats
    assert stats["skipped_duplicate"] >= 2
    statuses = [sweeping.sweep_status(r, s) for s in sweeping.recent_sweeps(r, 50)]
    assert [s["status"] for s in statuses if s] == ["finished"] * started_sweeps
    # Each sweep read each agent once (two reads, all with the admin key: we hold no agent
    # key): the work is not doubled, and every agent's wallet comes from the last sweep.
    counters = stack.sandbox().counters()
    reads = {
        name: SWEEP_OPERATIONS.count(name) * AGENTS * started_sweeps for name in SWEEP_OPERATIONS
    }
    assert counters["tools"] == reads, stats
    assert counters["agents"] == {"fleet-admin": reads}
    last = sweeping.sweep_status(r, sweeping.recent_sweeps(r, 1)[0])
    assert last is not None
    assert all(
        (snap := read_snapshot(r, a)) is not None
        and snap.wallet_read_at is not None
        and float(last["started_at"]) <= snap.wallet_read_at <= float(last["finished_at"])
        for a in ids
    )


def test_a_redelivered_tick_or_batch_reads_nothing_again(stack: Stack) -> None:
    ids = seeded_ids(stack.sandbox().seed(5, prefix="redo", profile="healthy"))
    insert_agents(
        sessions_for(stack.settings.sqlalchemy_url), ids, fleet="redo", policy=stack.settings.policy
    )
    r = connect(stack.settings.redis_url)
    app = stack.celery()
    before = {k: int(v) for k, v in r.hgetall(sweeping.STATS_KEY).items()}
    stack.sandbox().reset_counters()
    tick = uuid.uuid4().hex
    for _ in range(2):  # the same tick twice: a message redelivered after a lost ack
        app.send_task(TaskName.METRICS_SWEEP.value, kwargs={"tick": tick})

    def mine() -> list[dict[str, Any]]:
        found = [sweeping.sweep_status(r, s) for s in sweeping.recent_sweeps(r, 50)]
        return [s for s in found if s and s["tick"] == tick]

    wait_until(lambda: [s["status"] for s in mine()] == ["finished"], timeout_s=30)
    wait_until(
        lambda: (
            int(r.hget(sweeping.STATS_KEY, "skipped_duplicate") or 0)
            == before.get("skipped_duplicate", 0) + 1
        ),
        timeout_s=30,
    )
    [status] = mine()
    agents = status["agents"]
    reads = stack.sandbox().counters(agents=False)["tools"]
    assert reads == {name: SWEEP_OPERATIONS.count(name) * agents for name in SWEEP_OPERATIONS}

    # A batch of it delivered again finds the sweep finished and reads nothing.
    rows = [sweeping.PolledAgent("redo", a, NO_KEY) for a in ids]
    batch = sweeping.plan_batches(rows, dict.fromkeys(ids, True), 10)[0]
    log = stack.base_dir / "logs" / "metrics.log"
    seen = log.read_text().count("'skipped': '")
    app.send_task(TaskName.POLL_BATCH.value, args=(status["sweep_id"], 0, batch))
    wait_until(lambda: log.read_text().count("'skipped': '") == seen + 1, timeout_s=30)
    assert stack.sandbox().counters(agents=False)["tools"] == reads
    assert sweeping.sweep_status(r, status["sweep_id"]) == status
