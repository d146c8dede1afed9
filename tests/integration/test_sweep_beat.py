"""Two beats (a misconfigured deployment, a failover) must not double the sweeps."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import pytest

from benchmarks.common import insert_bench_agents
from fleet.hotstate import connect
from fleet.monitoring import sweep as sweeping
from fleet.monitoring.poller import SWEEP_TOOLS
from fleet.storage.db import engine_for, session_factory
from stack.local import Stack, local_stack
from stack.parts import wait_until
from stack.processes import beat_argv

pytestmark = pytest.mark.integration

INTERVAL_S = 2.0
AGENTS = 30


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with local_stack(
        tmp_path_factory.mktemp("beat"),
        schedule={"metrics_sweep_s": INTERVAL_S},
        metrics={"batch_size": 10},
    ) as st:
        st.start_worker(["metrics"], concurrency=2, name="metrics")
        yield st


def test_two_beats_sweep_once_per_tick(stack: Stack) -> None:
    ids = list(stack.sandbox().seed(AGENTS, prefix="beat")["agent_ids"])
    insert_bench_agents(
        session_factory(engine_for(stack.settings.sqlalchemy_url)),
        ids,
        fleet="beat",
        policy=stack.settings.policy,
    )
    stack.sandbox().reset_counters()
    r = connect(stack.settings.redis_url)
    beats = []
    started = time.monotonic()
    for n in (1, 2):
        argv = beat_argv(stack.settings)
        argv[argv.index("--schedule") + 1] = str(stack.base_dir / f"beat-{n}-schedule")
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
    # Each sweep polled each agent once: the work is not doubled.
    counters = stack.sandbox().counters(agent_prefix="beat")["agents"]
    assert counters == {a: {tool: started_sweeps for tool in SWEEP_TOOLS} for a in ids}
