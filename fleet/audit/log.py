"""The hash-chained log: appending, the head, and signed checkpoints.

Appends to one chain are serialised by a database lock held for the whole
transaction (PostgreSQL: ``pg_advisory_xact_lock`` on the chain; SQLite:
``BEGIN IMMEDIATE``, the database write lock), so however many workers
append at once, each batch reads the true head, links to it and commits
before the next one reads it: the chain never forks and never reorders.

An entry's ``time`` is when this writer appended it, not what the producer's
message said: anyone who can put a message on the broker could otherwise
date an entry as they like. The producer's time is kept as ``claimed_time``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Connection, Engine, func, insert, select, text

from fleet.audit.canonical import GENESIS, canonical, entry_hash, envelope, event_object
from fleet.audit.events import AuditEvent, format_time
from fleet.audit.models import AuditArchive, AuditCheckpoint, AuditEntry
from fleet.audit.signing import (
    PIN_HINT,
    Checkpoint,
    Signer,
    UnpinnedKey,
    append_checkpoint_file,
    load_public_key,
    load_signer,
)
from fleet.audit.witness import DirectoryWitness, publish_safely
from fleet.clock import Clock, SystemClock

if TYPE_CHECKING:
    from config.settings import Settings

_IN_CHUNK = 900  # bound parameters per IN (...) query, well under SQLite's limit


@dataclass(frozen=True, slots=True)
class Head:
    seq: int  # 0 for an empty chain
    hash: str


@dataclass(frozen=True, slots=True)
class AppendResult:
    appended: int
    skipped: int  # already in the log (a redelivered message)
    head: Head
    checkpoint: Checkpoint | None


@dataclass(frozen=True)
class AuditFiles:
    signing_key: Path
    checkpoints: Path
    archive_dir: Path
    report_dir: Path

    @classmethod
    def from_settings(cls, settings: Settings) -> AuditFiles:
        audit, base = settings.policy.audit, settings.data_dir

        def under_data_dir(path: Path) -> Path:
            return (path if path.is_absolute() else base / path).resolve()

        return cls(
            signing_key=under_data_dir(audit.signing_key_file),
            checkpoints=under_data_dir(audit.checkpoint_file),
            archive_dir=under_data_dir(audit.archive_dir),
            report_dir=under_data_dir(audit.report_dir),
        )


def lock_key(chain: str) -> int:
    """A stable signed 64-bit advisory-lock key per chain."""
    digest = hashlib.sha256(f"fleet-audit:{chain}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def chain_lock(engine: Engine, chain: str) -> Iterator[Connection]:
    """A transaction holding the chain's write lock until it commits or rolls back."""
    with engine.connect() as conn:
        dialect = conn.dialect.name
        if dialect == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        elif dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key(chain)})
        else:  # pragma: no cover - only the two databases we support
            raise RuntimeError(f"no chain lock for {dialect}")
        try:
            yield conn
        except BaseException:
            conn.rollback()
            raise
        conn.commit()


def read_anchor(conn: Connection, chain: str) -> Head:
    """Where the retained chain starts: the last archived entry, or the genesis."""
    row = conn.execute(
        select(AuditArchive.last_seq, AuditArchive.head)
        .where(AuditArchive.chain == chain)
        .order_by(AuditArchive.last_seq.desc())
        .limit(1)
    ).first()
    return Head(row[0], row[1]) if row else Head(0, GENESIS)


def read_head(conn: Connection, chain: str) -> Head:
    row = conn.execute(
        select(AuditEntry.seq, AuditEntry.hash)
        .where(AuditEntry.chain == chain)
        .order_by(AuditEntry.seq.desc())
        .limit(1)
    ).first()
    return Head(row[0], row[1]) if row else read_anchor(conn, chain)


def _known_event_ids(conn: Connection, ids: list[str]) -> set[str]:
    known: set[str] = set()
    for start in range(0, len(ids), _IN_CHUNK):
        chunk = ids[start : start + _IN_CHUNK]
        known.update(
            conn.execute(
                select(AuditEntry.event_id).where(AuditEntry.event_id.in_(chunk))
            ).scalars()
        )
    return known


@dataclass(frozen=True, slots=True)
class TracedEntry:
    seq: int
    event_id: str
    action: str
    subject: str
    span_id: str | None


class AuditLog:
    """One chain in one database, with the key that signs its checkpoints."""

    def __init__(
        self,
        engine: Engine,
        files: AuditFiles,
        *,
        chain: str = "main",
        checkpoint_every: int = 1000,
        clock: Clock | None = None,
        public_key: str | None = None,
        witness_dir: Path | None = None,
    ) -> None:
        self.engine = engine
        self.files = files
        self.chain = chain
        self.checkpoint_every = checkpoint_every
        self.clock = clock or SystemClock()
        self.public_key = public_key  # pinned in configuration (hex); None: nothing to trust
        self.witness = DirectoryWitness(witness_dir, chain) if witness_dir is not None else None
        self._chain_json = canonical(chain)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, engine: Engine | None = None, clock: Clock | None = None
    ) -> AuditLog:
        from fleet.storage.db import engine_for

        audit = settings.policy.audit
        return cls(
            engine or engine_for(settings.sqlalchemy_url),
            AuditFiles.from_settings(settings),
            chain=audit.chain,
            checkpoint_every=audit.checkpoint_every,
            clock=clock,
            public_key=settings.audit.public_key,
            witness_dir=settings.audit.witness_dir,
        )

    @property
    def signer(self) -> Signer:
        """The signing key; MissingSigningKey until `fleet audit init-key` has made it."""
        return load_signer(self.files.signing_key)

    def trusted_public_key(self) -> Ed25519PublicKey:
        """The key pinned in configuration: never the one found next to the database."""
        if not self.public_key:
            raise UnpinnedKey(f"no audit public key is pinned: {PIN_HINT}")
        return load_public_key(self.public_key)

    def _now(self) -> str:
        return format_time(self.clock.now())

    def append(self, events: Sequence[AuditEvent]) -> AppendResult:
        """Append events in the order given, skipping any already in the log.

        The events are canonicalised before the lock is taken, so the
        critical section is a head read, a hash per entry and one INSERT.
        """
        appended_at = self._now()
        # A witnessed head is signed after the commit: a missing key must stop the batch before
        # it, so the retried message is appended and witnessed, not skipped as already there.
        head_signer = self.signer if self.witness is not None else None
        unique: dict[str, bytes] = {}
        by_id: dict[str, AuditEvent] = {}
        for event in events:
            if event.event_id not in unique:
                unique[event.event_id] = canonical(event_object(event, appended_at=appended_at))
                by_id[event.event_id] = event
        checkpoint = None
        with chain_lock(self.engine, self.chain) as conn:
            known = _known_event_ids(conn, list(unique)) if unique else set()
            head = read_head(conn, self.chain)
            seq, prev = head.seq, head.hash
            rows = []
            for event_id, event_json in unique.items():
                if event_id in known:
                    continue
                seq += 1
                body = envelope(self._chain_json, event_json, prev, seq)
                digest = entry_hash(body)
                event = by_id[event_id]
                rows.append(
                    {
                        "chain": self.chain,
                        "seq": seq,
                        "event_id": event_id,
                        "time": appended_at,
                        "actor": event.actor,
                        "action": event.action,
                        "subject": event.subject,
                        "fleet": event.fleet,
                        "article": event.article.value,
                        "approval": event.approval.value,
                        "approval_id": event.approval_id,
                        "trace_id": event.trace_id,
                        "span_id": event.span_id,
                        "prev_hash": prev,
                        "hash": digest,
                        "body": body.decode("utf-8"),
                    }
                )
                prev = digest
            if rows:
                conn.execute(insert(AuditEntry), rows)
                if seq // self.checkpoint_every > head.seq // self.checkpoint_every:
                    checkpoint = self.insert_checkpoint(conn, Head(seq, prev))
        if checkpoint is not None:
            self.publish_checkpoint(checkpoint)
        if rows and head_signer is not None:
            self.publish_head(Head(seq, prev), head_signer)
        return AppendResult(len(rows), len(events) - len(rows), Head(seq, prev), checkpoint)

    def insert_checkpoint(self, conn: Connection, head: Head) -> Checkpoint:
        """Sign head as the next checkpoint; conn must hold the chain lock (counters stay
        gap-free and each links to the one signed before it)."""
        row = (
            conn.execute(
                select(AuditCheckpoint)
                .where(AuditCheckpoint.chain == self.chain)
                .order_by(AuditCheckpoint.counter.desc(), AuditCheckpoint.size.desc())
                .limit(1)
            )
            .mappings()
            .first()
        )
        last = Checkpoint.from_dict(dict(row)) if row is not None else None
        checkpoint = self.signer.sign(self.chain, head.seq, head.hash, self._now(), after=last)
        conn.execute(insert(AuditCheckpoint), [checkpoint.to_dict()])
        return checkpoint

    def publish_checkpoint(self, checkpoint: Checkpoint) -> None:
        """After the commit: the file beside the database, and the witness outside it."""
        append_checkpoint_file(self.files.checkpoints, checkpoint)
        if self.witness is not None:
            publish_safely("checkpoint", self.witness.publish_checkpoint, checkpoint)

    def publish_head(self, head: Head, signer: Signer) -> None:
        if self.witness is not None and head.seq > 0:
            signed = signer.sign_head(self.chain, head.seq, head.hash, self._now())
            publish_safely("head", self.witness.publish_head, signed)

    def head(self) -> Head:
        with self.engine.connect() as conn:
            return read_head(conn, self.chain)

    def checkpoint(self) -> Checkpoint | None:
        """Sign the current head unless it is already signed (or the chain is empty)."""
        with chain_lock(self.engine, self.chain) as conn:
            head = read_head(conn, self.chain)
            last = conn.execute(
                select(func.max(AuditCheckpoint.size)).where(AuditCheckpoint.chain == self.chain)
            ).scalar()
            if head.seq == 0 or (last is not None and last >= head.seq):
                return None
            checkpoint = self.insert_checkpoint(conn, head)
        self.publish_checkpoint(checkpoint)
        return checkpoint

    def checkpoints(self) -> list[Checkpoint]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(AuditCheckpoint)
                .where(AuditCheckpoint.chain == self.chain)
                .order_by(AuditCheckpoint.counter, AuditCheckpoint.size)
            ).mappings()
            return [Checkpoint.from_dict(dict(row)) for row in rows]

    def entries_for_trace(self, trace_id: str) -> list[TracedEntry]:
        """The entries a trace caused, in chain order (index ix_audit_entries_trace_id)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(
                    AuditEntry.seq,
                    AuditEntry.event_id,
                    AuditEntry.action,
                    AuditEntry.subject,
                    AuditEntry.span_id,
                )
                .where(AuditEntry.chain == self.chain, AuditEntry.trace_id == trace_id.lower())
                .order_by(AuditEntry.seq)
            ).all()
        return [TracedEntry(r.seq, r.event_id, r.action, r.subject, r.span_id) for r in rows]

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(AuditEntry)
                    .where(AuditEntry.chain == self.chain)
                ).scalar_one()
            )
