"""Tables of the budgets (migration 0010): the spend ledger, spending pauses, raised limits.

Money is stored as decimal text: exact on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from fleet.storage.db import Base


class SpendEntry(Base):
    """One spend: a settled task, as the budget store booked it."""

    __tablename__ = "spend_ledger"

    task_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    agent_id: Mapped[str] = mapped_column(String(128))
    fleet: Mapped[str] = mapped_column(String(128))
    model: Mapped[str] = mapped_column(String(64))
    pool: Mapped[str | None] = mapped_column(String(128), default=None)
    estimate: Mapped[str] = mapped_column(String(40))
    actual: Mapped[str] = mapped_column(String(40))
    # What the gateway charged (X-Charged, its credits), when the caller knew it.
    charged: Mapped[str | None] = mapped_column(String(40), default=None)
    currency: Mapped[str] = mapped_column(String(8))
    usage: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    trace_id: Mapped[str | None] = mapped_column(String(64), default=None)
    reserved_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    settled_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_spend_ledger_fleet_settled", "fleet", "settled_at"),
        Index("ix_spend_ledger_agent_settled", "agent_id", "settled_at"),
    )


class SpendingPause(Base):
    """A fleet whose spending is paused: one row while the pause holds."""

    __tablename__ = "spending_pauses"

    fleet: Mapped[str] = mapped_column(String(128), primary_key=True)
    reason: Mapped[str] = mapped_column(Text)
    limit: Mapped[str] = mapped_column(String(40))
    would_be: Mapped[str] = mapped_column(String(40))
    paused_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    alert_id: Mapped[str | None] = mapped_column(String(32), default=None)


class BudgetLimit(Base):
    """A budget raised above the policy's by an approved request."""

    __tablename__ = "budget_limits"

    # "per_task:*", "agent_hour:AGENT", "fleet_day:FLEET", "pool:POOL", …
    field: Mapped[str] = mapped_column(String(200), primary_key=True)
    budget: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(String(160))
    limit: Mapped[str] = mapped_column(String(40))
    approval_id: Mapped[str | None] = mapped_column(String(32), default=None)
    raised_by: Mapped[str] = mapped_column(String(128))
    raised_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
