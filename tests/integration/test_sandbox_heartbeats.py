"""The sandbox's agents report in as real ones would, and its stream serves them as the real
gateway's does (real-gateway.md §11): over HTTP against sandbox processes."""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleet.monitoring.heartbeats import (
    EVENT_TYPE,
    Heartbeat,
    load_public_key,
    private_key_hex,
    public_key_hex,
    verify_heartbeat,
)
from tests.conftest import SandboxProcess


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _events(sb: SandboxProcess, since_id: int = 0) -> list[dict[str, Any]]:
    answer = httpx.get(
        f"{sb.url}/v1/infra/events",
        params={"event_type": EVENT_TYPE, "since_id": since_id, "limit": 1000},
        headers=_bearer(sb.admin_key),
    )
    events: list[dict[str, Any]] = answer.json()["events"]
    return events


def _verified(sb: SandboxProcess, events: list[dict[str, Any]]) -> list[Heartbeat]:
    """Every event checked against the identity key the gateway has on record."""
    keys: dict[str, Any] = {}
    out = []
    with httpx.Client(base_url=sb.url, headers=_bearer(sb.admin_key)) as http:
        for e in events:
            if e["source"] not in keys:
                identity = http.get(f"/v1/identity/agents/{e['source']}").json()
                keys[e["source"]] = load_public_key(identity["public_key"])
            out.append(verify_heartbeat(e["source"], e["payload"], keys[e["source"]]))
    return out


def _stream(
    sb: SandboxProcess, until_id: int, headers: dict[str, str] | None = None, **params: Any
) -> tuple[list[int], list[float], str]:
    """Frame ids of the stream up to ``until_id``, when each came, and the text seen."""
    ids: list[int] = []
    times: list[float] = []
    seen = []
    started = time.monotonic()
    with httpx.stream(
        "GET",
        f"{sb.url}/v1/events/stream",
        params=params,
        headers={**_bearer(sb.admin_key), **(headers or {})},
        timeout=httpx.Timeout(10, read=15),
    ) as response:
        for line in response.iter_lines():
            seen.append(line)
            if line.startswith("data: "):
                event_id = json.loads(line[6:])["id"]
                ids.append(event_id)
                times.append(time.monotonic() - started)
                if event_id >= until_id:
                    break
    return ids, times, "\n".join(seen)


def test_seeded_agents_heartbeat_signed_by_profile_and_dead_ones_stay_silent(
    spawn_sandbox: Callable[..., SandboxProcess],
) -> None:
    sb = spawn_sandbox("--memory", "--latency-ms", "0", "--heartbeat-interval-s", "0.5")
    profiles = ("healthy", "flaky", "degrading", "cost_runaway", "dead")
    agents = {
        p: [a["agent_id"] for a in sb.seed(2, prefix=f"hb-{p}", profile=p)["agents"]]
        for p in profiles
    }
    time.sleep(1.8)
    beats = _verified(sb, _events(sb))
    by_agent: defaultdict[str, list[Heartbeat]] = defaultdict(list)
    for hb in beats:
        by_agent[hb.agent_id].append(hb)
    for profile in profiles[:4]:
        for agent_id in agents[profile]:
            mine = by_agent[agent_id]
            assert 2 <= len(mine) <= 5, (profile, len(mine))  # every 0.5 s, spread by phase
            assert [hb.seq for hb in mine] == sorted({hb.seq for hb in mine})
            assert all(hb.interval_s == 0.5 and hb.metrics.latency_p99_ms for hb in mine)
    assert not any(by_agent[a] for a in agents["dead"])
    assert sb.heartbeats()["agents"] == 8


def test_an_agent_given_its_identity_key_heartbeats_and_a_wrong_key_is_refused(
    sandbox: SandboxProcess,
) -> None:
    agent_id = f"t-hbk-{uuid.uuid4().hex[:10]}"
    ours = Ed25519PrivateKey.generate()
    with httpx.Client(base_url=sandbox.url) as http:
        # Identity first (the admin key), then registration keeps it: as on the real gateway.
        made = http.post(
            "/v1/identity/agents",
            json={"agent_id": agent_id, "public_key": public_key_hex(ours)},
            headers=_bearer(sandbox.admin_key),
        )
        assert made.status_code == 201 and made.json()["public_key"] == public_key_hex(ours)
        registered = http.post("/v1/register", json={"agent_id": agent_id})
        assert registered.status_code == 201
        assert registered.json()["public_key"] == public_key_hex(ours)
    sandbox.set_profile(agent_id, "healthy")
    assert sandbox.tick()["heartbeats"] >= 0
    assert not [e for e in _events(sandbox) if e["source"] == agent_id]  # no key: silent

    wrong = private_key_hex(Ed25519PrivateKey.generate())
    refused = httpx.put(
        f"{sandbox.url}/_sandbox/agents/{agent_id}/identity-key",
        json={"private_key": wrong},
        headers=_bearer(sandbox.admin_key),
    )
    assert refused.status_code == 400 and "not" in refused.json()["error"]["message"]

    handed = sandbox.hand_identity_key(agent_id, private_key_hex(ours))
    assert handed["public_key"] == public_key_hex(ours) and handed["heartbeating"]
    sandbox.tick()
    mine = [e for e in _events(sandbox) if e["source"] == agent_id]
    assert len(mine) == 1
    verify_heartbeat(agent_id, mine[0]["payload"], ours.public_key())


def test_a_burst_puts_signed_rounds_on_the_bus_at_once(
    spawn_sandbox: Callable[..., SandboxProcess],
) -> None:
    sb = spawn_sandbox(
        "--memory", "--latency-ms", "0", "--agents", "20", "--heartbeat-interval-s", "0"
    )
    burst = sb.burst(3, 5)
    assert (burst["published"], burst["agents"]) == (15, 5)
    assert burst["last_id"] - burst["first_id"] + 1 == 15
    beats = _verified(sb, _events(sb, burst["first_id"] - 1))
    assert len(beats) == 15 and len({hb.agent_id for hb in beats}) == 5
    per_agent: defaultdict[str, list[int]] = defaultdict(list)
    for hb in beats:
        per_agent[hb.agent_id].append(hb.seq)
    assert all(seqs == sorted(set(seqs)) for seqs in per_agent.values())  # replays they are not
    named = sb.burst(1, [beats[0].agent_id])
    assert named["published"] == 1
    everyone = sb.burst(1)  # every agent that heartbeats: the dead ones are silent
    assert everyone["agents"] == sb.heartbeats()["agents"] <= 20


def test_the_stream_serves_as_the_real_gateway_does(
    spawn_sandbox: Callable[..., SandboxProcess],
) -> None:
    sb = spawn_sandbox(
        "--memory", "--latency-ms", "0", "--agents", "250", "--heartbeat-interval-s", "0"
    )
    burst = sb.burst(1, 250)
    first, last = burst["first_id"], burst["last_id"]
    # 100 events per 1 s poll: 250 take three polls.
    ids, times, _ = _stream(sb, last, since_id=first - 1)
    assert ids == list(range(first, last + 1))
    assert times[99] < 0.8 and 0.8 < times[100] < 1.8 and 1.8 < times[-1] < 3.5
    # Last-Event-ID overrides since_id; one that is not a number is ignored.
    resumed, _, _ = _stream(sb, last, {"Last-Event-ID": str(last - 3)}, since_id=first - 1)
    assert resumed == [last - 2, last - 1, last]
    ignored, _, _ = _stream(sb, first + 1, {"Last-Event-ID": "x"}, since_id=first - 1)
    assert ignored == [first, first + 1]
    # agent_id filters on the source (each agent is once in the burst).
    seventh = _events(sb, first - 1)[7]
    only, _, _ = _stream(sb, seventh["id"], agent_id=seventh["source"], since_id=first - 1)
    assert only == [seventh["id"]]
    bad = httpx.get(f"{sb.url}/v1/events/stream", headers=_bearer("a2a_free_" + "0" * 24))
    assert bad.status_code == 401 and bad.json()["type"].endswith("/invalid-key")


def test_the_stream_beats_closes_after_its_lifetime_and_the_bus_forgets_after_retention(
    spawn_sandbox: Callable[..., SandboxProcess],
) -> None:
    sb = spawn_sandbox(
        "--memory",
        "--latency-ms",
        "0",
        "--agents",
        "3",
        "--heartbeat-interval-s",
        "0",
        "--sse-lifetime-s",
        "1.2",
        "--sse-heartbeat-s",
        "0.2",
        "--events-retention-s",
        "1",
    )
    old = sb.burst(1, 1)["first_id"]
    started = time.monotonic()
    ids, _, text = _stream(sb, 10**9)
    assert 1.1 < time.monotonic() - started < 3 and ids == [old]
    assert ": heartbeat" in text  # checked after each 1 s poll, as the real one
    time.sleep(max(0.0, started + 1.1 - time.monotonic()))
    assert [e["id"] for e in _events(sb)] == []  # published more than 1 s ago
    new = sb.burst(1, 1)["first_id"]
    assert [e["id"] for e in _events(sb)] == [new]
