"""The wallet poll's domain functions with a fake gateway: fakeredis, a migrated SQLite file,
a ManualClock."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from sqlalchemy import insert, select

from config.policy import Policy
from config.settings import MetricsSettings, load_settings
from fleet.clock import ManualClock
from fleet.gateway.schemas import BalanceResult, BudgetStatus
from fleet.monitoring import sweep as sweeping
from fleet.monitoring.alerts import Handoff
from fleet.monitoring.models import AgentHourly
from fleet.monitoring.poller import WalletReading
from fleet.monitoring.snapshot import Health, read_snapshot, snapshot_key
from fleet.storage.db import create_db_engine, migrate, session_factory
from fleet.storage.records import Agent, AgentStatus

SETTINGS = load_settings()


def policy_with(**monitoring: Any) -> Policy:
    p = SETTINGS.policy
    return p.model_copy(update={"monitoring": p.monitoring.model_copy(update=monitoring)})


@dataclass
class Behaviour:
    balance: str = "50.00"
    burn: str = "1.00"
    fail: str | None = None  # the error the poll ends in
    rate_limited: int = 0
    charged: str = "0.00"


@dataclass
class World:
    deps: sweeping.MonitorDeps
    clock: ManualClock
    gateway: dict[str, Behaviour]
    polled: list[list[tuple[str, bool]]] = field(default_factory=list)

    @property
    def r(self) -> Any:
        return self.deps.redis

    def poll(self, agents: list[tuple[str, bool]]) -> list[WalletReading]:
        """The answers SweepPoller would parse, as the gateway's schemas."""
        self.polled.append(list(agents))
        out = []
        for agent_id, _ in agents:
            b = self.gateway[agent_id]
            balance = BalanceResult(balance=Decimal(b.balance))
            # The budget reports the rolling day's spend: the burn per hour times 24.
            budget = BudgetStatus(daily_spend=Decimal(b.burn) * 24, monthly_spend=Decimal("0"))
            if b.fail:
                out.append(WalletReading(agent_id, balance, None, (b.fail,), calls=2))
                continue
            out.append(
                WalletReading(
                    agent_id,
                    balance,
                    budget,
                    rate_limited=b.rate_limited,
                    charged=Decimal(b.charged),
                    calls=2,
                )
            )
        return out

    def sweep(
        self, tick: str | None = None, advance_s: float = 60, slot: int | None = None
    ) -> sweeping.SweepPlan:
        self.clock.advance(advance_s)
        plan = sweeping.start_sweep(
            self.deps, tick or f"t{self.clock.now().timestamp():.0f}", slot=slot
        )
        assert plan is not None
        for number, batch in enumerate(plan.batches):
            sweeping.run_batch(self.deps, self.poll, plan.sweep_id, number, batch)
        return plan

    def polled_ids(self) -> list[str]:
        return [a for batch in self.polled for a, _ in batch]


def agent_ids(n: int, prefix: str = "seg0") -> list[str]:
    return [f"{prefix}-{i:04d}-{i:08x}" for i in range(1, n + 1)]


def agent_row(agent_id: str, now: datetime, **changes: Any) -> dict[str, Any]:
    return {
        "agent_id": agent_id,
        "fleet": "demo",
        "environment": "test",
        "id_prefix": agent_id.split("-")[0],
        "tier": "standard",
        "capabilities": [],
        "sla_template": "standard-support",
        "status": AgentStatus.ACTIVE,
        "steps_done": [],
        "traffic_weight": "1",
        "extra": {},
        "created_at": now,
        "updated_at": now,
        **changes,
    }


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    migrate(engine)
    sessions = session_factory(engine)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    ids = agent_ids(10)
    with sessions.begin() as s:
        # Six agents whose pro keys we hold, four we hold no key for.
        s.execute(
            insert(Agent),
            [
                agent_row(a, now, api_key_encrypted="token", extra={"key": {"tier": "pro"}})
                if i < 6
                else agent_row(a, now)
                for i, a in enumerate(ids)
            ],
        )
        s.execute(
            insert(Agent),
            [agent_row("gone-0001-00000000", now, status=AgentStatus.RETIRED)],
        )
    clock = ManualClock(now)
    w = World(None, clock, {a: Behaviour() for a in ids})  # type: ignore[arg-type]
    w.deps = sweeping.MonitorDeps(
        redis=fakeredis.FakeRedis(decode_responses=True),
        sessions=sessions,
        # One tick per period: every sweep reads the whole fleet.
        policy=policy_with(wallet_period_s=60),
        metrics=MetricsSettings(batch_size=4),
        interval_s=60,
        clock=clock,
        handoff=Handoff(notify=lambda ids: None, escalate=lambda pairs: None),
        admin_key_configured=True,
    )
    yield w
    engine.dispose()


def test_a_sweep_writes_the_money_fields_of_every_active_agent_and_leaves_the_rest(
    world: World,
) -> None:
    heartbeat = {"agent_id": agent_ids(10)[0], "polled_at": "1.0", "health": "degraded"}
    world.r.hset(snapshot_key(agent_ids(10)[0]), mapping={**heartbeat, "latency_p99": "2500"})
    plan = world.sweep()
    assert [len(b) for b in plan.batches] == [4, 4, 2]
    assert "gone-0001-00000000" not in world.polled_ids()  # retired agents are not polled
    assert sorted(world.polled_ids()) == sorted(world.gateway)
    now = world.clock.now().timestamp()
    for agent_id in world.gateway:
        snap = read_snapshot(world.r, agent_id)
        assert snap is not None
        assert (snap.balance, snap.burn_rate_per_hour) == (Decimal("50.00"), Decimal("1.0000"))
        assert snap.wallet_read_at == now and snap.wallet_error is None
    # The heartbeat's fields are the ingest's: the poll leaves them as they were.
    first = read_snapshot(world.r, agent_ids(10)[0])
    assert first is not None
    assert (first.health, first.latency_p99, first.polled_at) == (Health.DEGRADED, 2500.0, 1.0)
    # An agent no heartbeat reached yet: its health is not known.
    assert read_snapshot(world.r, agent_ids(10)[1]).health is Health.UNKNOWN  # type: ignore[union-attr]
    status = sweeping.sweep_status(world.r, plan.sweep_id)
    assert status is not None
    assert (status["status"], status["batches_done"], status["agents_done"], status["failed"]) == (
        "finished",
        3,
        10,
        0,
    )
    assert world.r.get(sweeping.CURRENT_KEY) is None  # the no-overlap lock is released
    assert sweeping.fleet_health(world.r) == ({}, {})  # the fleet view is not the poll's


def test_the_plan_puts_keyless_agents_on_the_admin_key_and_the_rest_on_their_own(
    world: World,
) -> None:
    # Room on the admin key for 5 agents a minute (10 reads): the four keyless ones and
    # one of the six pro agents (the lowest id).
    world.deps.policy = policy_with(wallet_period_s=60, admin_calls_per_s=10 / 60)
    world.sweep()
    via = dict(a for batch in world.polled for a in batch)
    assert [a for a in agent_ids(10) if via[a]] == [agent_ids(10)[0], *agent_ids(10)[6:]]
    plan = sweeping.last_plan(world.r)
    assert plan is not None and plan["fits"] is True
    assert plan["admin_by_tier"] == {"none": 4, "pro": 1} and plan["own_by_tier"] == {"pro": 5}


def test_a_plan_that_cannot_fit_is_refused_with_its_numbers_and_reads_nothing(
    world: World,
) -> None:
    world.deps.admin_key_configured = False  # four agents we hold no key for
    world.clock.advance(60)
    assert sweeping.start_sweep(world.deps, "refused") is None
    assert world.polled == []
    plan = sweeping.last_plan(world.r)
    assert plan is not None and plan["fits"] is False
    assert plan["unplaced"] == {"none": 4}
    assert plan["refused"].startswith("wallet plan refused: 10 agents × 2 reads every 60 s")
    assert "no admin key" in plan["refused"]
    assert world.r.hget(sweeping.STATS_KEY, "refused") == "1"
    assert world.r.get(sweeping.CURRENT_KEY) is None  # the next tick may try again


def test_every_agent_is_read_once_per_period_one_slot_a_tick(world: World) -> None:
    world.deps.policy = policy_with(wallet_period_s=300)  # five 60 s ticks
    slots = [world.sweep(advance_s=60).slot for _ in range(5)]
    assert sorted(slots) == [0, 1, 2, 3, 4]  # the beat's ticks walk through the slots
    assert Counter(world.polled_ids()) == Counter(agent_ids(10))


def test_a_failed_read_is_the_agents_wallet_error_and_fails_nobody_else(world: World) -> None:
    broken = agent_ids(10)[2]
    world.gateway[broken].fail = "get_budget_status: Unavailable 503 unavailable"
    plan = world.sweep()
    snap = read_snapshot(world.r, broken)
    assert snap is not None and snap.wallet_error == world.gateway[broken].fail
    assert snap.balance == Decimal("50.00")  # what did come back is kept
    assert sweeping.sweep_failures(world.r, plan.sweep_id) == {broken: world.gateway[broken].fail}
    assert sweeping.sweep_status(world.r, plan.sweep_id)["failed"] == 1  # type: ignore[index]
    assert read_snapshot(world.r, agent_ids(10)[3]).wallet_error is None  # type: ignore[union-attr]
    world.gateway[broken].fail = None
    world.sweep()
    assert read_snapshot(world.r, broken).wallet_error is None  # type: ignore[union-attr]


def test_429s_are_counted_as_plan_defects(world: World) -> None:
    world.gateway[agent_ids(10)[0]].rate_limited = 1
    world.gateway[agent_ids(10)[1]].rate_limited = 2
    plan = world.sweep()
    assert sweeping.sweep_status(world.r, plan.sweep_id)["rate_limited"] == 3  # type: ignore[index]
    world.sweep()
    assert world.r.hget(sweeping.STATS_KEY, "rate_limited") == "6"


def test_the_monitoring_overhead_is_the_last_hours_calls_and_charges_per_fleet(
    world: World,
) -> None:
    world.gateway[agent_ids(10)[0]].charged = "0.10"
    for _ in range(3):
        world.sweep()
    now = world.deps.now()
    overhead = sweeping.monitoring_overhead(world.r, now)
    assert overhead["demo"].calls == 60 and overhead["demo"].charged == Decimal("0.30")
    # An hour later those minutes have left the window.
    assert sweeping.monitoring_overhead(world.r, now + 3600) == {}


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
    world.gateway[agent_ids(10)[0]].rate_limited = 1
    plan = sweeping.start_sweep(world.deps, "a")
    assert plan is not None
    sweeping.run_batch(world.deps, world.poll, plan.sweep_id, 0, plan.batches[0])
    again = sweeping.run_batch(world.deps, world.poll, plan.sweep_id, 0, plan.batches[0])
    assert again.skipped == "batch already done" and len(world.polled) == 1
    for number in (1, 2):
        sweeping.run_batch(world.deps, world.poll, plan.sweep_id, number, plan.batches[number])
    status = sweeping.sweep_status(world.r, plan.sweep_id)
    assert status is not None and (status["agents_done"], status["rate_limited"]) == (10, 1)
    late = sweeping.run_batch(world.deps, world.poll, plan.sweep_id, 1, plan.batches[1])
    assert late.skipped == "sweep is finished"
    assert sweeping.monitoring_overhead(world.r, world.deps.now())["demo"].calls == 20


def test_an_empty_fleet_finishes_at_once(world: World) -> None:
    with world.deps.sessions.begin() as s:
        for a in s.scalars(select(Agent)):
            a.status = AgentStatus.RETIRED
    plan = world.sweep()
    assert plan.batches == []
    assert sweeping.sweep_status(world.r, plan.sweep_id)["status"] == "finished"  # type: ignore[index]


def test_a_batch_message_with_a_bad_row_is_refused_by_its_place() -> None:
    assert sweeping.parse_rows([["a-1", "demo", True]]) == [("a-1", "demo", True)]
    with pytest.raises(ValueError, match=r"batch row 1 must be \[agent_id, fleet, via_admin\]"):
        sweeping.parse_rows([["a-1", "demo", True], ["a-2", "demo", "yes"]])
    with pytest.raises(ValueError, match="must be a list"):
        sweeping.parse_rows({"demo": ["a-1"]})


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
