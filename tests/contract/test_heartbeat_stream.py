"""Agents' signed heartbeats reach their snapshots through the gateway's own event stream.

Against the gateway under test (a real one with FLEET_CONTRACT_GATEWAY_URL): a handful of
agents get identity keys we hold (registered with the admin key before /v1/register, so the
gateway keeps ours), each publishes one signed heartbeat with its own key through
POST /v1/infra/events, and a forger publishes one under the first agent's id. The stream
consumer (fleet.monitoring.stream_consumer) follows GET /v1/events/stream from the bus's
current end; its batches go straight into the ingest (the queue's worker side, in process).
Every genuine heartbeat ends in its agent's snapshot; the forged one is counted and
changes nothing. Run with -s to see the snapshots.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from config.settings import StreamSettings, load_settings
from fleet import audit
from fleet.clock import SystemClock
from fleet.hotstate import connect
from fleet.monitoring.alerts import Handoff
from fleet.monitoring.heartbeats import new_identity_key, public_key_hex
from fleet.monitoring.ingest import AgentDirectory, IngestDeps, ingest_counts, ingest_heartbeats
from fleet.monitoring.snapshot import Health, read_snapshot
from fleet.monitoring.stream_consumer import CURSOR_KEY, ConsumerDeps, StreamConsumer
from fleet.storage.db import migrate
from tests.contract.conftest import GatewayUnderTest, MintKey
from tests.support.fleet_rows import insert_agents, sessions_for
from tests.support.heartbeat_fleet import record_public_keys, signed_event

AGENTS = 3
DEADLINE_S = 60.0  # the real gateway's stream polls its bus once a second


def _bus_end(admin: Any) -> int:
    """The id of the newest event on the bus (the stream starts after it)."""
    last = 0
    while True:
        page = admin.get("/v1/infra/events", params={"since_id": last, "limit": 1000})
        assert page.status_code == 200, page.text
        events = page.json()["events"]
        if not events:
            return last
        last = max(int(e["id"]) for e in events)


def test_signed_heartbeats_reach_their_snapshots_through_the_gateways_stream(
    gateway: GatewayUnderTest,
    new_agent_id: Callable[[str], str],
    mint_key: MintKey,
    redis_url: str,
    tmp_path: Path,
) -> None:
    settings = load_settings()
    keys = {new_agent_id(f"hb{n}"): new_identity_key() for n in range(AGENTS)}
    own_keys: dict[str, str] = {}
    with gateway.admin() as admin, gateway.http() as anonymous:
        for agent_id, key in keys.items():
            made = admin.post(
                "/v1/identity/agents",
                json={"agent_id": agent_id, "public_key": public_key_hex(key)},
            )
            assert made.status_code == 201, made.text
            registered = anonymous.post("/v1/register", json={"agent_id": agent_id})
            if registered.status_code == 201:  # the real gateway: identity first, then this
                own_keys[agent_id] = registered.json()["api_key"]
            else:  # the sandbox registers the agent with its identity
                assert registered.status_code == 409, registered.text
                own_keys[agent_id] = mint_key(agent_id, "free")
            on_record = admin.get(f"/v1/identity/agents/{agent_id}")
            assert on_record.status_code == 200, on_record.text
            assert on_record.json()["public_key"].removeprefix("ed25519:") == public_key_hex(key)
        start = _bus_end(admin)

    sessions = sessions_for(f"sqlite:///{tmp_path / 'fleet.db'}")
    migrate(sessions.kw["bind"])
    insert_agents(sessions, list(keys), fleet="contract", policy=settings.policy)
    record_public_keys(sessions, keys)
    r = connect(redis_url)
    r.set(CURSOR_KEY, start)
    before = ingest_counts(r)
    ingest = IngestDeps(
        r,
        sessions,
        settings.policy,
        SystemClock(),
        Handoff(notify=lambda ids: None, escalate=lambda pairs: None),
        AgentDirectory(sessions, settings.policy, 60),
        3600,
        3600,
    )

    def send(messages: Sequence[tuple[str, dict[str, Any]]]) -> None:
        for _, kwargs in messages:
            ingest_heartbeats(ingest, kwargs["events"])

    consumer = StreamConsumer(
        ConsumerDeps(
            redis=r,
            sessions=sessions,
            send=send,
            settings=StreamSettings(batch_wait_s=0.1, lock_ttl_s=5),
            gateway_url=gateway.base_url,
            api_key=gateway.admin_key,
            task_name="metrics.ingest_heartbeats",
        )
    )
    first = next(iter(keys))

    async def scenario() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(consumer.run(stop))
        try:
            for agent_id, key in keys.items():
                body = signed_event(agent_id, key, 1, latency_p99_ms=640.0, tool_calls=12)
                with gateway.http(own_keys[agent_id]) as own:
                    published = own.post("/v1/infra/events", json=body)
                    assert published.status_code in (200, 201), published.text
            forged = signed_event(first, new_identity_key(), 2, error_rate=0.9)
            with gateway.http(own_keys[first]) as other:
                assert other.post("/v1/infra/events", json=forged).status_code in (200, 201)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + DEADLINE_S
            while loop.time() < deadline:
                counts = ingest_counts(r)
                done = counts["accepted"] - before["accepted"] >= AGENTS
                forged_seen = (
                    counts["rejected"]["bad_signature"] - before["rejected"]["bad_signature"]
                )
                if done and forged_seen:
                    return
                await asyncio.sleep(0.2)
        finally:
            stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await running

    with audit.capture():
        asyncio.run(scenario())
    counts = ingest_counts(r)
    assert counts["accepted"] - before["accepted"] == AGENTS, counts
    assert counts["rejected"]["bad_signature"] - before["rejected"]["bad_signature"] == 1
    for agent_id in keys:
        snap = read_snapshot(r, agent_id)
        assert snap is not None, agent_id
        print(f"{agent_id}: {snap.health.value}, p99 {snap.latency_p99} ms, "
              f"tool calls {snap.tool_call_volume}, heartbeat at {snap.heartbeat_at}")  # fmt: skip
        assert snap.health is Health.HEALTHY and snap.latency_p99 == 640.0
        assert snap.error_rate == 0.01  # the forged 0.9 was never believed
    assert int(r.get(CURSOR_KEY) or 0) > start
    sessions.kw["bind"].dispose()
