"""Tampering with the log directly in the database, on SQLite and PostgreSQL.

Verify names the first bad entry.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy import Connection

from fleet.audit.canonical import canonical, entry_hash, envelope
from fleet.audit.events import build_event
from fleet.audit.log import AuditFiles, AuditLog
from fleet.audit.retention import archive_expired
from fleet.audit.verify import ProblemKind, verify_log
from fleet.clock import ManualClock
from fleet.storage.db import create_db_engine, migrate
from tests.support.databases import postgres_available, postgres_database, sqlite_database
from tests.support.trust import pinned_key

pytestmark = pytest.mark.integration

ENTRIES = 60  # checkpoints at 20, 40 and 60


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        with sqlite_database(tmp_path) as url:
            yield url
    else:
        if not postgres_available():
            pytest.skip("no PostgreSQL server reachable on 127.0.0.1:5432")
        with postgres_database() as url:
            yield url


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2026, 1, 1, tzinfo=UTC))


@pytest.fixture
def log(database_url: str, tmp_path: Path, clock: ManualClock) -> Iterator[AuditLog]:
    engine = create_db_engine(database_url)
    migrate(engine)
    files = AuditFiles(
        tmp_path / "key.pem",
        tmp_path / "checkpoints.jsonl",
        tmp_path / "archive",
        tmp_path / "reports",
    )
    audit_log = AuditLog(
        engine,
        files,
        checkpoint_every=20,
        clock=clock,
        public_key=pinned_key(files.signing_key),
    )
    for start in range(0, ENTRIES, 10):
        audit_log.append(
            [
                build_event(
                    actor="fleet-commander/test",
                    action="restart_agent",
                    subject=f"seg0-{i:04d}-aaaaaaaa",
                    details={"i": i, "amount": f"{i}.00"},
                    clock=clock,
                )
                for i in range(start + 1, start + 11)
            ]
        )
    assert verify_log(audit_log).ok
    yield audit_log
    engine.dispose()


# ---------------------------------------------- an attacker with write access to the database


def _unguard(conn: Connection) -> None:
    """What an attacker does first: get the append-only triggers out of the way."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("ALTER TABLE audit_entries DISABLE TRIGGER USER"))
        conn.execute(sa.text("ALTER TABLE audit_checkpoints DISABLE TRIGGER USER"))
    else:
        for trigger in (
            "audit_entries_no_update",
            "audit_entries_no_delete",
            "audit_checkpoints_no_delete",
        ):
            conn.execute(sa.text(f"DROP TRIGGER IF EXISTS {trigger}"))


def tamper(log: AuditLog, *statements: str, **params: Any) -> None:
    with log.engine.begin() as conn:
        _unguard(conn)
        for statement in statements:
            conn.execute(sa.text(statement), params)


def _row(conn: Connection, seq: int) -> Any:
    return (
        conn.execute(sa.text("SELECT * FROM audit_entries WHERE seq = :s"), {"s": seq})
        .mappings()
        .one()
    )


def _forge(chain: str, entry: dict[str, Any], prev: str, seq: int) -> tuple[str, str]:
    body = envelope(canonical(chain), canonical(entry), prev, seq)
    return body.decode(), entry_hash(body)


def _put(conn: Connection, seq: int, body: str, digest: str, prev: str) -> None:
    entry = orjson.loads(body)["entry"]
    conn.execute(
        sa.text(
            "INSERT INTO audit_entries (chain, seq, event_id, time, actor, action, subject,"
            " fleet, article, approval, approval_id, trace_id, span_id, prev_hash, hash, body)"
            " VALUES ('main', :seq, :event_id, :time, :actor, :action, :subject, :fleet,"
            " :article, :approval, :approval_id, :trace_id, :span_id, :prev, :hash, :body)"
        ),
        {**entry, "seq": seq, "prev": prev, "hash": digest, "body": body},
    )


def _shift(conn: Connection, from_seq: int, by: int) -> None:
    """Renumber entries from from_seq on, in two steps so the primary key never collides."""
    conn.execute(sa.text("UPDATE audit_entries SET seq = -seq WHERE seq >= :s"), {"s": from_seq})
    conn.execute(sa.text("UPDATE audit_entries SET seq = -seq + :by WHERE seq < 0"), {"by": by})


def edit_body(log: AuditLog) -> None:
    tamper(
        log,
        'UPDATE audit_entries SET body = replace(body, \'"amount":"31.00"\','
        ' \'"amount":"3100.00"\') WHERE seq = 31',
    )


def edit_column(log: AuditLog) -> None:
    tamper(log, "UPDATE audit_entries SET actor = 'someone-else' WHERE seq = 31")


def edit_and_rehash(log: AuditLog) -> None:
    with log.engine.begin() as conn:
        _unguard(conn)
        row = _row(conn, 31)
        obj = orjson.loads(row["body"])
        obj["entry"]["details"]["amount"] = "3100.00"
        body, digest = _forge("main", obj["entry"], row["prev_hash"], 31)
        conn.execute(
            sa.text("UPDATE audit_entries SET body = :b, hash = :h WHERE seq = 31"),
            {"b": body, "h": digest},
        )


def delete_one(log: AuditLog) -> None:
    tamper(log, "DELETE FROM audit_entries WHERE seq = 31")


def delete_and_renumber(log: AuditLog) -> None:
    with log.engine.begin() as conn:
        _unguard(conn)
        conn.execute(sa.text("DELETE FROM audit_entries WHERE seq = 31"))
        _shift(conn, 32, -1)


def insert_forged(log: AuditLog) -> None:
    """A well-formed entry chained to its predecessor, the rest renumbered to make room."""
    with log.engine.begin() as conn:
        _unguard(conn)
        before = _row(conn, 30)
        _shift(conn, 31, +1)
        entry = {
            **orjson.loads(before["body"])["entry"],
            "event_id": "f" * 32,
            "action": "transfer_funds",
            "details": {"amount": "9999.00"},
        }
        body, digest = _forge("main", entry, before["hash"], 31)
        _put(conn, 31, body, digest, before["hash"])


def insert_copy_at_end(log: AuditLog) -> None:
    with log.engine.begin() as conn:
        _unguard(conn)
        row = dict(_row(conn, 5))
        conn.execute(
            sa.text(
                "INSERT INTO audit_entries SELECT chain, :seq, :eid, time, actor, action,"
                " subject, fleet, article, approval, approval_id, trace_id, span_id,"
                " prev_hash, hash, body FROM audit_entries WHERE seq = 5"
            ),
            {"seq": ENTRIES + 1, "eid": "c" * 32},
        )
        assert row["seq"] == 5


def swap(log: AuditLog) -> None:
    tamper(
        log,
        "UPDATE audit_entries SET seq = -1 WHERE seq = 31",
        "UPDATE audit_entries SET seq = 31 WHERE seq = 32",
        "UPDATE audit_entries SET seq = 32 WHERE seq = -1",
    )


def truncate_tail(log: AuditLog) -> None:
    tamper(log, "DELETE FROM audit_entries WHERE seq >= 55")


def rewrite_suffix(log: AuditLog) -> None:
    """The strongest attacker without the key.

    Re-chain everything from 31 and drop the checkpoints it breaks.
    """
    with log.engine.begin() as conn:
        _unguard(conn)
        prev = _row(conn, 30)["hash"]
        for seq in range(31, ENTRIES + 1):
            row = _row(conn, seq)
            entry = orjson.loads(row["body"])["entry"]
            if seq == 31:
                entry["details"]["amount"] = "3100.00"
            body, digest = _forge("main", entry, prev, seq)
            conn.execute(
                sa.text(
                    "UPDATE audit_entries SET body = :b, hash = :h, prev_hash = :p WHERE seq = :s"
                ),
                {"b": body, "h": digest, "p": prev, "s": seq},
            )
            prev = digest
        conn.execute(sa.text("DELETE FROM audit_checkpoints WHERE size > 30"))


def forge_checkpoint(log: AuditLog) -> None:
    with log.engine.begin() as conn:
        _unguard(conn)
        head = _row(conn, 50)["hash"]
        conn.execute(
            sa.text(
                "INSERT INTO audit_checkpoints (chain, size, head, signed_at, key_id, signature)"
                " VALUES ('main', 50, :h, '2026-01-01T00:00:00.000000Z', :k, :sig)"
            ),
            {"h": head, "k": log.signer.key_id, "sig": "00" * 64},
        )


CASES: list[tuple[Callable[[AuditLog], None], ProblemKind, int, str]] = [
    (edit_body, ProblemKind.EDITED, 31, "entry 31 was edited"),
    (edit_column, ProblemKind.EDITED, 31, "entry 31 was edited"),
    (edit_and_rehash, ProblemKind.EDITED, 31, "entry 31 was edited and re-hashed"),
    (delete_one, ProblemKind.DELETED, 31, "entry 31 deleted"),
    (delete_and_renumber, ProblemKind.DELETED, 31, "entry 31 deleted"),
    (insert_forged, ProblemKind.INSERTED, 31, "entry 31 was inserted"),
    (insert_copy_at_end, ProblemKind.INSERTED, ENTRIES + 1, "copy of entry 5"),
    (swap, ProblemKind.REORDERED, 31, "entries reordered"),
    (truncate_tail, ProblemKind.DELETED, 55, "entries 55..60 deleted"),
    (rewrite_suffix, ProblemKind.REWRITTEN, 21, "entries 21..40 were rewritten"),
    (forge_checkpoint, ProblemKind.CHECKPOINT, 50, "no valid signature"),
]


@pytest.mark.parametrize(
    ("attack", "kind", "seq", "words"), CASES, ids=[c[0].__name__ for c in CASES]
)
def test_verify_names_the_first_bad_entry(
    log: AuditLog, attack: Callable[[AuditLog], None], kind: ProblemKind, seq: int, words: str
) -> None:
    attack(log)
    report = verify_log(log)
    assert not report.ok
    assert report.problem is not None
    assert (report.problem.kind, report.problem.seq) == (kind, seq), report.problem.message
    assert words in report.problem.message


def test_two_edits_report_the_earlier_one(log: AuditLog) -> None:
    tamper(log, "UPDATE audit_entries SET actor = 'x' WHERE seq IN (12, 44)")
    report = verify_log(log)
    assert report.problem is not None and report.problem.seq == 12


def test_concurrent_writers_keep_one_unforked_chain(log: AuditLog, clock: ManualClock) -> None:
    def writer(n: int) -> None:
        for batch in range(10):
            log.append(
                [
                    build_event(
                        actor=f"w{n}",
                        action="restart_agent",
                        subject=f"seg{n}-{batch:04d}-aaaaaaaa",
                        details={"k": k},
                        clock=clock,
                    )
                    for k in range(7)
                ]
            )

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report = verify_log(log)
    assert report.ok, report.summary()
    assert report.last_seq == ENTRIES + 4 * 10 * 7 == report.entries
    with log.engine.connect() as conn:
        by_writer = conn.execute(
            sa.text(
                "SELECT actor, min(seq), max(seq) FROM audit_entries"
                " WHERE actor LIKE 'w%' GROUP BY actor"
            )
        ).all()
    assert len(by_writer) == 4


def test_retention_deletes_through_its_own_path_and_the_rest_verifies(
    log: AuditLog, clock: ManualClock
) -> None:
    clock.advance(200 * 86400)
    log.append(
        [build_event(actor="t", action="restart_agent", subject="seg9-0001-aaaaaaaa", clock=clock)]
    )
    result = archive_expired(log, retention_days=183, respect_mirror=False)
    assert result is not None and (result.first_seq, result.last_seq) == (1, ENTRIES)
    report = verify_log(log)
    assert report.ok and (report.first_seq, report.last_seq) == (ENTRIES + 1, ENTRIES + 1), (
        report.summary()
    )


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_postgresql_trigger_refuses_update_delete_and_truncate(log: AuditLog) -> None:
    for statement in (
        "UPDATE audit_entries SET actor = 'x' WHERE seq = 3",
        "DELETE FROM audit_entries WHERE seq = 3",
        "TRUNCATE audit_entries",
        "UPDATE audit_checkpoints SET head = 'x'",
        "DELETE FROM audit_checkpoints",
    ):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), log.engine.begin() as conn:
            conn.execute(sa.text(statement))
    # The retention switch alone is not enough: the rows must be covered by an archive record.
    with pytest.raises(sa.exc.DBAPIError, match="append-only"), log.engine.begin() as conn:
        conn.execute(sa.text("SET LOCAL fleet.audit_retention = 'on'"))
        conn.execute(sa.text("DELETE FROM audit_entries WHERE seq = 1"))
    assert verify_log(log).ok and log.count() == ENTRIES
