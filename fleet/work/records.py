"""The work tasks table: one row per task submitted, its routing choice and its outcome.

Rows are written in batches off the hot path (``fleet.work.store``); while a task runs
its state is in Redis.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Float, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from fleet.storage.db import Base


class WorkTask(Base):
    __tablename__ = "work_tasks"

    task_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    type: Mapped[str] = mapped_column(String(128))
    fleet: Mapped[str | None] = mapped_column(String(128), default=None)
    capabilities: Mapped[list[str]] = mapped_column(JSON, default=list)
    estimated_tokens: Mapped[int] = mapped_column(Integer)
    payer_kind: Mapped[str] = mapped_column(String(16))
    payer_id: Mapped[str] = mapped_column(String(128))
    model: Mapped[str] = mapped_column(String(128))
    model_reason: Mapped[str] = mapped_column(Text)
    # completed | failed | canceled | refused | unroutable
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    agent_id: Mapped[str | None] = mapped_column(String(128), default=None)
    # Every agent tried, in order, with why each attempt ended.
    attempts: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    estimate: Mapped[str | None] = mapped_column(String(32), default=None)
    actual: Mapped[str | None] = mapped_column(String(32), default=None)
    charged: Mapped[str | None] = mapped_column(String(32), default=None)
    input_tokens: Mapped[int | None] = mapped_column(Integer, default=None)
    output_tokens: Mapped[int | None] = mapped_column(Integer, default=None)
    latency_ms: Mapped[float | None] = mapped_column(Float, default=None)
    trace_id: Mapped[str | None] = mapped_column(String(32), default=None)
    # A sub-agent's task names the task that spawned it; the root is the tree's top
    # (migration 0013). Both None for a task of its own.
    parent_task_id: Mapped[str | None] = mapped_column(String(64), default=None)
    root_task_id: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_work_tasks_agent", "agent_id", "finished_at"),
        Index("ix_work_tasks_fleet_finished", "fleet", "finished_at"),
        Index("ix_work_tasks_root", "root_task_id"),
    )


def reservation_id(task_id: str, attempt: int) -> str:
    """The budget reservation of a task's attempt (1-based), which is also its spend-ledger
    row's ``task_id``: each attempt reserves on its own."""
    return f"{task_id}.{attempt}"


def task_of(ledger_task_id: str) -> str:
    """The work task a spend-ledger row belongs to: its reservation id without the attempt
    (a row written by another caller of the budgets, without one, is its own task)."""
    head, dot, tail = ledger_task_id.rpartition(".")
    return head if dot and head and tail.isdigit() else ledger_task_id
