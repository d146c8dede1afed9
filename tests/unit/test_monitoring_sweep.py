"""The sweep's domain functions with a fake gateway: fakeredis, a migrated SQLite file, a
ManualClock."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from sqlalchemy import insert, select

from config.settings import MetricsSettings, load_settings
from fleet import audit
from fleet.clock import ManualClock
from fleet.durability.control import (
    freeze_provisioning,
    is_provisioning_frozen,
    provisioning_freeze_reason,
)
from fleet.gateway.schemas import BalanceResult, BudgetStatus, MetricPoint, MetricSeries
from fleet.monitoring import sweep as sweeping
from fleet.monitoring.alerts import Handoff, list_alerts
from fleet.monitoring.models import AgentHourly, Alert, FleetSweep
from fleet.monitoring.poller import Reading
from fleet.monitoring.snapshot import Health, read_snapshot
from fleet.storage.db import create_db_engine, migrate, session_factory, write_session
from fleet.storage.records import Agent, AgentStatus

SETTINGS = load_settings()


@dataclass
class Behaviour:
    p99: float = 800.0
    error_rate: float = 0.01
    balance: str = "50.00"
    burn: str = "1.00"
    fail: str | None = None  # the error the poll ends in


@dataclass
class World:
    deps: sweeping.MonitorDeps
    clock: ManualClock
    gateway: dict[str, Behaviour]
    notified: list[str] = field(default_factory=list)
    escalated: list[tuple[str, str]] = field(default_factory=list)
    polled: list[list[str]] = field(default_factory=list)

    @property
    def r(self) -> Any:
        return self.deps.redis

    def poll(self, ids: list[str]) -> list[Reading]:
        """The four answers SweepPoller would parse, as the gateway's schemas."""
        self.polled.append(list(ids))
        out = []
        for agent_id in ids:
            b = self.gateway[agent_id]
            balance = BalanceResult(balance=Decimal(b.balance))
            # The budget reports the rolling day's spend: the burn per hour times 24.
            budget = BudgetStatus(daily_spend=Decimal(b.burn) * 24, monthly_spend=Decimal("0"))
            now = self.clock.now()
            if b.fail:
                out.append(Reading(agent_id, balance, budget, None, None, (b.fail,)))
                continue
            out.append(
                Reading(
                    agent_id,
                    balance,
                    budget,
                    MetricSeries(data=[MetricPoint(value=b.p99, timestamp=now)]),
                    MetricSeries(
                        data=[MetricPoint(value=b.error_rate, timestamp=self.clock.now())]
                    ),
                )
            )
        return out

    def sweep(self, tick: str | None = None, advance_s: float = 60) -> sweeping.SweepPlan:
        self.clock.advance(advance_s)
        plan = sweeping.start_sweep(self.deps, tick or f"t{self.clock.now().timestamp():.0f}")
        assert plan is not None
        for number, batch in enumerate(plan.batches):
            sweeping.run_batch(self.deps, self.poll, plan.sweep_id, number, batch)
        return plan

    def agents(self) -> dict[str, Agent]:
        with self.deps.sessions() as session:
            return {a.agent_id: a for a in session.scalars(select(Agent))}


def agent_ids(n: int, prefix: str = "seg0") -> list[str]:
    return [f"{prefix}-{i:04d}-{i:08x}" for i in range(1, n + 1)]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    migrate(engine)
    sessions = session_factory(engine)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    ids = agent_ids(10)
    with sessions.begin() as s:
        s.execute(
            insert(Agent),
            [
                {
                    "agent_id": a,
                    "fleet": "demo",
                    "environment": "test",
                    "id_prefix": "seg0",
                    "tier": "standard",
                    "capabilities": [],
                    "sla_template": "standard-support",
                    "status": AgentStatus.ACTIVE,
                    "steps_done": [],
                    "traffic_weight": "1",
                    "extra": {},
                    "created_at": now,
                    "updated_at": now,
                }
                for a in ids
            ],
        )
        s.execute(
            insert(Agent),
            [
                {
                    "agent_id": "gone-0001-00000000",
                    "fleet": "demo",
                    "environment": "test",
                    "id_prefix": "gone",
                    "tier": "standard",
                    "capabilities": [],
                    "sla_template": "x",
                    "status": AgentStatus.RETIRED,
                    "steps_done": [],
                    "traffic_weight": "1",
                    "extra": {},
                    "created_at": now,
                    "updated_at": now,
                }
            ],
        )
    clock = ManualClock(now)
    w = World(None, clock, {a: Behaviour() for a in ids})  # type: ignore[arg-type]
    w.deps = sweeping.MonitorDeps(
        redis=fakeredis.FakeRedis(decode_responses=True),
        sessions=sessions,
        policy=SETTINGS.policy,
        metrics=MetricsSettings(batch_size=4),
        interval_s=60,
        clock=clock,
        handoff=Handoff(notify=w.notified.extend, escalate=w.escalated.extend),
    )
    with audit.capture() as events:
        w.audit = events  # type: ignore[attr-defined]
        yield w
    engine.dispose()


def test_a_sweep_snapshots_every_active_agent_in_batches_and_stores_the_fleet_view(
    world: World,
) -> None:
    plan = world.sweep()
    assert [len(ids) for b in plan.batches for ids in b.values()] == [4, 4, 2]
    assert all(
        "gone-0001-00000000" not in ids for ids in world.polled
    )  # retired agents are not polled
    for agent_id in world.gateway:
        snap = read_snapshot(world.r, agent_id)
        assert snap is not None and snap.health is Health.HEALTHY and snap.sweep_id == plan.sweep_id
        assert (
            snap.balance == Decimal("50.00") and snap.fleet == "demo" and snap.sla_compliant is True
        )
    status = sweeping.sweep_status(world.r, plan.sweep_id)
    assert status is not None
    assert (status["status"], status["batches_done"], status["agents_done"], status["unknown"]) == (
        "finished",
        3,
        10,
        0,
    )
    fleets, meta = sweeping.fleet_health(world.r)
    assert meta["sweep_id"] == plan.sweep_id
    assert fleets["demo"]["agents"] == 10 and fleets["demo"]["healthy"] == 10
    assert (
        fleets["demo"]["burn_rate_per_hour"] == "10.00" and fleets["demo"]["sla_compliance"] == 1.0
    )
    with world.deps.sessions() as s:
        rows = s.scalars(select(FleetSweep)).all()
    assert {(r.fleet, r.agents) for r in rows} == {("demo", 10), ("*", 10)}
    assert world.r.get(sweeping.CURRENT_KEY) is None  # the no-overlap lock is released


def test_a_failed_agent_is_unknown_with_its_error_and_fails_nobody_else(world: World) -> None:
    broken = agent_ids(10)[2]
    world.gateway[broken].fail = "query_metrics p99_latency_ms: Unavailable 503 unavailable"
    world.gateway[agent_ids(10)[5]].error_rate = 0.2
    plan = world.sweep()
    snap = read_snapshot(world.r, broken)
    assert (
        snap is not None and snap.health is Health.UNKNOWN and "Unavailable" in (snap.error or "")
    )
    assert snap.balance == Decimal("50.00")  # what did come back is kept
    assert read_snapshot(world.r, agent_ids(10)[5]).health is Health.CRITICAL  # type: ignore[union-attr]
    assert sweeping.sweep_failures(world.r, plan.sweep_id) == {
        broken: "query_metrics p99_latency_ms: Unavailable 503 unavailable"
    }
    fleets, _ = sweeping.fleet_health(world.r)
    assert (fleets["demo"]["unknown"], fleets["demo"]["critical"], fleets["demo"]["healthy"]) == (
        1,
        1,
        8,
    )


def test_a_tick_is_swept_once_and_a_second_beat_window_does_nothing(world: World) -> None:
    assert sweeping.start_sweep(world.deps, "tick-1") is not None
    assert sweeping.start_sweep(world.deps, "tick-1") is None
    world.r.delete(sweeping.CURRENT_KEY)
    assert sweeping.start_sweep(world.deps) is not None  # beat: the window is the tick
    world.r.delete(sweeping.CURRENT_KEY)
    assert sweeping.start_sweep(world.deps) is None
    assert world.r.hgetall(sweeping.STATS_KEY) == {"started": "2", "skipped_duplicate": "2"}


def test_a_sweep_still_running_makes_the_next_tick_skip(world: World) -> None:
    first = sweeping.start_sweep(world.deps, "a")
    assert first is not None
    assert sweeping.start_sweep(world.deps, "b") is None
    assert world.r.hget(sweeping.STATS_KEY, "skipped_overlap") == "1"
    for number, batch in enumerate(first.batches):
        sweeping.run_batch(world.deps, world.poll, first.sweep_id, number, batch)
    assert sweeping.start_sweep(world.deps, "c") is not None


def test_a_redelivered_batch_is_counted_once_and_a_late_one_is_dropped(world: World) -> None:
    plan = sweeping.start_sweep(world.deps, "a")
    assert plan is not None
    sweeping.run_batch(world.deps, world.poll, plan.sweep_id, 0, plan.batches[0])
    again = sweeping.run_batch(world.deps, world.poll, plan.sweep_id, 0, plan.batches[0])
    assert again.skipped == "batch already done" and len(world.polled) == 1
    for number in (1, 2):
        sweeping.run_batch(world.deps, world.poll, plan.sweep_id, number, plan.batches[number])
    assert sweeping.sweep_status(world.r, plan.sweep_id)["agents_done"] == 10  # type: ignore[index]
    late = sweeping.run_batch(world.deps, world.poll, plan.sweep_id, 1, plan.batches[1])
    assert late.skipped == "sweep is finished"


def test_an_empty_fleet_finishes_at_once(world: World) -> None:
    with world.deps.sessions.begin() as s:
        for a in s.scalars(select(Agent)):
            a.status = AgentStatus.RETIRED
    plan = world.sweep()
    assert plan.batches == []
    assert sweeping.sweep_status(world.r, plan.sweep_id)["status"] == "finished"  # type: ignore[index]


def test_hours_roll_up_into_the_database(world: World) -> None:
    for minute in range(3):
        world.gateway[agent_ids(10)[0]].p99 = 1000.0 * (minute + 1)
        world.sweep(advance_s=60 if minute else 30 * 60)  # 00:30, 00:31, 00:32
    with world.deps.sessions() as s:
        assert s.scalars(select(AgentHourly)).all() == []
    world.sweep(advance_s=3600)  # 01:32: the first hour is finished
    with world.deps.sessions() as s:
        rows = {r.agent_id: r for r in s.scalars(select(AgentHourly))}
    row = rows[agent_ids(10)[0]]
    assert len(rows) == 10 and row.samples == 3
    assert row.hour.replace(tzinfo=UTC) == datetime(
        2026, 1, 1, tzinfo=UTC
    )  # SQLite hands back naive UTC
    assert row.latency_p99_avg == pytest.approx(2000.0) and row.latency_p99_max == 3000.0
    assert (
        row.degraded == 0
        and row.balance_min == "50.00"
        and row.burn_rate_avg == "1.00"
        # 3000 ms breaks standard-support's 2000 ms p99: two of the three samples comply.
        and row.sla_compliant == 2
    )


def test_retention_deletes_history_older_than_the_policy(world: World) -> None:
    world.sweep()
    now = world.clock.now()
    with world.deps.sessions.begin() as s:
        for days in (10, 91):
            s.add(AgentHourly(agent_id="x", hour=now - timedelta(days=days), samples=1))
    counts = sweeping.enforce_retention(world.deps.sessions, world.deps.policy, world.deps.now())
    assert counts["hourly"] == 1
    with world.deps.sessions() as s:
        assert len(s.scalars(select(AgentHourly)).all()) == 1


def test_an_sla_breach_alerts_once_pauses_escalates_and_resolves(world: World) -> None:
    victim = agent_ids(10)[3]
    world.sweep()
    # Over standard-support's 2000 ms p99, under every health threshold.
    world.gateway[victim].p99 = 2500.0
    world.sweep()
    open_ = list_alerts(world.deps.sessions, subject=victim)
    assert [(a["rule"], a["severity"]) for a in open_] == [("agent.sla_breach", "critical")]
    alert_id = open_[0]["alert_id"]
    assert world.escalated == [(victim, "alert:agent.sla_breach")]
    assert world.notified.count(alert_id) == 1
    assert world.agents()[victim].status == AgentStatus.PAUSED
    assert [e.action for e in world.audit] == ["pause_agent"]  # type: ignore[attr-defined]
    # One agent in ten breaching is 90 % fleet compliance: the fleet rule pages too.
    assert [a["rule"] for a in list_alerts(world.deps.sessions, subject="demo")] == [
        "fleet.sla_compliance"
    ]
    for _ in range(3):
        world.sweep()  # a paused agent is still swept; the alert holds, once
    assert len(list_alerts(world.deps.sessions, open_only=False, subject=victim)) == 1
    assert world.notified.count(alert_id) == 1 and len(world.escalated) == 1
    world.gateway[victim].p99 = 800.0
    world.sweep()
    assert list_alerts(world.deps.sessions) == []
    resolved = list_alerts(world.deps.sessions, open_only=False, subject=victim)
    assert resolved[0]["state"] == "resolved" and world.notified.count(alert_id) == 2
    assert world.agents()[victim].status == AgentStatus.PAUSED  # resuming is a human's call


def test_emergency_freezes_provisioning_and_lifts_only_its_own_freeze(world: World) -> None:
    world.sweep()
    for agent_id in agent_ids(10)[:3]:
        world.gateway[agent_id].error_rate = 0.5  # 30 % critical
    world.sweep()
    emergency = list_alerts(world.deps.sessions, severity="emergency")
    assert [(a["rule"], a["subject"]) for a in emergency] == [("fleet.emergency", "demo")]
    assert is_provisioning_frozen(world.deps.sessions, "demo")
    # Kept in the database only: a Redis that loses its keys does not lift it.
    assert not [k for k in world.r.keys("*") if "frozen" in k or "freeze" in k]
    assert "freeze_provisioning" in [e.action for e in world.audit]  # type: ignore[attr-defined]
    for agent_id in agent_ids(10)[:3]:
        world.gateway[agent_id].error_rate = 0.01
    world.sweep()
    assert not is_provisioning_frozen(world.deps.sessions, "demo")
    # An operator's freeze is theirs to lift.
    for agent_id in agent_ids(10)[:3]:
        world.gateway[agent_id].error_rate = 0.5
    world.sweep()
    with write_session(world.deps.sessions) as s:
        freeze_provisioning(s, "demo", "operator: change freeze", world.clock.now())
    for agent_id in agent_ids(10)[:3]:
        world.gateway[agent_id].error_rate = 0.01
    world.sweep()
    assert provisioning_freeze_reason(world.deps.sessions, "demo") == "operator: change freeze"


def test_error_rate_warning_cuts_traffic_and_restores_it(world: World) -> None:
    noisy = agent_ids(10)[7]
    world.gateway[noisy].error_rate = 0.07
    for _ in range(10):
        world.sweep()
    assert world.agents()[noisy].traffic_weight == "1"
    world.sweep()  # ten minutes held
    alert = list_alerts(world.deps.sessions)[0]
    assert alert["rule"] == "agent.error_rate" and alert["audience"] == "oncall"
    assert world.agents()[noisy].traffic_weight == "0.5"
    assert world.escalated == [(noisy, "alert:agent.error_rate")]
    world.gateway[noisy].error_rate = 0.01
    world.sweep()
    assert world.agents()[noisy].traffic_weight == "1"
    with world.deps.sessions() as s:
        a = s.get(Alert, alert["alert_id"])
        assert a is not None and a.actions["traffic_restored"] is True
