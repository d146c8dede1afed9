"""Two beats at once: exactly one schedules (RedBeat's lock in Redis); when that one is
SIGKILLed the other takes over once the lock expires, and no periodic task is doubled."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from config.settings import ScheduleSettings
from stack.local import Stack, local_stack
from stack.parts import wait_until
from stack.processes import Managed, beat_argv
from tests.chaos.support import kill_group, report
from workers.queues import ALL_QUEUES, heartbeat_name

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

HEARTBEAT_S = 1.0
LOCK_TTL_S = 5.0


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with local_stack(
        tmp_path,
        schedule=ScheduleSettings(heartbeat_s=HEARTBEAT_S, beat_lock_ttl_s=LOCK_TTL_S),
    ) as st:
        yield st


def _sent(r: redis.Redis) -> Counter[str]:
    """Every task message waiting in the queues (no worker consumes them), by task name."""
    names: Counter[str] = Counter()
    for queue in ALL_QUEUES:
        for raw in r.lrange(queue.value, 0, -1):
            names[json.loads(raw)["headers"]["task"]] += 1
    return names


def _holds_lock(stack: Stack, beat: Managed) -> bool:
    log = stack.base_dir / "logs" / f"{beat.name}.log"
    return log.exists() and b"Acquired lock" in log.read_bytes()


def test_two_beats_send_each_periodic_task_once_and_the_second_takes_over(stack: Stack) -> None:
    r = redis.Redis.from_url(stack.settings.redis_url)
    beats = [
        stack.sup.start(name, beat_argv(stack.settings), env=stack.env)
        for name in ("beat-a", "beat-b")
    ]
    started = time.monotonic()
    leader = wait_until(
        lambda: next((b for b in beats if _holds_lock(stack, b)), None), timeout_s=60
    )
    assert isinstance(leader, Managed)
    standby = next(b for b in beats if b is not leader)
    time.sleep(6)
    assert not _holds_lock(stack, standby), "both beats hold the lock"
    before_kill = _sent(r)
    kill_group(leader.process.pid)
    killed_at = time.monotonic()
    wait_until(lambda: _holds_lock(stack, standby), timeout_s=LOCK_TTL_S + 20, interval_s=0.1)
    takeover_s = time.monotonic() - killed_at
    time.sleep(4)
    elapsed = time.monotonic() - started
    sent = _sent(r)
    r.close()
    # At most one per interval over the whole run, whoever sent it; two beats would double it.
    ceiling = int(elapsed / HEARTBEAT_S) + 2
    heartbeats = {q.value: sent[heartbeat_name(q)] for q in ALL_QUEUES}
    doubled = {q: n for q, n in heartbeats.items() if n > ceiling}
    report(
        "two beats",
        run_s=round(elapsed, 1),
        heartbeats_per_queue=heartbeats,
        ceiling=ceiling,
        leader_killed=leader.name,
        takeover_s=round(takeover_s, 1),
        periodic_tasks_doubled=len(doubled),
    )
    assert not doubled, f"periodic tasks doubled (more than {ceiling}): {doubled}"
    # The standby scheduled once it held the lock.
    after_takeover = {
        q.value: sent[heartbeat_name(q)] - before_kill[heartbeat_name(q)] for q in ALL_QUEUES
    }
    assert min(after_takeover.values()) >= 1, after_takeover
    # Every other entry of the schedule was sent at most once per its own interval.
    assert sent["metrics.sweep"] <= 2 and sent["provisioning.resume_stalled"] <= 2, sent
