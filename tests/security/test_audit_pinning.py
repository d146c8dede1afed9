"""Verify trusts only the pinned public key; the signing key is made once, never by a worker.

On main, verify took its public key from the signing key file beside the
SQLite file: whoever could replace that file and re-sign the checkpoints made a
rewritten history verify.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from cli.main import main
from fleet.audit import signing
from fleet.audit.canonical import canonical, entry_hash, envelope
from fleet.audit.events import build_event
from fleet.audit.log import AuditFiles, AuditLog
from fleet.audit.models import AuditCheckpoint
from fleet.audit.signing import MissingSigningKey, UnpinnedKey, init_signing_key, load_signer
from fleet.audit.verify import ProblemKind, verify_log
from fleet.storage.db import create_db_engine, migrate
from tests.support.audit_world import AuditWorld, audit_world


@pytest.fixture
def world(tmp_path: Path) -> Iterator[AuditWorld]:
    with audit_world(tmp_path) as w:
        w.append(60)
        yield w


def test_verify_refuses_without_a_pinned_key(world: AuditWorld) -> None:
    world.log.public_key = None
    with pytest.raises(UnpinnedKey, match="FLEET_AUDIT__PUBLIC_KEY"):
        verify_log(world.log)


def test_fleet_audit_verify_refuses_an_unpinned_key_and_says_how_to_pin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEET_ENVIRONMENT", "staging")  # nothing is pinned for it
    _real_secrets(monkeypatch)
    monkeypatch.setenv("FLEET_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("FLEET_DATABASE_URL", f"sqlite:///{tmp_path / 'fleet.db'}")
    result = CliRunner().invoke(main, ["audit", "verify"])
    assert result.exit_code != 0
    assert "no audit public key is pinned" in result.output
    assert "FLEET_AUDIT__PUBLIC_KEY" in result.output


def test_a_substituted_signing_key_and_re_signed_checkpoints_are_refused(
    world: AuditWorld,
) -> None:
    """The owner rewrites entries 31.., swaps in a key of their own and re-signs every
    checkpoint in the database and the checkpoint file: a consistent history, for any key but
    the pinned one."""
    log = world.log
    os.chmod(log.files.signing_key, 0o600)
    log.files.signing_key.unlink()
    signing._load_signer.cache_clear()  # this process read the genuine key already
    attacker = init_signing_key(log.files.signing_key)
    with log.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT seq, body, hash FROM audit_entries ORDER BY seq")).all()
    prev = rows[29][2]
    rewritten = []
    for seq, body, _ in rows[30:]:
        entry = orjson.loads(body)["entry"]
        if seq == 31:
            entry["details"] = {"i": 31000}
        new_body = envelope(canonical("main"), canonical(entry), prev, seq)
        prev = entry_hash(new_body)
        rewritten.append({"s": seq, "b": new_body.decode(), "h": prev})
    rechain = (
        "UPDATE audit_entries SET body = :b, hash = :h,"
        " prev_hash = (SELECT hash FROM audit_entries WHERE seq = :s - 1) WHERE seq = :s"
    )
    with log.engine.begin() as conn:
        conn.execute(sa.text("DROP TRIGGER IF EXISTS audit_entries_no_update"))
        conn.execute(sa.text("DROP TRIGGER IF EXISTS audit_checkpoints_no_delete"))
        for row in rewritten:
            conn.execute(sa.text(rechain), row)
        conn.execute(sa.text("DELETE FROM audit_checkpoints"))
    log.files.checkpoints.unlink()
    heads = {row["s"]: row["h"] for row in rewritten}
    with log.engine.connect() as conn:
        heads[20] = conn.execute(sa.text("SELECT hash FROM audit_entries WHERE seq = 20")).scalar()
    previous = None
    for size in (20, 40, 60):
        checkpoint = attacker.sign(
            "main", size, heads[size], "2026-01-02T00:00:00.000000Z", after=previous
        )
        with log.engine.begin() as conn:
            conn.execute(sa.insert(AuditCheckpoint), [checkpoint.to_dict()])
        signing.append_checkpoint_file(log.files.checkpoints, checkpoint)
        previous = checkpoint
    log.witness = None  # even without the witness, the pinned key alone refuses it

    report = verify_log(log)
    assert report.problem is not None, report.summary()
    assert report.problem.kind == ProblemKind.CHECKPOINT
    assert "no valid signature" in report.problem.message


def test_a_worker_never_creates_a_signing_key(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    migrate(engine)
    files = AuditFiles(tmp_path / "key.pem", tmp_path / "c.jsonl", tmp_path / "a", tmp_path / "r")
    log = AuditLog(engine, files, checkpoint_every=2)
    events = [build_event(actor="t", action="restart_agent", subject=f"s{i}") for i in range(3)]
    with pytest.raises(MissingSigningKey, match="fleet audit init-key"):
        log.append(events)
    assert not files.signing_key.exists()
    assert log.count() == 0, "refused as a whole: the message is retried once the key exists"
    engine.dispose()


def test_init_key_makes_the_key_once_read_only_and_prints_the_pin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEET_ENVIRONMENT", "staging")
    _real_secrets(monkeypatch)
    monkeypatch.setenv("FLEET_DATA_DIR", str(tmp_path))
    first = CliRunner().invoke(main, ["audit", "init-key"])
    assert first.exit_code == 0, first.output
    key_file = tmp_path / "audit/signing-key.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o400
    pin = load_signer(key_file).public_hex
    assert f"FLEET_AUDIT__PUBLIC_KEY={pin}" in first.output
    again = CliRunner().invoke(main, ["audit", "init-key"])
    assert again.exit_code != 0 and "already exists" in again.output
    assert load_signer(key_file).public_hex == pin


def _real_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Staging refuses the shipped defaults at start-up: give it secrets of its own."""
    from cryptography.fernet import Fernet

    monkeypatch.setenv("FLEET_API__TOKEN", secrets.token_hex(24))
    monkeypatch.setenv("FLEET_FLOWER__PASSWORD", secrets.token_hex(16))
    monkeypatch.setenv("FLEET_GATEWAY__ADMIN_KEY", secrets.token_hex(24))
    monkeypatch.setenv("FLEET_SECRETS_KEY", Fernet.generate_key().decode())
