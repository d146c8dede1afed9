"""Silence is a signal: a silent agent turns unknown, then critical, and recovers with its next
heartbeat; the pass also leaves the fleet view where `fleet status` and the API read it.

In process on a real Redis with a movable clock (the progression over ten minutes), then as
real processes: heartbeats through the sandbox's stream, `fleet stream`, a metrics worker
running `metrics.silence` as beat sends it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from config.settings import load_settings
from fleet import audit
from fleet.clock import ManualClock
from fleet.durability.control import (
    freeze_provisioning,
    is_provisioning_frozen,
    provisioning_freeze_reason,
)
from fleet.hotstate import connect
from fleet.monitoring.alerts import Handoff, list_alerts
from fleet.monitoring.ingest import AgentDirectory, IngestDeps, ingest_heartbeats
from fleet.monitoring.models import FleetSweep
from fleet.monitoring.silence import SilenceDeps, SilenceLimits, silence_pass
from fleet.monitoring.snapshot import Health, read_snapshot
from fleet.monitoring.sweep import fleet_health, segment_health
from fleet.storage.db import migrate, write_session
from stack.local import local_stack
from stack.processes import stream_argv
from tests.support.fleet_rows import insert_agents, sessions_for
from tests.support.heartbeat_fleet import (
    bus_event,
    identity_keys,
    private_redis,
    record_public_keys,
    signed_event,
)
from workers.queues import TaskName

pytestmark = pytest.mark.integration

SETTINGS = load_settings()
LIMITS = SilenceLimits.from_policy(SETTINGS.policy)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with private_redis() as url:
        yield url


def test_a_silent_agent_turns_unknown_then_critical_and_recovers(
    tmp_path: Path, redis_url: str
) -> None:
    agents = ["quiet-0001-00000001", "chatty-0001-00000002"]
    sessions = sessions_for(f"sqlite:///{tmp_path / 'fleet.db'}")
    migrate(sessions.kw["bind"])
    insert_agents(sessions, agents, fleet="demo", policy=SETTINGS.policy)
    keys = identity_keys(agents)
    record_public_keys(sessions, keys)
    r = connect(redis_url)
    r.flushdb()
    clock = ManualClock(datetime.now(UTC))
    handoff = Handoff(notify=lambda ids: None, escalate=lambda pairs: None)
    ingest = IngestDeps(
        r, sessions, SETTINGS.policy, clock, handoff,
        AgentDirectory(sessions, SETTINGS.policy, 60), 3600, 3600,
    )  # fmt: skip
    silence = SilenceDeps(r, sessions, SETTINGS.policy, clock, handoff, ["active"], 3600)
    seq = {a: 0 for a in agents}
    event_id = 0

    def beat(*who: str) -> None:
        nonlocal event_id
        events = []
        for agent in who:
            seq[agent] += 1
            event_id += 1
            body = signed_event(agent, keys[agent], seq[agent], sent_at=clock.now().timestamp())
            events.append(bus_event(event_id, body))
        assert ingest_heartbeats(ingest, events).accepted == len(who)

    def health(agent: str) -> Health:
        snap = read_snapshot(r, agent)
        assert snap is not None
        return snap.health

    interval = LIMITS.interval_s
    with audit.capture():
        beat(*agents)
        for minute in range(1, 12):
            clock.advance(interval)
            beat(agents[1])
            outcome = silence_pass(silence)
            expected = (
                Health.HEALTHY
                if minute <= LIMITS.unknown_after
                else Health.UNKNOWN
                if minute <= LIMITS.critical_after
                else Health.CRITICAL
            )
            assert health(agents[0]) is expected, minute
            assert health(agents[1]) is Health.HEALTHY
        assert outcome.critical == 1
        snap = read_snapshot(r, agents[0])
        assert snap is not None and snap.error and snap.error.startswith("no heartbeat for 660 s")
        fleets, meta = fleet_health(r)
        assert fleets["demo"]["critical"] == 1 and fleets["demo"]["healthy"] == 1
        assert meta["sweep_id"].startswith("view-")
        # Each segment (the id prefix) has its own view and history beside its fleet's.
        segments = segment_health(r)
        assert set(segments) == {"demo/quiet", "demo/chatty"}
        assert segments["demo/quiet"]["critical"] == 1 and segments["demo/quiet"]["agents"] == 1
        assert segments["demo/chatty"]["healthy"] == 1
        with sessions() as s:
            kept = set(
                s.scalars(select(FleetSweep.fleet).where(FleetSweep.sweep_id == meta["sweep_id"]))
            )
        assert kept == {"demo", "*", "demo/quiet", "demo/chatty"}
        beat(agents[0])  # back
        assert health(agents[0]) is Health.HEALTHY
        snap = read_snapshot(r, agents[0])
        assert snap is not None and snap.error is None
        silence_pass(silence)
        assert fleet_health(r)[0]["demo"]["healthy"] == 2
    sessions.kw["bind"].dispose()


def test_a_fleet_thirty_percent_critical_freezes_provisioning_and_lifts_only_its_own_freeze(
    tmp_path: Path, redis_url: str
) -> None:
    agents = [f"em-{i:04d}-{i:08x}" for i in range(1, 11)]
    sessions = sessions_for(f"sqlite:///{tmp_path / 'fleet.db'}")
    migrate(sessions.kw["bind"])
    insert_agents(sessions, agents, fleet="demo", policy=SETTINGS.policy)
    keys = identity_keys(agents)
    record_public_keys(sessions, keys)
    r = connect(redis_url)
    r.flushdb()
    clock = ManualClock(datetime.now(UTC))
    handoff = Handoff(notify=lambda ids: None, escalate=lambda pairs: None)
    ingest = IngestDeps(
        r, sessions, SETTINGS.policy, clock, handoff,
        AgentDirectory(sessions, SETTINGS.policy, 60), 3600, 3600,
    )  # fmt: skip
    silence = SilenceDeps(r, sessions, SETTINGS.policy, clock, handoff, ["active"], 3600)
    seq = 0

    def minute(error_rate_of_first_three: float) -> None:
        nonlocal seq
        seq += 1
        clock.advance(LIMITS.interval_s)
        events = [
            bus_event(
                seq * 100 + i,
                signed_event(
                    agent, keys[agent], seq, sent_at=clock.now().timestamp(),
                    error_rate=error_rate_of_first_three if i < 3 else 0.01,
                ),
            )
            for i, agent in enumerate(agents)
        ]  # fmt: skip
        assert ingest_heartbeats(ingest, events).accepted == len(agents)
        silence_pass(silence)

    with audit.capture() as entries:
        minute(0.01)
        minute(0.5)  # 3 of 10 critical
        emergency = list_alerts(sessions, severity="emergency")
        assert [(a["rule"], a["subject"]) for a in emergency] == [("fleet.emergency", "demo")]
        assert is_provisioning_frozen(sessions, "demo")
        assert "freeze_provisioning" in [e.action for e in entries]
        minute(0.01)
        assert not is_provisioning_frozen(sessions, "demo")
        # An operator's freeze is theirs to lift.
        minute(0.5)
        with write_session(sessions) as s:
            freeze_provisioning(s, "demo", "operator: change freeze", clock.now())
        minute(0.01)
        assert provisioning_freeze_reason(sessions, "demo") == "operator: change freeze"
    sessions.kw["bind"].dispose()


def test_on_real_processes_silence_is_judged_from_the_last_heartbeat_sent(
    tmp_path: Path,
) -> None:
    agents = ["live-0001-00000001", "late-0001-00000002", "dead-0001-00000003"]
    with local_stack(tmp_path / "stack", stream={"batch_wait_s": 0.05}) as st:
        st.start_worker(["metrics"], concurrency=1, name="metrics")
        sessions = sessions_for(st.settings.sqlalchemy_url)
        insert_agents(sessions, agents, fleet="quiet", policy=st.settings.policy)
        keys = identity_keys(agents)
        record_public_keys(sessions, keys)
        st.sup.start("stream", stream_argv(), env=st.env)
        r = connect(st.settings.redis_url)
        url = f"http://{st.settings.sandbox.host}:{st.settings.sandbox.port}/v1/infra/events"
        admin = st.settings.gateway.admin_key.get_secret_value()
        now, interval = time.time(), LIMITS.interval_s
        # Each agent's last heartbeat, sent now, past the unknown limit, past the critical one.
        ago = {agents[0]: 0.0, agents[1]: (LIMITS.unknown_after + 1) * interval,
               agents[2]: (LIMITS.critical_after + 1) * interval}  # fmt: skip
        with httpx.Client(headers={"Authorization": f"Bearer {admin}"}) as client:
            for agent in agents:
                body = signed_event(agent, keys[agent], 1, sent_at=now - ago[agent])
                client.post(url, json=body).raise_for_status()
            wait_for(lambda: all(read_snapshot(r, a) for a in agents), "heartbeats not applied")
            celery = st.celery()
            celery.send_task(TaskName.SILENCE_PASS)
            expected = [Health.HEALTHY, Health.UNKNOWN, Health.CRITICAL]
            wait_for(
                lambda: [read_snapshot(r, a).health for a in agents] == expected,  # type: ignore[union-attr]
                "silence not judged",
            )
            assert fleet_health(r)[0]["quiet"]["unknown"] == 1
            # The dead agent comes back: its next heartbeat makes it healthy again.
            client.post(url, json=signed_event(agents[2], keys[agents[2]], 2)).raise_for_status()
            wait_for(
                lambda: read_snapshot(r, agents[2]).health is Health.HEALTHY,  # type: ignore[union-attr]
                "no recovery",
            )


def wait_for(predicate: Any, message: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, message
        time.sleep(0.1)
