"""The audit tables.

``audit_entries`` is append-only: ``body`` holds the exact canonical bytes that
were hashed, and the other columns repeat fields of it for queries (verify
checks that they still agree). On PostgreSQL a trigger refuses UPDATE always,
and DELETE unless the row is covered by a recorded archive *and* the session
has set ``fleet.audit_retention = 'on'`` (what :mod:`fleet.audit.retention`
does); on SQLite a trigger applies the same archive rule. Those triggers stop
mistakes and casual edits through the application's own paths; a database
owner can always drop them, which is why the chain and the signed checkpoints,
not the triggers, are what make tampering evident.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from fleet.storage.db import Base

HEX64 = 64


class AuditEntry(Base):
    __tablename__ = "audit_entries"

    chain: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    event_id: Mapped[str] = mapped_column(String(64), unique=True)
    # Fixed-width UTC ISO 8601: sorts as time does, on every database.
    time: Mapped[str] = mapped_column(String(27))
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(160))
    fleet: Mapped[str | None] = mapped_column(String(128))
    article: Mapped[str] = mapped_column(String(16))
    approval: Mapped[str] = mapped_column(String(16))
    approval_id: Mapped[str | None] = mapped_column(String(64))
    trace_id: Mapped[str | None] = mapped_column(String(32))
    span_id: Mapped[str | None] = mapped_column(String(16))
    prev_hash: Mapped[str] = mapped_column(String(HEX64))
    hash: Mapped[str] = mapped_column(String(HEX64))
    body: Mapped[str] = mapped_column(Text)

    __table_args__ = (
        Index("ix_audit_entries_chain_time", "chain", "time"),
        Index("ix_audit_entries_subject", "subject"),
        # Migration 0012: a task's entries by its trace id.
        Index("ix_audit_entries_trace_id", "trace_id"),
    )


class AuditCheckpoint(Base):
    """A signed statement "chain C had SIZE entries ending in HEAD"."""

    __tablename__ = "audit_checkpoints"

    chain: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    head: Mapped[str] = mapped_column(String(HEX64))
    signed_at: Mapped[str] = mapped_column(String(27))
    key_id: Mapped[str] = mapped_column(String(16))
    signature: Mapped[str] = mapped_column(String(128))
    # The chain of checkpoints (migration 0008): 1, 2, 3… in signing order, each naming the
    # digest of the one before; 0 and "" on checkpoints signed before it existed.
    counter: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    prev_checkpoint: Mapped[str] = mapped_column(String(HEX64), default="", server_default="")

    __table_args__ = (
        Index(
            "ux_audit_checkpoints_counter",
            "chain",
            "counter",
            unique=True,
            sqlite_where=text("counter > 0"),
            postgresql_where=text("counter > 0"),
        ),
    )


class AuditArchive(Base):
    """Entries first_seq..last_seq were moved to `file`; the chain now starts after head."""

    __tablename__ = "audit_archives"

    chain: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    first_seq: Mapped[int] = mapped_column(BigInteger)
    head: Mapped[str] = mapped_column(String(HEX64))
    entries: Mapped[int] = mapped_column(Integer)
    file: Mapped[str] = mapped_column(String(512))
    file_sha256: Mapped[str] = mapped_column(String(HEX64))
    archived_at: Mapped[str] = mapped_column(String(27))


class AuditMirrorState(Base):
    """The outbox cursor: every entry up to delivered_seq has reached the gateway (or was refused by
    it)."""

    __tablename__ = "audit_mirror_state"

    chain: Mapped[str] = mapped_column(String(64), primary_key=True)
    delivered_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    # One sender at a time keeps the order; a lapsed lease lets another take over.
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_until: Mapped[str | None] = mapped_column(String(27))
    last_error: Mapped[str | None] = mapped_column(Text)
    last_attempt_at: Mapped[str | None] = mapped_column(String(27))


class AuditMirrorReceipt(Base):
    """What the gateway said about one entry: its audit id, or why it refused it for good."""

    __tablename__ = "audit_mirror_receipts"

    chain: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    status: Mapped[str] = mapped_column(String(16))  # delivered | refused | skipped
    audit_id: Mapped[str | None] = mapped_column(String(128))
    error: Mapped[str | None] = mapped_column(Text)
    at: Mapped[str] = mapped_column(String(27))
