"""Agents that heartbeat, for tests and benchmarks: identity keys, their rows, signed events,
and a private Redis (the ingest's ordering runs real Lua, which fakeredis cannot)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import redis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from fleet.monitoring.heartbeats import (
    Heartbeat,
    HeartbeatMetrics,
    heartbeat_event,
    new_identity_key,
    public_key_hex,
)
from fleet.storage.db import write_session
from fleet.storage.records import Agent
from stack.processes import find_redis_server, free_port


def identity_keys(agent_ids: Sequence[str]) -> dict[str, Ed25519PrivateKey]:
    return {agent_id: new_identity_key() for agent_id in agent_ids}


def record_public_keys(
    sessions: sessionmaker[Session], keys: Mapping[str, Ed25519PrivateKey]
) -> None:
    """What the provisioning identity step leaves: each agent's public key in Agent.extra."""
    with write_session(sessions) as s:
        for agent_id, key in keys.items():
            s.execute(
                update(Agent)
                .where(Agent.agent_id == agent_id)
                .values(extra={"public_key": public_key_hex(key)})
            )


def signed_event(
    agent_id: str,
    key: Ed25519PrivateKey,
    seq: int,
    *,
    sent_at: float | None = None,
    interval_s: float = 60,
    source: str | None = None,
    **metrics: Any,
) -> dict[str, Any]:
    """The body of ``POST /v1/infra/events`` for one heartbeat (``source`` to forge one)."""
    values = {"latency_p50_ms": 200.0, "latency_p99_ms": 800.0, "error_rate": 0.01}
    values.update(metrics)
    hb = Heartbeat(
        agent_id=agent_id,
        seq=seq,
        sent_at=sent_at if sent_at is not None else time.time(),
        interval_s=interval_s,
        metrics=HeartbeatMetrics(**values),
    )
    body = heartbeat_event(hb, key)
    if source is not None:
        body["source"] = source
    return body


def bus_event(event_id: int, body: Mapping[str, Any]) -> dict[str, Any]:
    """``body`` as the stream carries it once published with ``event_id``."""
    return {"id": event_id, **body, "integrity_hash": "x", "created_at": "2026-12-02T00:00:00"}


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """A redis-server of the test's own on a free port; yields its URL."""
    port = free_port()
    data = tempfile.mkdtemp(prefix="hb-redis-")
    argv = [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    proc = subprocess.Popen(
        [*argv, "--appendonly", "no", "--dir", data],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 15
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on port {port}") from None
                time.sleep(0.05)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(data, ignore_errors=True)
