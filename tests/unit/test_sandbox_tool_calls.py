"""The sandbox's agents report whole tool calls per heartbeat that add up to their rate."""

from __future__ import annotations

from sandbox.agents import heartbeat_metrics
from sandbox.behaviour import metrics_at
from sandbox.state import Agent

START = 1_796_000_000.0


def test_short_intervals_add_up_to_the_hourly_rate() -> None:
    agent = Agent("a-0001", "", START, profile=0, hash=12345, origin=START, simulated=True)
    interval = 10.0
    counts = [
        heartbeat_metrics(agent, START + interval * (i + 1), interval).tool_calls
        for i in range(360)
    ]
    rates = [
        metrics_at(agent.profile, agent.hash, agent.params(), START + 10 * i, agent.origin)
        for i in range(360)
    ]
    expected = sum(m.calls_per_hour for m in rates) / len(rates)
    assert all(c is not None and c >= 0 for c in counts)
    total = sum(c or 0 for c in counts)
    assert expected > 0 and abs(total - expected) <= 0.05 * expected + 1, (total, expected)
