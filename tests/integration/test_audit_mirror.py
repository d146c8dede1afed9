"""The log's signed checkpoints on the sandbox's event bus, through the outbox, over HTTP.

Each checkpoint goes out once as a ``fleet.audit.checkpoint`` event, in order, signed and
linked to the one before it; an outage at the gateway loses and doubles nothing, and an
answer lost after the bus stored the event is found there rather than published again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from config.settings import DEFAULT_POLICY_FILE
from fleet.audit.events import build_event, fleet_subject
from fleet.audit.log import AuditFiles, AuditLog
from fleet.audit.mirror import EVENT_TYPE, SOURCE, Outbox
from fleet.audit.signing import Checkpoint, signature_valid
from fleet.clock import ManualClock
from fleet.gateway import GatewayClient, GatewayConfig
from fleet.gateway import operations as ops
from fleet.hotstate import connect
from fleet.runtime import Runtime
from fleet.storage.db import create_db_engine, migrate
from stack.parts import celery_worker, producer_app, redis_server, wait_until
from tests.conftest import SandboxProcess
from tests.support.trust import pinned_key
from workers.queues import FleetQueue, TaskName
from workers.runtime import enqueue_audit

pytestmark = pytest.mark.integration

OUTAGE = {"tools": {"publish_event": {"outages": [{"duration_s": 3600}]}}}


@pytest.fixture
def log(tmp_path: Path) -> Iterator[AuditLog]:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    migrate(engine)
    yield AuditLog(
        engine,
        AuditFiles(tmp_path / "k.pem", tmp_path / "c.jsonl", tmp_path / "a", tmp_path / "r"),
        clock=ManualClock(datetime(2026, 1, 1, tzinfo=UTC)),
        checkpoint_every=2,
        public_key=pinned_key(tmp_path / "k.pem"),
    )
    engine.dispose()


@pytest.fixture
def client(sandbox: SandboxProcess) -> Iterator[GatewayClient]:
    """What the runtime gives the outbox: one attempt per call, the admin key."""
    config = GatewayConfig(
        url=sandbox.gateway_url,
        admin_key=sandbox.admin_key,
        max_attempts=1,
        breaker_failure_threshold=1000,
    )
    with GatewayClient(config) as c:
        yield c


def _last_event_id(client: GatewayClient) -> int:
    """Where the bus stands now; a test reads only what was published after it."""
    seen = 0
    while True:
        page = client.run(ops.get_events(since_id=seen, limit=100)).events
        if not page:
            return seen
        seen = page[-1].id


def _bus(client: GatewayClient, since: int, head_of: AuditLog) -> list[dict[str, Any]]:
    """Checkpoint events published after ``since`` for this log's signing key, in bus order."""
    key = head_of.trusted_public_key()
    out: list[dict[str, Any]] = []
    while True:
        page = client.run(ops.get_events(event_type=EVENT_TYPE, since_id=since, limit=100)).events
        for event in page:
            assert event.source == SOURCE
            fields = {k: v for k, v in event.payload.items() if k != "previous"}
            if signature_valid(Checkpoint.from_dict(fields), key):
                out.append(event.payload)
        if len(page) < 100:
            return out
        since = page[-1].id


def _publishes(sandbox: SandboxProcess, status: str = "200") -> int:
    statuses = sandbox.counters(agents=False)["statuses"].get("publish_event", {})
    return int(statuses.get(status, 0))


def _append(log: AuditLog, n: int, action: str = "restart_agent") -> None:
    """n entries, one append each; with checkpoint_every=2 a checkpoint every second one."""
    for i in range(n):
        log.append(
            [
                build_event(
                    actor="t",
                    action=action,
                    subject=fleet_subject("demo"),
                    clock=log.clock,
                    details={"i": i},
                )
            ]
        )


def _linked(published: list[dict[str, Any]]) -> None:
    """Each event names the checkpoint before it, as the bus got it."""
    for before, after in zip(published, published[1:], strict=False):
        assert after["previous"] == {
            "size": before["size"],
            "head": before["head"],
            "signature": before["signature"],
        }


def test_an_outage_holds_checkpoints_and_after_it_each_arrives_once_in_order(
    sandbox: SandboxProcess, client: GatewayClient, log: AuditLog
) -> None:
    since = _last_event_id(client)
    before = _publishes(sandbox)
    try:
        _append(log, 4)
        run = Outbox(log, owner="w1").run(client)
        assert (run.delivered, run.pending, run.error) == (2, 0, None)

        sandbox.set_faults(**OUTAGE)
        _append(log, 6, "freeze_agent")
        refused_before = _publishes(sandbox, "503")
        for _ in range(3):  # beat keeps trying while the gateway is down
            run = Outbox(log, owner="w1").run(client)
            assert (run.delivered, run.pending) == (0, 3) and run.error is not None
        # One attempt per run, not a retry storm.
        assert _publishes(sandbox, "503") - refused_before == 3
        assert [p["size"] for p in _bus(client, since, log)] == [2, 4]

        sandbox.clear_faults()
        run = Outbox(log, owner="w2").run(client)
        assert (run.delivered, run.pending, run.error) == (3, 0, None)
        assert Outbox(log, owner="w2").run(client).delivered == 0, "nothing is sent twice"
    finally:
        sandbox.clear_faults()
    assert _publishes(sandbox) - before == 5, "every checkpoint exactly once"
    published = _bus(client, since, log)
    assert [p["size"] for p in published] == [2, 4, 6, 8, 10], "none lost, none doubled, in order"
    assert published[0]["previous"] is None
    _linked(published)
    assert published[-1]["head"] == log.head().hash


def test_an_answer_lost_after_the_bus_stored_the_event_is_not_published_again(
    sandbox: SandboxProcess, client: GatewayClient, log: AuditLog
) -> None:
    since = _last_event_id(client)
    try:
        _append(log, 2)
        sandbox.set_faults(tools={"publish_event": {"drop_after_commit_rate": 1.0}})
        first = Outbox(log, owner="w1").run(client)
        assert first.delivered == 0 and first.error is not None
        assert [p["size"] for p in _bus(client, since, log)] == [2], "stored, answer lost"
        sandbox.clear_faults()
        _append(log, 2)
        run = Outbox(log, owner="w1").run(client)
        assert (run.delivered, run.skipped, run.pending) == (1, 1, 0)
    finally:
        sandbox.clear_faults()
    assert [p["size"] for p in _bus(client, since, log)] == [2, 4], "size 2 not sent twice"


def test_through_the_queue_and_a_real_worker_across_an_outage(
    sandbox: SandboxProcess, tmp_path: Path
) -> None:
    policy = yaml.safe_load(DEFAULT_POLICY_FILE.read_text())
    # Three entries per message and a checkpoint every three: one checkpoint per message.
    policy["audit"].update(mirror_enabled=True, mirror_every_s=1, batch_size=3, checkpoint_every=3)
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(policy))
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    engine = create_db_engine(url)
    migrate(engine)
    log = AuditLog(
        engine,
        AuditFiles(
            tmp_path / "audit/signing-key.pem",
            tmp_path / "audit/checkpoints.jsonl",
            tmp_path / "a",
            tmp_path / "r",
        ),
        public_key=pinned_key(tmp_path / "audit/signing-key.pem"),
    )
    config = GatewayConfig(url=sandbox.gateway_url, admin_key=sandbox.admin_key, max_attempts=1)
    with redis_server(tmp_path / "redis") as redis_url, GatewayClient(config) as client:
        since = _last_event_id(client)
        env = {
            "FLEET_REDIS__URL": redis_url,
            "FLEET_DATABASE_URL": url,
            "FLEET_DATA_DIR": str(tmp_path),
            "FLEET_POLICY_FILE": str(policy_file),
            "FLEET_GATEWAY__BASE_URL": sandbox.url,
            "FLEET_GATEWAY__ADMIN_KEY": sandbox.admin_key,
            "FLEET_GATEWAY__BREAKER_RESET_S": "0.5",
        }
        before = _publishes(sandbox)
        sandbox.set_faults(**OUTAGE)
        try:
            with celery_worker(env, [FleetQueue.AUDIT], tmp_path, concurrency=2, name="audit") as (
                sup,
                log_file,
            ):
                app = producer_app(redis_url)
                events = [
                    build_event(
                        actor="t",
                        action="restart_agent",
                        subject=fleet_subject("demo"),
                        details={"i": i},
                    )
                    for i in range(12)
                ]
                enqueue_audit(app, 3, connect(redis_url), events)
                wait_until(lambda: log.head().seq == 12, timeout_s=30)
                # The appends nudged the outbox; it hit the outage and holds everything.
                wait_until(lambda: _publishes(sandbox, "503") >= 1, timeout_s=30)
                assert _publishes(sandbox) == before
                assert [c.size for c in log.checkpoints()] == [3, 6, 9, 12]
                sandbox.clear_faults()
                app.send_task(TaskName.AUDIT_MIRROR.value)  # what beat does every mirror_every_s
                wait_until(lambda: len(_bus(client, since, log)) >= 4, timeout_s=30)
                runs = log_file.read_text().count("audit.mirror[")
                app.send_task(TaskName.AUDIT_MIRROR.value)
                wait_until(
                    lambda: log_file.read_text().count("audit.mirror[") >= runs + 2, timeout_s=30
                )
                assert not sup.dead()
        finally:
            sandbox.clear_faults()
        published = _bus(client, since, log)
    engine.dispose()
    assert _publishes(sandbox) - before == 4
    assert [p["size"] for p in published] == [3, 6, 9, 12]
    _linked(published)


def test_the_mirror_client_makes_one_attempt_per_call(runtime: Runtime) -> None:
    client = runtime.mirror_gateway
    assert client.config.max_attempts == 1
    assert (
        dataclasses.replace(client.config, max_attempts=runtime.settings.gateway.max_attempts)
        != client.config
    )
