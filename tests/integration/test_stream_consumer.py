"""The stream consumer as real processes: the sandbox's stream (closing every two seconds, as
the gateway does hourly), two `fleet stream` replicas on one lock, a metrics worker, Redis,
SQLite. Heartbeats are published while the lock's holder is killed with SIGKILL and started
again; every heartbeat reaches its agent's snapshot exactly once, and a forged one nowhere."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleet.hotstate import connect
from fleet.monitoring.ingest import ingest_counts, order_key
from fleet.monitoring.snapshot import Health, read_snapshot
from fleet.monitoring.stream_consumer import LOCK_KEY, stream_status
from stack.local import Stack, local_stack
from stack.processes import Managed, stream_argv
from tests.support.fleet_rows import insert_agents, sessions_for
from tests.support.heartbeat_fleet import identity_keys, record_public_keys, signed_event

pytestmark = pytest.mark.integration

AGENTS = [f"sc-{i:04d}-{i:08x}" for i in range(1, 21)]
ROUNDS = 30


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with local_stack(
        tmp_path / "stack",
        sandbox_extra=["--sse-lifetime-s", "2", "--sse-heartbeat-s", "0.5"],
        stream={
            "batch_size": 25,
            "batch_wait_s": 0.05,
            "lock_ttl_s": 2.0,
            "cursor_db_every_s": 0.5,
            "reconnect_initial_s": 0.1,
        },
    ) as st:
        # One worker slot applies the batches in queue order: every agent is in every
        # batch here (20 agents a round, 25 events a batch), so two slots would let a
        # heartbeat be overtaken by its successor: counted as superseded, never applied
        # (the per-agent order in fleet.monitoring.ingest), and not what this test counts.
        st.start_worker(["metrics"], concurrency=1, name="metrics")
        yield st


def wait_until(predicate: Any, timeout_s: float, message: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(message if isinstance(message, str) else message())
        time.sleep(0.1)


def start_consumer(stack: Stack, name: str) -> Managed:
    return stack.sup.start(name, stream_argv(), env=stack.env)


def holder(stack: Stack) -> str:
    value = connect(stack.settings.redis_url).get(LOCK_KEY)
    return str(value or "")


def holding(stack: Stack, consumers: dict[str, Managed]) -> str | None:
    """The name of the consumer that holds the lock (instance ids are host:pid:nonce)."""
    parts = holder(stack).split(":")
    pid = parts[1] if len(parts) == 3 else ""
    return next((n for n, c in consumers.items() if str(c.process.pid) == pid), None)


def test_killed_consumers_lose_and_double_no_heartbeat_and_forgeries_change_nothing(
    stack: Stack,
) -> None:
    sessions = sessions_for(stack.settings.sqlalchemy_url)
    insert_agents(sessions, AGENTS, fleet="sc", policy=stack.settings.policy)
    keys = identity_keys(AGENTS)
    record_public_keys(sessions, keys)
    forger = identity_keys(["forger"])["forger"]
    r = connect(stack.settings.redis_url)
    url = f"http://{stack.settings.sandbox.host}:{stack.settings.sandbox.port}/v1/infra/events"
    admin = stack.settings.gateway.admin_key.get_secret_value()
    published: list[int] = []
    failures: list[BaseException] = []

    def publish() -> None:
        try:
            with httpx.Client(headers={"Authorization": f"Bearer {admin}"}) as client:
                for seq in range(1, ROUNDS + 1):
                    for agent in AGENTS:
                        body = signed_event(agent, keys[agent], seq)
                        client.post(url, json=body).raise_for_status()
                        published.append(1)
                    if seq == ROUNDS // 2:
                        # The victim's id with a key that is not its own, and a dying error rate.
                        forged = signed_event(AGENTS[0], forger, 10_000, error_rate=0.9)
                        client.post(url, json=forged).raise_for_status()
                    time.sleep(0.1)
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            failures.append(exc)

    first = start_consumer(stack, "stream-a")
    wait_until(lambda: holder(stack) != "", timeout_s=30, message="no consumer took the lock")
    second = start_consumer(stack, "stream-b")
    publisher = threading.Thread(target=publish)
    publisher.start()
    consumers = {"stream-a": first, "stream-b": second}
    kills = 0
    while publisher.is_alive() and kills < 3:
        target = 100 * (kills + 1)
        wait_until(
            lambda target=target: (
                int(stream_status(r).get("events") or 0) > target or not publisher.is_alive()
            ),
            timeout_s=60,
            message="the stream consumer hands nothing on",
        )
        # Kill whichever replica holds the lock, mid-stream; start it again (it stands by).
        wait_until(
            lambda: holding(stack, consumers) is not None,
            timeout_s=10,
            message=f"no live consumer holds the lock: {holder(stack)}",
        )
        name = holding(stack, consumers)
        assert name is not None
        stack.sup.stop(consumers[name], sig=signal.SIGKILL)
        kills += 1
        consumers[name] = start_consumer(stack, name)
    publisher.join(120)
    assert not failures, failures
    total = len(published)
    assert total == ROUNDS * len(AGENTS)
    wait_until(
        lambda: int(ingest_counts(r)["accepted"]) >= total, timeout_s=90, message="lost some"
    )
    time.sleep(1.0)  # anything doubled would land by now
    counts = ingest_counts(r)
    assert kills >= 2
    assert counts["accepted"] == total, counts  # none lost, none applied twice
    assert counts["superseded"] == 0
    assert counts["rejected"]["bad_signature"] == 1
    assert sum(counts["rejected"].values()) == 1
    for agent in AGENTS:
        assert r.hget(order_key(agent), "s") == str(ROUNDS)
        snap = read_snapshot(r, agent)
        assert snap is not None and snap.health is Health.HEALTHY and snap.error_rate == 0.01
    status: dict[str, Any] = stream_status(r)
    assert int(status["closes"]) >= 1  # it lived through the stream's closes
