"""Approval requests and the votes on them."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Index, Integer, String, Text
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from fleet.storage.db import Base


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware on the way out on SQLite too, which drops the offset."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class RequestStatus(StrEnum):
    PENDING = "pending"  # HIGH/CRITICAL waiting for its quorum; nothing has run
    APPROVED = "approved"  # quorum reached; the action may run once
    DENIED = "denied"  # rejected by an approver, or expired
    EXECUTED = "executed"  # the approved action has been started
    AUTO = "auto"  # MEDIUM: ran at once, in the post-hoc review queue


class Verdict(StrEnum):
    APPROVE = "approve"
    REJECT = "reject"


class ApprovalRequest(Base):
    __tablename__ = "approval_requests"

    request_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    action: Mapped[str] = mapped_column(String(64))
    risk: Mapped[str] = mapped_column(String(8))
    subject: Mapped[str] = mapped_column(String(160))
    fleet: Mapped[str | None] = mapped_column(String(128))
    requested_by: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text, default="")
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16))
    required: Mapped[int] = mapped_column(Integer)
    # What runs once approved: a task name and its keyword arguments.
    task: Mapped[str | None] = mapped_column(String(128))
    task_kwargs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    decided_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    outcome: Mapped[str | None] = mapped_column(
        Text
    )  # why it ended: "quorum", "rejected by …", "expired"
    review_due_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    reviewed_by: Mapped[str | None] = mapped_column(String(128))
    reviewed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    review_note: Mapped[str | None] = mapped_column(Text)
    dispatched_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    executed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    trace_id: Mapped[str | None] = mapped_column(String(32))

    __table_args__ = (
        Index("ix_approval_requests_status", "status", "expires_at"),
        Index("ix_approval_requests_created", "created_at"),
    )


class ApprovalVote(Base):
    """One person's verdict on one request; the key makes a second vote impossible."""

    __tablename__ = "approval_votes"

    request_id: Mapped[str] = mapped_column(
        ForeignKey("approval_requests.request_id"), primary_key=True
    )
    approver: Mapped[str] = mapped_column(String(128), primary_key=True)
    verdict: Mapped[str] = mapped_column(String(8))
    comment: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(UtcDateTime)
