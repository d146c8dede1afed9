"""Tables of durable control state and dead letters (migration 0006)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from fleet.storage.db import Base


class ProvisioningFreeze(Base):
    """A fleet whose provisioning is frozen: one row while the freeze holds."""

    __tablename__ = "provisioning_freezes"

    fleet: Mapped[str] = mapped_column(String(128), primary_key=True)
    # Who set it and why, e.g. ``alert:fleet.emergency:<alert id>`` or ``operator: …``;
    # an alert lifts only a freeze whose reason carries its own prefix.
    reason: Mapped[str] = mapped_column(Text)
    frozen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class DeadLetter(Base):
    """A task message that was delivered too often without finishing (it kept
    killing its worker, or the worker kept dying under it)."""

    __tablename__ = "dead_letters"

    letter_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    task_id: Mapped[str] = mapped_column(String(64))
    task_name: Mapped[str] = mapped_column(String(128))
    queue: Mapped[str | None] = mapped_column(String(64), default=None)
    args: Mapped[list[Any]] = mapped_column(JSON, default=list)
    kwargs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    deliveries: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)
    dead_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Set when an operator replays or drops it; a letter is settled once.
    settled: Mapped[str | None] = mapped_column(String(16), default=None)
    settled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    settled_by: Mapped[str | None] = mapped_column(String(128), default=None)

    __table_args__ = (Index("ix_dead_letters_settled", "settled", "dead_at"),)
