"""A forged archive anchor: the attack that let `DELETE FROM audit_entries` through.

An ``audit_archives`` row is where the retained chain starts, and the SQLite
trigger lets entries it covers be deleted. On main, inserting one (any
``last_seq``, any head), deleting the entries and appending new ones verified
"intact". Now the database refuses such a row, and when its owner gets past
that, verify names the forged anchor: it must sit at a checkpoint signed with
the pinned key that carries its head, and its archive file must have the
recorded digest and verify up to that head.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import sqlalchemy as sa

from fleet.audit.export import export_log
from fleet.audit.verify import ProblemKind, verify_log
from tests.support.audit_world import AuditWorld, audit_world
from tests.support.databases import postgres_available, postgres_database

ARCHIVE_ROW = (
    "INSERT INTO audit_archives (chain, last_seq, first_seq, head, entries, file, file_sha256,"
    " archived_at) VALUES ('main', :last, 1, :head, :last, :file, :digest,"
    " '2026-01-01T00:00:00.000000Z')"
)


@pytest.fixture(params=["sqlite", "postgresql"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AuditWorld]:
    with ExitStack() as stack:
        url = None
        if request.param == "postgresql":
            if not postgres_available():
                pytest.skip("no PostgreSQL server reachable on 127.0.0.1:5432")
            url = stack.enter_context(postgres_database())
        w = stack.enter_context(audit_world(tmp_path, database_url=url))
        w.append(60)  # signed checkpoints at 20, 40 and 60
        assert verify_log(w.log).ok
        yield w


def _hash_of(world: AuditWorld, seq: int) -> str:
    with world.log.engine.connect() as conn:
        return str(
            conn.execute(
                sa.text("SELECT hash FROM audit_entries WHERE seq = :s"), {"s": seq}
            ).scalar_one()
        )


def test_the_database_refuses_an_archive_row_no_checkpoint_vouches_for(world: AuditWorld) -> None:
    with pytest.raises(sa.exc.DBAPIError, match="no checkpoint at this last_seq"):
        with world.log.engine.begin() as conn:
            conn.execute(
                sa.text(ARCHIVE_ROW),
                {"last": 50, "head": _hash_of(world, 50), "file": "/nowhere", "digest": "0" * 64},
            )
    with pytest.raises(sa.exc.DBAPIError, match="append-only"):
        with world.log.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SET LOCAL fleet.audit_retention = 'on'"))
            conn.execute(sa.text("DELETE FROM audit_entries WHERE seq <= 50"))
    assert world.log.count() == 60


def test_forged_anchor_between_checkpoints_then_delete_is_named(world: AuditWorld) -> None:
    # The head is the real hash of entry 50, so entry 51 links to the anchor: only the
    # anchor itself can give the forgery away.
    world.sql(
        ARCHIVE_ROW,
        "DELETE FROM audit_entries WHERE seq <= 50",
        last=50,
        head=_hash_of(world, 50),
        file="/nowhere",
        digest="0" * 64,
    )
    world.append(5, start=60)  # the system goes on appending
    report = verify_log(world.log)
    assert report.problem is not None, report.summary()
    assert (report.problem.kind, report.problem.seq) == (ProblemKind.ANCHOR, 1)
    assert "forged archive anchor" in report.problem.message


def test_forged_anchor_at_a_real_checkpoint_without_its_archive_file_is_named(
    world: AuditWorld,
) -> None:
    world.sql(
        ARCHIVE_ROW,
        "DELETE FROM audit_entries WHERE seq <= 40",
        last=40,
        head=_hash_of(world, 40),
        file=str(world.data_dir / "audit/archive/never-written.jsonl"),
        digest="0" * 64,
    )
    report = verify_log(world.log)
    assert report.problem is not None, report.summary()
    assert report.problem.kind == ProblemKind.ANCHOR
    assert "is missing" in report.problem.message


def test_forged_anchor_with_a_doctored_archive_file_is_named(world: AuditWorld) -> None:
    """The owner writes an archive file, edits an entry in it, and records its real digest."""
    doctored = world.data_dir / "audit/archive/main-000000000001-000000000040.jsonl"
    doctored.parent.mkdir(parents=True, exist_ok=True)
    with doctored.open("wb") as out:
        export_log(world.log, out, first_seq=1, last_seq=40, sign_head=False)
    doctored.write_text(doctored.read_text().replace('"i":7}', '"i":7000}', 1))
    world.sql(
        ARCHIVE_ROW,
        "DELETE FROM audit_entries WHERE seq <= 40",
        last=40,
        head=_hash_of(world, 40),
        file=str(doctored),
        digest=hashlib.sha256(doctored.read_bytes()).hexdigest(),
    )
    report = verify_log(world.log)
    assert report.problem is not None, report.summary()
    assert report.problem.kind == ProblemKind.ANCHOR
    assert "does not verify" in report.problem.message


def test_a_genuine_archive_still_verifies(world: AuditWorld) -> None:
    from fleet.audit.retention import archive_expired

    world.clock.advance(200 * 86400)
    world.append(1, start=60)
    result = archive_expired(world.log, retention_days=183, respect_mirror=False)
    assert result is not None and result.last_seq == 60
    report = verify_log(world.log)
    assert report.ok, report.summary()
