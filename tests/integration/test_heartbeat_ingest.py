"""The heartbeat ingest on a real Redis (its ordering is a Lua script) and SQLite, in process:
what a verified heartbeat changes, and that nothing else changes anything."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from config.settings import load_settings
from fleet import audit
from fleet.clock import ManualClock
from fleet.hotstate import connect
from fleet.monitoring.alerts import Handoff, list_alerts
from fleet.monitoring.ingest import (
    AgentDirectory,
    IngestDeps,
    ingest_counts,
    ingest_heartbeats,
    rejected_seen_key,
)
from fleet.monitoring.models import AgentHourly
from fleet.monitoring.prom import render
from fleet.monitoring.snapshot import Health, read_snapshot, snapshot_key
from fleet.monitoring.volume import KEEP_S, hourly_volume, volume_key
from fleet.storage.db import migrate
from fleet.storage.records import Agent
from tests.support.fleet_rows import insert_agents, sessions_for
from tests.support.heartbeat_fleet import (
    bus_event,
    identity_keys,
    private_redis,
    record_public_keys,
    signed_event,
)

pytestmark = pytest.mark.integration

SETTINGS = load_settings()
AGENTS = [f"hb-{i:04d}-{i:08x}" for i in range(1, 6)]


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with private_redis() as url:
        yield url


@dataclass
class World:
    deps: IngestDeps
    clock: ManualClock
    keys: dict[str, Any]
    notified: list[str] = field(default_factory=list)
    next_id: int = 0

    def events(self, *bodies: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        for body in bodies:
            self.next_id += 1
            out.append(bus_event(self.next_id, body))
        return out

    def beat(self, agent: str, seq: int, **metrics: Any) -> dict[str, Any]:
        return signed_event(
            agent, self.keys[agent], seq, sent_at=self.clock.now().timestamp(), **metrics
        )

    def ingest(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        return ingest_heartbeats(self.deps, events).as_dict()


@pytest.fixture
def world(tmp_path: Path, redis_url: str) -> Iterator[World]:
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    sessions = sessions_for(url)
    migrate(sessions.kw["bind"])
    insert_agents(sessions, AGENTS, fleet="demo", policy=SETTINGS.policy)
    keys = identity_keys(AGENTS)
    record_public_keys(sessions, keys)
    r = connect(redis_url)
    r.flushdb()
    clock = ManualClock(datetime(2026, 12, 2, 0, 30, tzinfo=UTC))
    w = World(None, clock, keys)  # type: ignore[arg-type]
    w.deps = IngestDeps(
        redis=r,
        sessions=sessions,
        policy=SETTINGS.policy,
        clock=clock,
        handoff=Handoff(notify=w.notified.extend, escalate=lambda pairs: None),
        directory=AgentDirectory(sessions, SETTINGS.policy, ttl_s=60),
        snapshot_ttl_s=3600,
        state_ttl_s=3600,
    )
    with audit.capture():
        yield w
    sessions.kw["bind"].dispose()


def test_a_signed_heartbeat_becomes_the_agents_snapshot_and_leaves_the_money_alone(
    world: World,
) -> None:
    agent = AGENTS[0]
    world.deps.redis.hset(snapshot_key(agent), mapping={"balance": "12.50", "polled_at": "1"})
    out = world.ingest(world.events(world.beat(agent, 1, latency_p99_ms=900.0, tool_calls=40)))
    assert out["accepted"] == 1 and out["rejected"] == {}
    snap = read_snapshot(world.deps.redis, agent)
    assert snap is not None
    assert snap.health is Health.HEALTHY and snap.latency_p99 == 900.0
    assert snap.tool_call_volume == 40 and snap.fleet == "demo"
    assert snap.heartbeat_at == world.clock.now().timestamp()
    assert snap.sla_compliant is True  # standard-support: p99 under 2000 ms
    assert str(snap.balance) == "12.50"  # the wallet poll's field survives
    assert ingest_counts(world.deps.redis)["accepted"] == 1


def test_forged_heartbeats_change_nothing_and_are_counted_per_reason(world: World) -> None:
    victim, other = AGENTS[0], AGENTS[1]
    world.ingest(world.events(world.beat(victim, 1)))
    before = world.deps.redis.hgetall(snapshot_key(victim))
    forger = identity_keys(["forger"])["forger"]
    unsigned = world.beat(victim, 5)
    del unsigned["payload"]["sig"]
    forged = world.events(
        # The victim's id, signed with a key that is not the victim's.
        signed_event(victim, forger, 2, error_rate=0.9),
        # Another agent's genuine heartbeat republished under the victim's source.
        world.beat(other, 3, error_rate=0.9) | {"source": victim},
        unsigned,
        signed_event("nobody-0001-00000000", forger, 1),
    )
    out = world.ingest(forged + [{"id": "x", "event_type": "fleet.agent.heartbeat"}])
    assert out["accepted"] == 0
    assert out["rejected"] == {
        "bad_signature": 1,
        "source_mismatch": 1,
        "unsigned": 1,
        "unknown_agent": 1,
        "malformed": 1,
    }
    assert world.deps.redis.hgetall(snapshot_key(victim)) == before
    assert world.deps.redis.exists(snapshot_key(other)) == 0
    # The batch delivered again (a consumer killed before its cursor moved): refused
    # again, counted once.
    world.ingest(forged)
    counted = ingest_counts(world.deps.redis)["rejected"]
    assert counted["bad_signature"] == counted["source_mismatch"] == 1
    # Remembered for the redelivery window only: forgeries cannot fill Redis for a day.
    ttl = world.deps.redis.ttl(rejected_seen_key(forged[0]["id"]))
    assert 0 < ttl <= world.deps.rejected_seen_s
    assert counted["unsigned"] == counted["unknown_agent"] == 1
    shown = render(world.deps.redis, max_agents=0).decode()
    assert 'fleet_heartbeat_events_total{outcome="rejected_bad_signature"} 1.0' in shown


def test_a_redelivered_batch_is_applied_once_and_a_replay_is_refused(world: World) -> None:
    agent = AGENTS[2]
    first = world.events(world.beat(agent, 1), world.beat(AGENTS[3], 1))
    assert world.ingest(first)["accepted"] == 2
    again = world.ingest(first)
    assert again["accepted"] == 0 and again["duplicate"] == 2 and again["rejected"] == {}
    # The same signed heartbeat published anew: a new event id, an old seq.
    body = {k: first[0][k] for k in ("event_type", "source", "payload")}
    replayed = world.events(body)
    replay = world.ingest(replayed)
    assert replay["rejected"] == {"replayed": 1}
    world.ingest(replayed)  # its batch delivered again: counted once
    counts = ingest_counts(world.deps.redis)
    assert counts["accepted"] == 2 and counts["duplicate"] == 2
    assert counts["rejected"]["replayed"] == 1


def test_tool_calls_are_counted_per_fleet_and_hour_once(world: World) -> None:
    r, now = world.deps.redis, world.clock.now()  # 00:30
    batch = world.events(
        world.beat(AGENTS[0], 1, tool_calls=40),
        world.beat(AGENTS[0], 2, tool_calls=2),
        world.beat(AGENTS[1], 1, tool_calls=8),
    )
    world.ingest(batch)
    world.ingest(batch)  # redelivered: applied already, counted already
    body = {k: batch[2][k] for k in ("event_type", "source", "payload")}
    world.ingest(world.events(body))  # replayed: refused, not counted
    world.clock.advance(3600)
    world.ingest(world.events(world.beat(AGENTS[1], 2, tool_calls=5)))
    hours = hourly_volume(r, ["demo"], world.clock.now(), 3)
    assert [at.hour for at, _ in hours] == [23, 0, 1]
    assert [calls for _, calls in hours] == [None, 50, 5]
    assert hourly_volume(r, ["demo", "other"], now, 1) == [(hours[1][0], 50)]
    # The agents' segment (their id prefix) is counted beside the fleet.
    assert hourly_volume(r, ["demo/hb"], world.clock.now(), 3) == hours
    assert 0 < r.ttl(volume_key("demo", int(hours[2][0].timestamp()))) <= KEEP_S


def test_an_older_heartbeat_never_overwrites_a_newer_one(world: World) -> None:
    agent = AGENTS[4]
    old, new = world.events(world.beat(agent, 1, latency_p99_ms=100.0), world.beat(agent, 2))
    world.ingest([new])
    out = world.ingest([old])
    assert out["duplicate"] == 1
    snap = read_snapshot(world.deps.redis, agent)
    assert snap is not None and snap.latency_p99 == 800.0


def test_an_sla_breach_fires_the_agents_rule_once(world: World) -> None:
    agent = AGENTS[1]
    for seq in range(1, 4):
        world.clock.advance(60)
        world.ingest(world.events(world.beat(agent, seq, latency_p99_ms=2500.0)))
    alerts = list_alerts(world.deps.sessions, subject=agent)
    assert [a["rule"] for a in alerts] == ["agent.sla_breach"]
    snap = read_snapshot(world.deps.redis, agent)
    assert snap is not None and snap.breached_terms == ("p99_latency_ms",)
    world.clock.advance(60)
    world.ingest(world.events(world.beat(agent, 4, latency_p99_ms=500.0)))
    assert list_alerts(world.deps.sessions, subject=agent) == []
    snap = read_snapshot(world.deps.redis, agent)
    assert snap is not None and snap.breached_terms == ()


def test_hours_roll_up_from_heartbeats(world: World) -> None:
    agent = AGENTS[0]
    for seq in range(1, 4):
        world.clock.advance(60)
        world.ingest(world.events(world.beat(agent, seq, latency_p99_ms=1000.0 * seq)))
    world.clock.advance(3600)
    world.ingest(world.events(world.beat(agent, 4)))
    with world.deps.sessions() as s:
        rows = s.scalars(select(AgentHourly)).all()
    assert len(rows) == 1 and rows[0].samples == 3 and rows[0].latency_p99_max == 3000.0


def test_an_error_rate_held_ten_minutes_cuts_traffic_and_its_recovery_restores_it(
    world: World,
) -> None:
    escalated: list[tuple[str, str]] = []
    world.deps.handoff = Handoff(notify=world.notified.extend, escalate=escalated.extend)
    noisy = AGENTS[2]

    def weight() -> str:
        with world.deps.sessions() as s:
            agent = s.get(Agent, noisy)
            assert agent is not None
            return agent.traffic_weight

    for seq in range(1, 11):
        world.clock.advance(60)
        world.ingest(world.events(world.beat(noisy, seq, error_rate=0.07)))
    assert weight() == "1", "not yet held for ten minutes"
    world.clock.advance(60)
    world.ingest(world.events(world.beat(noisy, 11, error_rate=0.07)))
    alert = list_alerts(world.deps.sessions, subject=noisy)[0]
    assert alert["rule"] == "agent.error_rate" and alert["audience"] == "oncall"
    assert weight() == "0.5"
    assert escalated == [(noisy, "alert:agent.error_rate")]
    world.clock.advance(60)
    world.ingest(world.events(world.beat(noisy, 12, error_rate=0.01)))
    assert weight() == "1"
    assert list_alerts(world.deps.sessions, subject=noisy) == []
