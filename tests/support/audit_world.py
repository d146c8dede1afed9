"""An audit log the way a deployment runs it (signing key made once, public key pinned, a
witness directory outside the data directory), and what an attacker who owns the database
does to it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from fleet.audit.events import build_event
from fleet.audit.log import AuditFiles, AuditLog
from fleet.audit.signing import init_signing_key
from fleet.clock import ManualClock
from fleet.storage.db import create_db_engine, migrate


@dataclass
class AuditWorld:
    log: AuditLog
    clock: ManualClock
    data_dir: Path
    witness_dir: Path

    def append(self, n: int, *, start: int = 0) -> None:
        """n entries, ten per batch."""
        for first in range(start, start + n, 10):
            self.log.append(
                [
                    build_event(
                        actor="fleet-commander/test",
                        action="restart_agent",
                        subject=f"seg0-{i:04d}-aaaaaaaa",
                        details={"i": i},
                        clock=self.clock,
                    )
                    for i in range(first, min(first + 10, start + n))
                ]
            )

    def sql(self, *statements: str, **params: Any) -> None:
        """As the database's owner: the append-only triggers are dropped first."""
        with self.log.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                for table in ("audit_entries", "audit_checkpoints", "audit_archives"):
                    conn.execute(sa.text(f"ALTER TABLE {table} DISABLE TRIGGER USER"))
            else:
                for trigger in (
                    "audit_entries_no_update",
                    "audit_entries_no_delete",
                    "audit_checkpoints_no_delete",
                    "audit_archives_at_checkpoint",
                ):
                    conn.execute(sa.text(f"DROP TRIGGER IF EXISTS {trigger}"))
            for statement in statements:
                conn.execute(sa.text(statement), params)

    def keep_checkpoint_file_lines(self, up_to_size: int) -> None:
        """Rewrite checkpoints.jsonl (it sits in the data directory) without the later ones."""
        import orjson

        path = self.log.files.checkpoints
        kept = [
            line
            for line in path.read_bytes().splitlines()
            if line.strip() and orjson.loads(line)["size"] <= up_to_size
        ]
        path.write_bytes(b"".join(line + b"\n" for line in kept))


@contextmanager
def audit_world(
    tmp_path: Path, *, checkpoint_every: int = 20, database_url: str | None = None
) -> Iterator[AuditWorld]:
    """database_url: default a SQLite file in the data directory."""
    data_dir, witness_dir = tmp_path / "data", tmp_path / "witness"
    data_dir.mkdir()
    engine = create_db_engine(database_url or f"sqlite:///{data_dir / 'fleet.db'}")
    migrate(engine)
    files = AuditFiles(
        data_dir / "audit/signing-key.pem",
        data_dir / "audit/checkpoints.jsonl",
        data_dir / "audit/archive",
        data_dir / "reports",
    )
    clock = ManualClock(datetime(2026, 1, 1, tzinfo=UTC))
    pinned = init_signing_key(files.signing_key).public_hex
    log = AuditLog(
        engine,
        files,
        checkpoint_every=checkpoint_every,
        clock=clock,
        public_key=pinned,
        witness_dir=witness_dir,
    )
    try:
        yield AuditWorld(log, clock, data_dir, witness_dir)
    finally:
        engine.dispose()
