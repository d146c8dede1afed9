"""Alert rules with a movable clock: each fires after its duration, once, and resolves."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from config.policy import AgentAlertRules, AlertPolicy, BehaviourSignals, FleetAlertRules
from fleet.clock import ManualClock
from fleet.monitoring import behaviour
from fleet.monitoring.rules import (
    AgentRules,
    AgentSample,
    Change,
    FleetRules,
    Rule,
    evaluate_agent,
    evaluate_fleet,
    track,
)

SWEEP_S = 60
AGENT = "seg0-0001-1a2b3c4d"


def policy(**agent: Any) -> AlertPolicy:
    return AlertPolicy(agent=AgentAlertRules(baseline_min_samples=3, **agent))


class Agent:
    """One agent swept every minute by a movable clock."""

    def __init__(self, p: AlertPolicy | None = None) -> None:
        self.rules = AgentRules.from_policy(p or policy())
        self.clock = ManualClock()
        self.state: dict[str, Any] = {}
        self.log: list[Change] = []

    def sweep(self, minutes: int = 1, **sample: Any) -> list[Change]:
        out: list[Change] = []
        for _ in range(minutes):
            self.clock.advance(SWEEP_S)
            values = {
                "latency_p99": 800.0,
                "error_rate": 0.01,
                "balance": Decimal("50.00"),
                "burn_rate_per_hour": Decimal("1.00"),
                "sla_compliant": True,
                **sample,
            }
            out += evaluate_agent(
                self.rules,
                self.state,
                AgentSample(AGENT, self.clock.now().timestamp(), "demo", **values),
            )
        self.log += out
        return out


def names(changes: list[Change]) -> list[tuple[str, bool]]:
    return [(c.rule.name, c.fired) for c in changes]


def test_track_fires_after_the_duration_once_and_resolves() -> None:
    rule = Rule("r", "warning", "oncall", for_s=300)
    conds: dict[str, list[float]] = {}
    assert track(conds, rule, True, 0, "a") is None
    assert track(conds, rule, True, 299, "a") is None
    fired = track(conds, rule, True, 300, "a")
    assert fired is not None and fired.fired and fired.since == 0
    assert track(conds, rule, True, 900, "a") is None  # once per episode
    assert track(conds, rule, None, 960, "a") is None  # unknown: nothing changes
    resolved = track(conds, rule, False, 1000, "a")
    assert resolved is not None and not resolved.fired
    assert track(conds, rule, False, 1060, "a") is None


def test_a_condition_that_clears_before_its_duration_never_fires() -> None:
    rule = Rule("r", "warning", "oncall", for_s=300)
    conds: dict[str, list[float]] = {}
    track(conds, rule, True, 0, "a")
    assert track(conds, rule, False, 200, "a") is None  # no resolve for what never fired
    assert track(conds, rule, True, 260, "a") is None  # the clock starts again
    assert track(conds, rule, True, 500, "a") is None
    assert track(conds, rule, True, 560, "a") is not None


def test_error_rate_fires_after_ten_minutes_once_and_resolves() -> None:
    agent = Agent()
    assert agent.sweep(10, error_rate=0.08) == []  # minutes 1..10: held for 9 minutes only
    fired = agent.sweep(1, error_rate=0.08)
    assert names(fired) == [("agent.error_rate", True)]
    assert fired[0].value == "0.08" and fired[0].threshold == "0.05"
    assert agent.sweep(30, error_rate=0.08) == []
    assert names(agent.sweep(1, error_rate=0.02)) == [("agent.error_rate", False)]
    assert names(agent.log) == [("agent.error_rate", True), ("agent.error_rate", False)]


def test_error_rate_exactly_at_the_threshold_does_not_hold() -> None:
    agent = Agent()
    assert agent.sweep(20, error_rate=0.05) == []


def test_p99_twice_its_baseline_fires_after_five_minutes() -> None:
    agent = Agent()
    assert agent.sweep(5, latency_p99=800.0) == []  # baseline 800 ms
    assert agent.sweep(5, latency_p99=1700.0) == []  # held 4 minutes
    fired = agent.sweep(1, latency_p99=1700.0)
    assert names(fired) == [("agent.p99_baseline", True)]
    assert fired[0].rule.severity == "info"
    assert agent.sweep(10, latency_p99=1700.0) == []
    # The anomaly did not become the new normal: it still held all along.
    assert agent.state["b"]["p99"][0] == pytest.approx(800.0)
    assert names(agent.sweep(1, latency_p99=900.0)) == [("agent.p99_baseline", False)]


def test_no_baseline_rule_before_the_baseline_has_its_samples() -> None:
    agent = Agent()
    assert agent.sweep(1, latency_p99=100.0) == []
    assert (
        agent.sweep(10, latency_p99=5000.0) == []
    )  # too few samples at first; then it is the normal
    assert agent.state["b"]["p99"][1] >= 3


@pytest.mark.parametrize(
    ("sample", "rule"),
    [
        ({"sla_compliant": False}, "agent.sla_breach"),
        ({"balance": Decimal("4.99")}, "agent.low_balance"),
    ],
)
def test_critical_rules_fire_at_once_and_resolve(sample: dict[str, Any], rule: str) -> None:
    agent = Agent()
    agent.sweep(2)
    fired = agent.sweep(1, **sample)
    assert names(fired) == [(rule, True)]
    assert (
        fired[0].rule.severity == "critical"
        and "pause" in fired[0].rule.actions
        and "escalate" in fired[0].rule.actions
    )
    assert agent.sweep(5, **sample) == []
    assert names(agent.sweep(1)) == [(rule, False)]


def test_unknown_input_keeps_the_condition_running() -> None:
    agent = Agent()
    agent.sweep(5, error_rate=0.2)
    # Polls failed for three minutes: no evidence either way, the episode goes on.
    agent.sweep(
        3,
        error_rate=None,
        latency_p99=None,
        balance=None,
        burn_rate_per_hour=None,
        sla_compliant=None,
    )
    assert names(agent.sweep(2, error_rate=0.2)) == []
    assert names(agent.sweep(1, error_rate=0.2)) == [("agent.error_rate", True)]


def test_cost_anomaly_burn_above_twice_its_hourly_baseline() -> None:
    calm = Agent()
    calm.sweep(5, burn_rate_per_hour=Decimal("2.00"))
    assert calm.sweep(1, burn_rate_per_hour=Decimal("3.99")) == []
    agent = Agent()
    agent.sweep(5, burn_rate_per_hour=Decimal("2.00"))
    fired = agent.sweep(1, burn_rate_per_hour=Decimal("4.10"))
    assert names(fired) == [("agent.cost_anomaly", True)]
    assert fired[0].rule.audience == "finops"
    assert names(agent.sweep(1, burn_rate_per_hour=Decimal("2.10"))) == [
        ("agent.cost_anomaly", False)
    ]


def test_spend_anomaly_spending_above_three_times_its_normal() -> None:
    agent = Agent()
    balance = Decimal("50.00")
    for _ in range(6):  # spends $0.10 a minute: $6/h is its normal
        balance -= Decimal("0.10")
        assert agent.sweep(1, balance=balance) == []
    balance -= Decimal("0.35")  # $21/h: 3.5x
    assert names(agent.sweep(1, balance=balance)) == [("agent.spend_anomaly", True)]
    balance += Decimal("20.00")  # a top-up says nothing about spending
    assert agent.sweep(1, balance=balance) == []
    balance -= Decimal("0.10")
    assert names(agent.sweep(1, balance=balance)) == [("agent.spend_anomaly", False)]


def test_durations_come_from_the_policy() -> None:
    agent = Agent(policy(error_rate_for_s=60))
    agent.sweep(1, error_rate=0.5)
    assert names(agent.sweep(1, error_rate=0.5)) == [("agent.error_rate", True)]


# --- fleet rules ---------------------------------------------------------------------------


def fleet_view(**kw: Any) -> dict[str, Any]:
    return {
        "agents": 100,
        "healthy": 90,
        "degraded": 5,
        "critical": 5,
        "unknown": 0,
        "latency_p99": 900.0,
        "error_rate": 0.01,
        "sla_compliance": 0.99,
        "burn_rate_per_hour": "50.00",
        **kw,
    }


def test_fleet_rules_fire_once_and_resolve() -> None:
    rules = FleetRules.from_policy(
        AlertPolicy(fleet=FleetAlertRules(), agent=AgentAlertRules(baseline_min_samples=3))
    )
    clock, state = ManualClock(), {}

    def tick(**kw: Any) -> list[tuple[str, bool]]:
        clock.advance(SWEEP_S)
        return names(
            evaluate_fleet(rules, state, "demo", fleet_view(**kw), clock.now().timestamp())
        )

    assert tick() == []
    assert tick(critical=20, healthy=75) == []  # exactly 20 %: not more than
    assert tick(critical=21, healthy=74) == [("fleet.emergency", True)]
    assert tick(critical=30, healthy=65) == []
    assert tick(critical=30, unknown=50, healthy=15) == []  # 30 of 50 known, still an emergency
    assert tick() == [("fleet.emergency", False)]
    assert tick(sla_compliance=0.94) == [("fleet.sla_compliance", True)]
    assert tick(sla_compliance=0.96) == [("fleet.sla_compliance", False)]
    assert tick(burn_rate_per_hour="100.01") == [
        ("fleet.burn_rate", True),
        ("fleet.cost_anomaly", True),
    ]
    assert tick(burn_rate_per_hour="99.00") == [
        ("fleet.burn_rate", False),
        ("fleet.cost_anomaly", False),
    ]


def test_fleet_with_every_poll_failed_raises_no_emergency() -> None:
    rules = FleetRules.from_policy(AlertPolicy())
    state: dict[str, Any] = {}
    assert (
        evaluate_fleet(
            rules,
            state,
            "demo",
            fleet_view(healthy=0, degraded=0, critical=0, unknown=100, sla_compliance=None),
            0.0,
        )
        == []
    )


# --- behavioural signals -------------------------------------------------------------------


def windows(**totals: int) -> dict[str, int]:
    return {"tasks": 0, "calls": 0, "unique": 0, "retries": 0, "escalated": 0, **totals}


def judge(
    state: dict[str, Any],
    p: AlertPolicy,
    cur: dict[str, int],
    prev: dict[str, int],
    *,
    bucket: int,
    lat: list[float] | None = None,
    day_tasks: int = 0,
    day_cps: int = 0,
) -> list[tuple[str, bool]]:
    now = (bucket + 1) * p.behaviour.window_s + 10
    return names(
        behaviour.judge(p, state, AGENT, cur, prev, lat or [], day_tasks, day_cps, bucket, now)
    )


def test_behaviour_tool_calls_per_task_against_its_own_baseline() -> None:
    p = AlertPolicy(behaviour=BehaviourSignals(min_tasks=10, baseline_windows=2))
    state: dict[str, Any] = {}
    normal = windows(tasks=20, calls=100, unique=40)  # 5 calls, 2 tools per task
    for bucket in range(3):
        assert judge(state, p, normal, normal, bucket=bucket) == []
    assert state["b"]["calls_per_task"][0] == pytest.approx(5.0)
    # Over the two windows judged together: 600 calls in 40 tasks, 3x the normal 5.
    busy = windows(tasks=20, calls=500, unique=40)
    assert judge(state, p, busy, normal, bucket=3) == [("behaviour.tool_calls_per_task", True)]
    assert judge(state, p, busy, normal, bucket=3) == []
    assert judge(state, p, normal, normal, bucket=4) == [("behaviour.tool_calls_per_task", False)]


@pytest.mark.parametrize(
    ("cur", "signal"),
    [
        (windows(tasks=20, calls=100, unique=40, retries=21), "behaviour.retry_ratio"),
        (windows(tasks=20, calls=100, unique=40, escalated=4), "behaviour.escalation_rate"),
    ],
)
def test_behaviour_ratio_signals(cur: dict[str, int], signal: str) -> None:
    p = AlertPolicy(behaviour=BehaviourSignals(min_tasks=10))
    state: dict[str, Any] = {}
    assert judge(state, p, cur, windows(), bucket=0) == [(signal, True)]
    assert judge(state, p, windows(tasks=20, calls=100, unique=40), windows(), bucket=1) == [
        (signal, False)
    ]


def test_behaviour_decision_latency_and_counterparties() -> None:
    p = AlertPolicy(behaviour=BehaviourSignals(min_tasks=10))
    state: dict[str, Any] = {}
    lat = [100.0] * 95 + [900.0] * 5  # p99 9x p50
    work = windows(tasks=20, calls=100, unique=40)
    assert judge(state, p, work, windows(), bucket=0, lat=lat, day_tasks=50, day_cps=1) == [
        ("behaviour.decision_latency", True),
        ("behaviour.counterparty_diversity", True),
    ]
    assert judge(
        state, p, work, windows(), bucket=1, lat=[100.0] * 100, day_tasks=50, day_cps=3
    ) == [("behaviour.decision_latency", False), ("behaviour.counterparty_diversity", False)]


def test_behaviour_too_few_tasks_say_nothing_and_silence_resolves() -> None:
    p = AlertPolicy(behaviour=BehaviourSignals(min_tasks=10))
    state: dict[str, Any] = {}
    assert judge(state, p, windows(tasks=5, calls=50, retries=40), windows(), bucket=0) == []
    assert judge(state, p, windows(tasks=20, calls=50, retries=40), windows(), bucket=0) == [
        ("behaviour.retry_ratio", True)
    ]
    assert judge(state, p, windows(), windows(), bucket=2) == [("behaviour.retry_ratio", False)]
