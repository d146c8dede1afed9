"""Truncation and rollback, named against a witness the database's owner cannot reach.

On main, deleting the entries after the last checkpoint, or rolling the log back
and removing the later checkpoints from the database and ``checkpoints.jsonl``,
verified "intact": everything verify looked at sat in the database and the data
directory. The witness directory (``audit.witness_dir``) holds every signed
checkpoint and a signed head after every append.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from fleet.audit.verify import ProblemKind, verify_log
from tests.support.audit_world import AuditWorld, audit_world


@pytest.fixture
def world(tmp_path: Path) -> Iterator[AuditWorld]:
    with audit_world(tmp_path) as w:
        yield w


def test_tail_truncation_after_the_last_checkpoint_is_named(world: AuditWorld) -> None:
    world.append(65)  # checkpoints at 20, 40, 60; 61..65 witnessed as heads only
    assert verify_log(world.log).ok
    world.sql("DELETE FROM audit_entries WHERE seq > 60")
    report = verify_log(world.log)
    assert report.problem is not None, report.summary()
    assert (report.problem.kind, report.problem.seq) == (ProblemKind.TRUNCATED, 61)
    assert "entries 61..65 missing" in report.problem.message


def test_rollback_of_log_checkpoints_and_checkpoint_file_is_named(world: AuditWorld) -> None:
    world.append(60)
    world.sql(
        "DELETE FROM audit_entries WHERE seq > 40", "DELETE FROM audit_checkpoints WHERE size > 40"
    )
    world.keep_checkpoint_file_lines(up_to_size=40)
    report = verify_log(world.log)
    assert report.problem is not None, report.summary()
    assert (report.problem.kind, report.problem.seq) == (ProblemKind.ROLLED_BACK, 41)
    assert "rolled back" in report.problem.message
    assert "checkpoint #3" in report.problem.message


def test_rollback_then_new_entries_is_still_named(world: AuditWorld) -> None:
    world.append(60)
    world.sql(
        "DELETE FROM audit_entries WHERE seq > 40", "DELETE FROM audit_checkpoints WHERE size > 40"
    )
    world.keep_checkpoint_file_lines(up_to_size=40)
    world.append(10, start=1000)  # the system goes on from the rolled-back head
    report = verify_log(world.log)
    assert report.problem is not None, report.summary()
    assert report.problem.kind == ProblemKind.ROLLED_BACK


def test_witness_lines_not_signed_with_the_pinned_key_are_ignored(world: AuditWorld) -> None:
    """Whoever can write to the witness still cannot make it vouch for, or accuse, anything."""
    world.append(30)
    forged = {"type": "head", "chain": "main", "size": 900, "head": "ab" * 32}
    forged |= {"signed_at": "2026-01-01T00:00:00.000000Z", "key_id": "0" * 16}
    witness_file = world.witness_dir / "main.jsonl"
    with witness_file.open("ab") as out:
        out.write(orjson.dumps({**forged, "signature": "00" * 64}) + b"\n")
    report = verify_log(world.log)
    assert report.ok, report.summary()
    assert any("ignored" in w for w in report.warnings)


def test_the_witness_is_outside_the_data_directory(tmp_path: Path) -> None:
    from config.settings import ConfigError, load_settings

    with pytest.raises(ConfigError, match="must be outside data_dir"):
        load_settings(data_dir=tmp_path, audit={"witness_dir": tmp_path / "witness"})


def test_a_checkpoint_removed_from_the_database_and_the_file_is_named(world: AuditWorld) -> None:
    """Checkpoints are chained by counter: one gone leaves a gap, witness or not."""
    world.append(60)
    world.log.witness = None
    world.sql("DELETE FROM audit_checkpoints WHERE size = 40")
    lines = world.log.files.checkpoints.read_bytes().splitlines()
    world.log.files.checkpoints.write_bytes(
        b"".join(line + b"\n" for line in lines if orjson.loads(line)["size"] != 40)
    )
    report = verify_log(world.log)
    assert report.problem is not None, report.summary()
    assert report.problem.kind == ProblemKind.CHECKPOINT
    assert "checkpoint #2 is missing" in report.problem.message
