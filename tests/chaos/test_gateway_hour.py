"""The gateway down for an hour, on the movable clock: the audit trail keeps appending
and checkpointing every minute while every gateway call is refused; when the gateway
is back each checkpoint reaches its event bus exactly once, in order, linked.

The hour is the audit log's ManualClock (fleet/clock.py) moved a minute at a time;
the sandbox refuses every tool (503) meanwhile.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fleet.audit.events import build_event, fleet_subject
from fleet.audit.log import AuditFiles, AuditLog
from fleet.audit.mirror import EVENT_TYPE, Outbox
from fleet.audit.signing import Checkpoint, signature_valid
from fleet.clock import ManualClock
from fleet.gateway import GatewayClient, GatewayConfig
from fleet.gateway import operations as ops
from fleet.storage.db import create_db_engine, migrate
from tests.chaos.support import report
from tests.conftest import SandboxProcess
from tests.support.trust import pinned_key

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

HOUR_S, STEP_S = 3600, 60


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


def _published(client: GatewayClient, since: int, log: AuditLog) -> list[dict[str, Any]]:
    key, out = log.trusted_public_key(), []
    while True:
        page = client.run(ops.get_events(event_type=EVENT_TYPE, since_id=since, limit=100)).events
        for event in page:
            fields = {k: v for k, v in event.payload.items() if k != "previous"}
            if signature_valid(Checkpoint.from_dict(fields), key):
                out.append(event.payload)
        if len(page) < 100:
            return out
        since = page[-1].id


def test_an_hour_without_the_gateway_loses_and_doubles_no_audit_checkpoint(
    sandbox: SandboxProcess, log: AuditLog
) -> None:
    config = GatewayConfig(
        url=sandbox.gateway_url,
        admin_key=sandbox.admin_key,
        max_attempts=1,
        breaker_failure_threshold=1000,
    )
    clock = log.clock
    assert isinstance(clock, ManualClock)
    with GatewayClient(config) as client:
        since = 0
        while page := client.run(ops.get_events(since_id=since, limit=100)).events:
            since = page[-1].id
        sandbox.set_faults(outages=[{"duration_s": HOUR_S}])
        refused = 0
        try:
            for minute in range(HOUR_S // STEP_S):
                clock.advance(STEP_S)
                log.append(
                    [
                        build_event(
                            actor="chaos",
                            action="restart_agent",
                            subject=fleet_subject("demo"),
                            clock=clock,
                            details={"minute": minute},
                        )
                    ]
                )
                log.append(
                    [
                        build_event(
                            actor="chaos",
                            action="freeze_agent",
                            subject=fleet_subject("demo"),
                            clock=clock,
                            details={"minute": minute},
                        )
                    ]
                )
                run = Outbox(log, owner="beat").run(client)  # beat's audit-mirror tick
                assert run.delivered == 0 and run.error is not None
                refused += 1
        finally:
            sandbox.clear_faults()
        clock.advance(STEP_S)
        after = Outbox(log, owner="beat").run(client)
        again = Outbox(log, owner="another-worker").run(client)
        published = _published(client, since, log)
    sizes = [p["size"] for p in published]
    expected = list(range(2, 2 * (HOUR_S // STEP_S) + 1, 2))
    lost = sorted(set(expected) - set(sizes))
    doubled = len(sizes) - len(set(sizes))
    report(
        "gateway down an hour (movable clock)",
        minutes=HOUR_S // STEP_S,
        audit_entries=log.head().seq,
        mirror_runs_refused=refused,
        checkpoints_after=after.delivered,
        checkpoints_lost=len(lost),
        checkpoints_doubled=doubled,
    )
    assert (after.pending, after.error, again.delivered) == (0, None, 0)
    assert sizes == expected, f"lost {lost}, doubled {doubled}"
    for before, later in zip(published, published[1:], strict=False):
        assert later["previous"]["head"] == before["head"]
    assert published[-1]["head"] == log.head().hash
