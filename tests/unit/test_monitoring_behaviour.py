"""Task-log ingestion into Redis, and the beat check that turns it into signals."""

from __future__ import annotations

from typing import Any

import fakeredis

from config.policy import AlertPolicy, BehaviourSignals
from fleet.monitoring import behaviour

AGENT = "seg0-0001-1a2b3c4d"
WINDOW = 3600.0
NOW = 1_800_000_000.0


def log(i: int, **kw: Any) -> behaviour.TaskLog:
    return behaviour.TaskLog(
        agent_id=AGENT,
        task_id=f"t{i}",
        tool_calls=5,
        unique_tools=2,
        decision_latency_ms=100.0,
        counterparties=[f"cp{i % 3}"],
        **kw,
    )


def test_ingest_counts_each_task_once() -> None:
    r = fakeredis.FakeRedis(decode_responses=True)
    assert behaviour.ingest(r, [log(i, retries=1) for i in range(10)], WINDOW, NOW) == 10
    assert (
        behaviour.ingest(r, [log(i) for i in range(12)], WINDOW, NOW) == 2
    )  # resubmissions are not counted
    window = r.hgetall(f"fleet:tasklog:{AGENT}:{int(NOW // WINDOW)}")
    assert window == {"tasks": "12", "calls": "60", "unique": "24", "retries": "10"}
    assert r.scard(f"fleet:tasklog:cp:{AGENT}:{int(NOW // 86400)}") == 3
    assert r.sismember(f"fleet:tasklog:agents:{int(NOW // WINDOW)}", AGENT)


def test_check_raises_a_signal_once_and_resolves_when_the_agent_falls_silent() -> None:
    r = fakeredis.FakeRedis(decode_responses=True)
    policy = AlertPolicy(behaviour=BehaviourSignals(min_tasks=10))
    behaviour.ingest(
        r, [log(i, retries=2) for i in range(20)], WINDOW, NOW
    )  # 40 % of calls retried
    changes = behaviour.check(r, policy, NOW + 60)
    assert [(c.rule.name, c.fired, c.subject) for c in changes] == [
        ("behaviour.retry_ratio", True, AGENT)
    ]
    assert behaviour.check(r, policy, NOW + 120) == []
    assert r.sismember(behaviour.WATCH_KEY, AGENT)
    later = NOW + 3 * WINDOW  # both judged windows are empty now
    assert [(c.rule.name, c.fired) for c in behaviour.check(r, policy, later)] == [
        ("behaviour.retry_ratio", False)
    ]
    assert not r.sismember(behaviour.WATCH_KEY, AGENT)


def test_task_log_validation() -> None:
    import pydantic
    import pytest

    with pytest.raises(pydantic.ValidationError):
        behaviour.TaskLog(agent_id="bad id", task_id="t", tool_calls=1, unique_tools=1)
    with pytest.raises(pydantic.ValidationError):
        behaviour.TaskLog(agent_id=AGENT, task_id="t", tool_calls=-1, unique_tools=1)
