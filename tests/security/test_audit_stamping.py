"""An entry's time is stamped by the audit writer; what the producer claimed is kept apart.

On main any producer on the broker put the time it liked on an entry.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import sqlalchemy as sa

from fleet.audit.events import build_event, format_time
from fleet.audit.verify import verify_log
from tests.support.audit_world import audit_world


def test_the_writer_stamps_the_time_and_keeps_the_claim_apart(tmp_path: Path) -> None:
    with audit_world(tmp_path) as world:
        backdated = datetime(2001, 1, 1, tzinfo=UTC)
        world.clock.advance(3600)
        world.log.append(
            [
                build_event(
                    actor="someone-on-the-broker",
                    action="approve",
                    subject="agent-1",
                    time=backdated,
                )
            ]
        )
        with world.log.engine.connect() as conn:
            stored_time, body = conn.execute(
                sa.text("SELECT time, body FROM audit_entries WHERE seq = 1")
            ).one()
        entry = orjson.loads(body)["entry"]
        stamped = format_time(world.clock.now())
        assert stored_time == entry["time"] == stamped
        assert entry["claimed_time"] == format_time(backdated)
        assert world.clock.now() - backdated > timedelta(days=9000)
        assert verify_log(world.log).ok
