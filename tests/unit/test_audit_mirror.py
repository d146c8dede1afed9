"""The outbox to the gateway's event bus, against the REST double: each signed checkpoint
published once, in order, however long the gateway is away."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text

from fleet.audit.events import build_event
from fleet.audit.log import AuditFiles, AuditLog
from fleet.audit.mirror import EVENT_TYPE, Outbox
from fleet.audit.signing import Checkpoint, signature_valid
from fleet.clock import ManualClock
from fleet.gateway import GatewayClient
from fleet.storage.db import create_db_engine, migrate
from tests.support.rest_gateway import RestGateway
from tests.support.trust import pinned_key


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2026, 1, 1, tzinfo=UTC))


@pytest.fixture
def log(tmp_path: Path, clock: ManualClock) -> Iterator[AuditLog]:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    migrate(engine)
    yield AuditLog(
        engine,
        AuditFiles(tmp_path / "k.pem", tmp_path / "c.jsonl", tmp_path / "a", tmp_path / "r"),
        clock=clock,
        checkpoint_every=2,
        public_key=pinned_key(tmp_path / "k.pem"),
    )
    engine.dispose()


@pytest.fixture
def gateway() -> RestGateway:
    return RestGateway()


@pytest.fixture
def client(gateway: RestGateway) -> Iterator[GatewayClient]:
    with gateway.client() as c:
        yield c


def _append(log: AuditLog, clock: ManualClock, n: int) -> None:
    """n entries; with checkpoint_every=2, a signed checkpoint every second one."""
    for i in range(n):
        log.append([build_event(actor="t", action="restart_agent", subject=f"a-{i}", clock=clock)])


def _published(gateway: RestGateway) -> list[dict[str, object]]:
    return [e["payload"] for e in gateway.events if e["event_type"] == EVENT_TYPE]


def test_checkpoints_reach_the_bus_in_order_signed_and_linked_to_the_one_before(
    log: AuditLog, clock: ManualClock, gateway: RestGateway, client: GatewayClient
) -> None:
    _append(log, clock, 6)
    run = Outbox(log, owner="w1").run(client)
    assert (run.delivered, run.pending, run.error) == (3, 0, None)
    published = _published(gateway)
    assert [p["size"] for p in published] == [2, 4, 6]
    assert published[0]["previous"] is None
    assert published[1]["previous"] == {
        "size": 2,
        "head": published[0]["head"],
        "signature": published[0]["signature"],
    }
    key = log.trusted_public_key()
    for payload in published:
        fields = {k: v for k, v in payload.items() if k != "previous"}
        assert signature_valid(Checkpoint.from_dict(fields), key)
    assert published[-1]["head"] == log.head().hash
    assert Outbox(log, owner="w1").run(client).delivered == 0, "nothing is sent twice"


def test_an_outage_holds_checkpoints_in_place_and_they_follow_in_order_after_it(
    log: AuditLog, clock: ManualClock, gateway: RestGateway, client: GatewayClient
) -> None:
    _append(log, clock, 2)
    Outbox(log, owner="w1").run(client)
    _append(log, clock, 6)
    for _ in range(2):  # two runs of an outage (fewer failures than open the breaker)
        gateway.fail["publish_event"] = [503, 503]
        run = Outbox(log, owner="w1").run(client)
        assert run.delivered == 0 and run.pending == 3 and run.error is not None
    gateway.fail.clear()
    run = Outbox(log, owner="w2").run(client)
    assert (run.delivered, run.pending) == (3, 0)
    assert [p["size"] for p in _published(gateway)] == [2, 4, 6, 8], "none lost, none twice"


def test_a_lost_answer_is_found_on_the_bus_and_not_published_again(
    log: AuditLog, clock: ManualClock, gateway: RestGateway, client: GatewayClient
) -> None:
    _append(log, clock, 4)
    # The event is stored, then the connection drops: twice, so the client gives up.
    gateway.lose_answer["publish_event"] = 2
    first = Outbox(log, owner="w1").run(client)
    assert first.delivered == 0 and first.error is not None
    assert [p["size"] for p in _published(gateway)] == [2, 2], "the client's own retry"
    run = Outbox(log, owner="w1").run(client)
    assert (run.delivered, run.skipped, run.pending) == (1, 1, 0)
    assert [p["size"] for p in _published(gateway)] == [2, 2, 4], "size 2 not sent a third time"
    with log.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT seq, status, audit_id FROM audit_mirror_receipts ORDER BY seq")
        ).all()
    assert [(r.seq, r.status) for r in rows] == [(2, "skipped"), (4, "delivered")]
    assert rows[0].audit_id == "1", "the receipt names the bus event that carries it"


def test_a_refused_checkpoint_is_recorded_and_does_not_stop_the_walk(
    log: AuditLog, clock: ManualClock, gateway: RestGateway, client: GatewayClient
) -> None:
    _append(log, clock, 4)
    gateway.fail["publish_event"] = [400]
    run = Outbox(log, owner="w1").run(client)
    assert (run.delivered, run.refused, run.pending) == (1, 1, 0)
    assert [p["size"] for p in _published(gateway)] == [4]


def test_one_sender_at_a_time_and_a_lapsed_lease_is_taken_over(
    log: AuditLog, clock: ManualClock, gateway: RestGateway, client: GatewayClient
) -> None:
    _append(log, clock, 2)
    holder = Outbox(log, owner="w1", lease_s=60)
    assert holder.acquire()
    assert Outbox(log, owner="w2").run(client).busy
    clock.advance(61)
    assert Outbox(log, owner="w2").run(client).delivered == 1
    assert len(gateway.calls("publish_event")) == 1
