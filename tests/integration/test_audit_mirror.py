"""Mirroring to the gateway through the outbox, against the sandbox over HTTP.

Outages lose and double nothing.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from config.settings import DEFAULT_POLICY_FILE, load_settings
from fleet.audit.events import build_event, fleet_subject
from fleet.audit.log import AuditFiles, AuditLog
from fleet.audit.mirror import Outbox
from fleet.clock import ManualClock
from fleet.gateway import GatewayClient, GatewayConfig
from fleet.runtime import Runtime
from fleet.storage.db import create_db_engine, migrate
from stack.parts import celery_worker, producer_app, redis_server, wait_until
from workers.queues import FleetQueue
from workers.runtime import enqueue_audit

pytestmark = pytest.mark.integration

OUTAGE = {"tools": {"create_audit_trail": {"outages": [{"duration_s": 3600}]}}}


@pytest.fixture
def agents(sandbox: Any) -> list[str]:
    seeded = sandbox.seed(3, prefix=f"m{uuid.uuid4().hex[:6]}")
    return list(seeded["agent_ids"])


@pytest.fixture
def log(tmp_path: Path) -> Iterator[AuditLog]:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    migrate(engine)
    clock = ManualClock(datetime(2026, 1, 1, tzinfo=UTC))
    yield AuditLog(
        engine,
        AuditFiles(tmp_path / "k.pem", tmp_path / "c.jsonl", tmp_path / "a", tmp_path / "r"),
        clock=clock,
    )
    engine.dispose()


def _gateway_audits(sandbox: Any, agents: list[str]) -> list[int]:
    """The chain positions the gateway holds for these agents, in the order it received them."""
    received = []
    for agent_id in agents:
        for entry in sandbox.agent(agent_id).get("audits", []):
            received.append((entry["recorded_at"], entry["metadata"]["seq"]))
    return [seq for _, seq in sorted(received, key=lambda r: r[1])]


def _created(sandbox: Any, status: str = "200") -> int:
    return int(
        sandbox.counters(agents=False)["statuses"].get("create_audit_trail", {}).get(status, 0)
    )


def test_an_outage_holds_entries_and_after_it_each_arrives_exactly_once_in_order(
    sandbox: Any, agents: list[str], log: AuditLog
) -> None:
    clock = log.clock
    client = GatewayClient(
        GatewayConfig(
            url=sandbox.gateway_url,
            admin_key=sandbox.admin_key,
            max_attempts=1,
            breaker_failure_threshold=1000,
        )
    )
    before = _created(sandbox)
    try:
        log.append(
            [
                build_event(
                    actor="t",
                    action="restart_agent",
                    subject=agents[i % 3],
                    clock=clock,
                    details={"i": i},
                )
                for i in range(4)
            ]
        )
        assert Outbox(log, owner="w1").run(client.call).delivered == 4

        sandbox.set_faults(**OUTAGE)
        log.append(
            [
                build_event(
                    actor="t",
                    action="freeze_agent",
                    subject=agents[i % 3],
                    clock=clock,
                    details={"i": i},
                )
                for i in range(4, 10)
            ]
        )
        log.append(
            [
                build_event(
                    actor="t", action="pause_fleet", subject=fleet_subject("demo"), clock=clock
                )
            ]
        )
        refused_before = _created(sandbox, "503")
        for _ in range(3):  # beat keeps trying while the gateway is down
            run = Outbox(log, owner="w1").run(client.call)
            assert (run.delivered, run.pending) == (0, 7) and run.error is not None
        assert _created(sandbox, "503") - refused_before == 3, (
            "one attempt per run, not a retry storm"
        )

        sandbox.clear_faults()
        run = Outbox(log, owner="w2").run(client.call)
        assert (run.delivered, run.skipped, run.pending) == (6, 1, 0)
        assert Outbox(log, owner="w2").run(client.call).delivered == 0
    finally:
        sandbox.clear_faults()
        client.close()
    assert _created(sandbox) - before == 10, "every agent entry exactly once"
    assert _gateway_audits(sandbox, agents) == list(range(1, 11)), (
        "none lost, none doubled, in chain order"
    )


def test_through_the_queue_and_a_real_worker_across_an_outage(
    sandbox: Any, agents: list[str], tmp_path: Path
) -> None:
    policy = yaml.safe_load(DEFAULT_POLICY_FILE.read_text())
    policy["audit"].update(mirror_enabled=True, mirror_every_s=1)
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
    )
    with redis_server(tmp_path / "redis") as redis_url:
        env = {
            "FLEET_REDIS__URL": redis_url,
            "FLEET_DATABASE_URL": url,
            "FLEET_DATA_DIR": str(tmp_path),
            "FLEET_POLICY_FILE": str(policy_file),
            "FLEET_GATEWAY__BASE_URL": sandbox.url,
            "FLEET_GATEWAY__BREAKER_RESET_S": "0.5",
        }
        before = _created(sandbox)
        sandbox.set_faults(**OUTAGE)
        try:
            with celery_worker(env, [FleetQueue.AUDIT], tmp_path, concurrency=2, name="audit") as (
                sup,
                log_file,
            ):
                app = producer_app(redis_url)
                events = [
                    build_event(
                        actor="t", action="restart_agent", subject=agents[i % 3], details={"i": i}
                    )
                    for i in range(12)
                ]
                enqueue_audit(app, load_settings().policy.audit.batch_size, events[:6])
                enqueue_audit(app, load_settings().policy.audit.batch_size, events[6:])
                wait_until(lambda: log.head().seq == 12, timeout_s=30)
                wait_until(
                    lambda: _created(sandbox, "503") >= 1, timeout_s=30
                )  # the append nudged the outbox; it hit the outage
                assert _created(sandbox) == before
                sandbox.clear_faults()
                app.send_task("audit.mirror")  # what beat does every mirror_every_s
                wait_until(lambda: _created(sandbox) - before >= 12, timeout_s=30)
                app.send_task("audit.mirror")
                wait_until(lambda: log_file.read_text().count("audit.mirror[") >= 4, timeout_s=30)
                assert not sup.dead()
        finally:
            sandbox.clear_faults()
    engine.dispose()
    assert _created(sandbox) - before == 12
    assert _gateway_audits(sandbox, agents) == list(range(1, 13))


def test_the_mirror_client_makes_one_attempt_per_call(runtime: Runtime) -> None:
    client = runtime.mirror_gateway
    assert client.config.max_attempts == 1
    assert (
        dataclasses.replace(client.config, max_attempts=runtime.settings.gateway.max_attempts)
        != client.config
    )
