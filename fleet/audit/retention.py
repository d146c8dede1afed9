"""Retention: entries older than the retention period leave the database for an archive file.

The oldest run of the chain whose entries are all older than the cutoff (and
already mirrored to the gateway) is verified, checkpointed exactly at its
last entry, exported to a file (an ordinary export, verifiable alone) and
fsynced; only then is an ``audit_archives`` row written and the entries
deleted, in one transaction. That row is the new anchor: verification of
what remains starts from its head hash, and its signed checkpoint proves
that head. The deletion itself is the one path the append-only triggers let
through (see :mod:`fleet.audit.models`); migration 0008 refuses an archive
row that no checkpoint at its ``last_seq`` vouches for, and verify checks that
checkpoint's signature and the archive file.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import delete, func, insert, select, text

from fleet.audit.events import format_time
from fleet.audit.export import export_log
from fleet.audit.log import AuditLog, Head, chain_lock, read_anchor, read_head
from fleet.audit.models import AuditArchive, AuditCheckpoint, AuditEntry, AuditMirrorState
from fleet.audit.signing import Checkpoint
from fleet.audit.verify import verify_log


class RetentionRefused(RuntimeError):
    """The log does not verify: archiving now would sign over the damage."""


@dataclass(frozen=True)
class ArchiveResult:
    first_seq: int
    last_seq: int
    entries: int
    file: Path
    checkpoint: Checkpoint


def _archivable_up_to(
    log: AuditLog, retention_days: float, *, respect_mirror: bool
) -> tuple[Head, Head]:
    """(anchor, last archivable entry); equal when there is nothing to archive."""
    cutoff = format_time(log.clock.now() - timedelta(days=retention_days))
    with log.engine.connect() as conn:
        anchor, head = read_anchor(conn, log.chain), read_head(conn, log.chain)
        first_young = conn.execute(
            select(func.min(AuditEntry.seq)).where(
                AuditEntry.chain == log.chain, AuditEntry.time >= cutoff
            )
        ).scalar()
        last = head.seq if first_young is None else first_young - 1
        if respect_mirror:
            delivered = conn.execute(
                select(AuditMirrorState.delivered_seq).where(AuditMirrorState.chain == log.chain)
            ).scalar()
            last = min(last, delivered or anchor.seq)
        if last <= anchor.seq:
            return anchor, anchor
        digest = conn.execute(
            select(AuditEntry.hash).where(AuditEntry.chain == log.chain, AuditEntry.seq == last)
        ).scalar_one()
        return anchor, Head(last, digest)


def _checkpoint_at(log: AuditLog, head: Head) -> Checkpoint:
    with chain_lock(log.engine, log.chain) as conn:
        row = (
            conn.execute(
                select(AuditCheckpoint).where(
                    AuditCheckpoint.chain == log.chain, AuditCheckpoint.size == head.seq
                )
            )
            .mappings()
            .first()
        )
        if row is not None:
            return Checkpoint.from_dict(dict(row))
        checkpoint = log.insert_checkpoint(conn, head)
    log.publish_checkpoint(checkpoint)
    return checkpoint


def archive_expired(
    log: AuditLog, retention_days: float, *, respect_mirror: bool = True
) -> ArchiveResult | None:
    """Move entries older than retention_days to an archive file; None when none are due."""
    anchor, last = _archivable_up_to(log, retention_days, respect_mirror=respect_mirror)
    if last.seq <= anchor.seq:
        return None
    report = verify_log(log)
    if not report.ok:
        raise RetentionRefused(f"not archiving: {report.summary()}")
    checkpoint = _checkpoint_at(log, last)

    first = anchor.seq + 1
    log.files.archive_dir.mkdir(parents=True, exist_ok=True)
    final = log.files.archive_dir / f"{log.chain}-{first:012d}-{last.seq:012d}.jsonl"
    partial = final.with_suffix(".partial")
    with partial.open("wb") as out:
        summary = export_log(log, out, first_seq=first, last_seq=last.seq, sign_head=False)
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, final)
    if summary.entries != last.seq - anchor.seq:
        raise RetentionRefused(
            f"archive of {first}..{last.seq} holds {summary.entries} entries; nothing deleted"
        )
    file_hash = hashlib.sha256(final.read_bytes()).hexdigest()

    with chain_lock(log.engine, log.chain) as conn:
        if read_anchor(conn, log.chain).seq != anchor.seq:
            return None  # another worker archived this run meanwhile
        conn.execute(
            insert(AuditArchive),
            [
                {
                    "chain": log.chain,
                    "last_seq": last.seq,
                    "first_seq": first,
                    "head": last.hash,
                    "entries": summary.entries,
                    "file": str(final),
                    "file_sha256": file_hash,
                    "archived_at": format_time(log.clock.now()),
                }
            ],
        )
        if conn.dialect.name == "postgresql":
            # The deliberate path the trigger lets through, for this transaction only.
            conn.execute(text("SET LOCAL fleet.audit_retention = 'on'"))
        conn.execute(
            delete(AuditEntry).where(AuditEntry.chain == log.chain, AuditEntry.seq <= last.seq)
        )
    return ArchiveResult(first, last.seq, summary.entries, final, checkpoint)
