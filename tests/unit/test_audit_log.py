"""The chain on a throwaway SQLite file: appending, checkpoints, export, retention."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
import rfc8785
import sqlalchemy as sa

from fleet.audit.canonical import GENESIS, entry_hash
from fleet.audit.events import AuditEvent, build_event
from fleet.audit.export import export_log, verify_export
from fleet.audit.log import AuditFiles, AuditLog
from fleet.audit.retention import RetentionRefused, archive_expired
from fleet.audit.signing import Checkpoint, load_signer, read_checkpoint_file, signature_valid
from fleet.audit.verify import verify_log
from fleet.clock import ManualClock
from fleet.storage.db import create_db_engine, migrate
from tests.support.trust import pinned_key


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2026, 1, 1, tzinfo=UTC))


@pytest.fixture
def log(tmp_path: Path, clock: ManualClock) -> Iterator[AuditLog]:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    migrate(engine)
    files = AuditFiles(
        tmp_path / "audit/key.pem",
        tmp_path / "audit/checkpoints.jsonl",
        tmp_path / "archive",
        tmp_path / "reports",
    )
    yield AuditLog(
        engine,
        files,
        checkpoint_every=10,
        clock=clock,
        public_key=pinned_key(files.signing_key),
    )
    engine.dispose()


def events(n: int, clock: ManualClock, **extra: object) -> list[AuditEvent]:
    return [
        build_event(
            actor="test",
            action="restart_agent",
            subject=f"seg0-{i:04d}-00000000",
            details={"i": i, **extra},
            clock=clock,
        )
        for i in range(n)
    ]


def test_entries_chain_from_the_genesis_and_each_hash_covers_its_canonical_bytes(
    log: AuditLog, clock: ManualClock
) -> None:
    result = log.append(events(3, clock))
    assert (result.appended, result.head.seq) == (3, 3)
    with log.engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT seq, prev_hash, hash, body FROM audit_entries ORDER BY seq")
        ).all()
    assert rows[0].prev_hash == GENESIS
    for before, row in zip(rows, rows[1:], strict=False):
        assert row.prev_hash == before.hash
    for row in rows:
        body = orjson.loads(row.body)
        assert entry_hash(rfc8785.dumps(body)) == row.hash, (
            "anyone can recompute it from the parsed entry"
        )
        assert (body["seq"], body["prev"]) == (row.seq, row.prev_hash)


def test_appending_is_idempotent_on_event_ids(log: AuditLog, clock: ManualClock) -> None:
    batch = events(5, clock)
    log.append(batch)
    again = log.append(batch[2:] + events(1, clock))  # a redelivered message, plus one new event
    assert (again.appended, again.skipped) == (1, 3)
    assert log.count() == 6 and verify_log(log).ok


def test_checkpoints_every_n_entries_signed_and_also_kept_in_a_file(
    log: AuditLog, clock: ManualClock
) -> None:
    for _ in range(5):
        log.append(events(7, clock))  # 35 entries: crossings at 10, 20, 30
    checkpoints = log.checkpoints()
    assert [c.size for c in checkpoints] == [14, 21, 35]
    assert [c.size for c in read_checkpoint_file(log.files.checkpoints)] == [14, 21, 35]
    public = load_signer(log.files.signing_key).public_key
    assert all(signature_valid(c, public) for c in checkpoints)
    forged = Checkpoint(**{**checkpoints[0].to_dict(), "head": "0" * 64})
    assert not signature_valid(forged, public)
    assert log.checkpoint() is None, "the head is already signed"
    log.append(events(1, clock))
    assert log.checkpoint().size == 36  # type: ignore[union-attr]
    report = verify_log(log)
    assert report.ok and report.signed_up_to == 36 and report.unsigned == 0


def test_concurrent_writers_never_fork_the_chain(log: AuditLog, clock: ManualClock) -> None:
    writers = [
        threading.Thread(target=lambda: [log.append(events(5, clock)) for _ in range(8)])
        for _ in range(4)
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    report = verify_log(log)
    assert report.ok, report.summary()
    assert report.entries == 4 * 8 * 5 == log.head().seq


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_an_export_verifies_alone_and_shows_tampering(
    log: AuditLog, clock: ManualClock, tmp_path: Path, fmt: str
) -> None:
    log.append(events(15, clock))
    clock.advance(86400)
    log.append(events(8, clock, late=True))
    path = tmp_path / f"export.{fmt}"
    with path.open("wb") as out:
        summary = export_log(log, out, fmt=fmt, since=clock.now() - timedelta(hours=1))  # type: ignore[arg-type]
    assert (summary.first_seq, summary.last_seq, summary.entries) == (16, 23, 8)
    pinned = load_signer(log.files.signing_key).public_hex
    check = verify_export(path, pinned)
    assert check.ok and check.entries == 8 and check.checkpoints >= 1, check.problems
    assert not check.warnings, "the export ends on a checkpoint: every entry is signed"

    text = path.read_text()
    tampered = tmp_path / f"tampered.{fmt}"
    quote = '""' if fmt == "csv" else '"'
    # The first occurrence: in CSV the readable details column, in JSON lines the hashed body.
    tampered.write_text(text.replace(f"{quote}late{quote}:true", f"{quote}late{quote}:false", 1))
    assert tampered.read_text() != text
    assert not verify_export(tampered, pinned).ok
    everywhere = tmp_path / f"everywhere.{fmt}"
    everywhere.write_text(text.replace(f"{quote}late{quote}:true", f"{quote}late{quote}:false"))
    assert not verify_export(everywhere, pinned).ok

    other_key = pinned_key(tmp_path / "other.pem")
    assert not verify_export(path, other_key).ok, "a different key does not vouch for it"


def test_retention_archives_old_entries_with_their_checkpoint_and_the_rest_still_verifies(
    log: AuditLog, clock: ManualClock
) -> None:
    for _ in range(200):
        log.append(events(2, clock))
        clock.advance(86400)
    result = archive_expired(log, retention_days=183, respect_mirror=False)
    assert result is not None
    # Entries of the first 17 days (200 - 183) left the database, in order, with a checkpoint at the
    # cut.
    assert (result.first_seq, result.last_seq) == (1, 34)
    assert result.checkpoint.size == 34
    archived = verify_export(result.file, load_signer(log.files.signing_key).public_hex)
    assert archived.ok and (archived.first_seq, archived.last_seq) == (1, 34)
    report = verify_log(log)
    assert report.ok, report.summary()
    assert (report.first_seq, report.last_seq) == (35, 400)
    assert archive_expired(log, retention_days=183, respect_mirror=False) is None
    log.append(events(1, clock))
    assert verify_log(log).ok


def test_retention_keeps_what_the_gateway_has_not_received_yet(
    log: AuditLog, clock: ManualClock
) -> None:
    log.append(events(4, clock))
    clock.advance(400 * 86400)
    assert archive_expired(log, retention_days=183, respect_mirror=True) is None


def test_retention_refuses_to_sign_over_a_damaged_log(log: AuditLog, clock: ManualClock) -> None:
    log.append(events(4, clock))
    with log.engine.begin() as conn:
        conn.execute(sa.text("DROP TRIGGER audit_entries_no_update"))
        conn.execute(sa.text("UPDATE audit_entries SET actor = 'someone else' WHERE seq = 2"))
    clock.advance(400 * 86400)
    with pytest.raises(RetentionRefused, match="entry 2"):
        archive_expired(log, retention_days=183, respect_mirror=False)


def test_sqlite_triggers_refuse_edits_and_deletes_outside_retention(
    log: AuditLog, clock: ManualClock
) -> None:
    log.append(events(2, clock))
    log.checkpoint()
    for statement in (
        "UPDATE audit_entries SET actor = 'x'",
        "DELETE FROM audit_entries",
        "DELETE FROM audit_checkpoints",
    ):
        with pytest.raises(sa.exc.IntegrityError, match="append-only"), log.engine.begin() as conn:
            conn.execute(sa.text(statement))
    assert log.count() == 2


def test_export_to_a_stream_is_the_stored_bytes(log: AuditLog, clock: ManualClock) -> None:
    log.append(events(2, clock))
    out = io.BytesIO()
    export_log(log, out)
    lines = out.getvalue().splitlines()
    header = orjson.loads(lines[0])
    assert header["type"] == "header" and header["public_key"] == log.signer.public_hex
    with log.engine.connect() as conn:
        bodies = (
            conn.execute(sa.text("SELECT body FROM audit_entries ORDER BY seq")).scalars().all()
        )
    for line, body in zip(lines[1:3], bodies, strict=True):
        assert line.endswith(body.encode() + b"}")
