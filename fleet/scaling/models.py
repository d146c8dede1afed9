"""Tables of the autoscaler (migration 0014): each decision with its inputs, each segment mode."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, DateTime, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from fleet.storage.db import Base


class Mode(StrEnum):
    OBSERVE = "observe"  # decides and logs, acts on nothing (every segment starts here)
    ENFORCE = "enforce"  # acts: provisions and retires (switched on under an approval)


class ScalingDecision(Base):
    """One decision of one pass for one segment, "hold" included: the post-mortem record."""

    __tablename__ = "scaling_decisions"

    # The order decisions were logged in, even within one instant of the (movable) clock.
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    decision_id: Mapped[str] = mapped_column(String(32), unique=True)
    segment: Mapped[str] = mapped_column(String(64))
    fleet: Mapped[str] = mapped_column(String(128))
    mode: Mapped[str] = mapped_column(String(16))
    # scale_up | scale_down | cost_scale_down | hold
    action: Mapped[str] = mapped_column(String(20))
    count: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)
    # What the decision saw: pending, healthy, size, burn and limit, thresholds, cooldown.
    inputs: Mapped[dict[str, Any]] = mapped_column(JSON)
    # What was done about it: nothing (observe, hold), the provisioning job, the agents retired.
    acted: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    decided_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_scaling_decisions_segment_at", "segment", "decided_at"),)


class SegmentScaling(Base):
    """A segment's autoscaling state: its mode and when its last action's cooldown ends."""

    __tablename__ = "scaling_segments"

    segment: Mapped[str] = mapped_column(String(64), primary_key=True)
    fleet: Mapped[str] = mapped_column(String(128))
    mode: Mapped[str] = mapped_column(String(16), default=Mode.OBSERVE)
    mode_changed_by: Mapped[str | None] = mapped_column(String(128), default=None)
    mode_reason: Mapped[str | None] = mapped_column(Text, default=None)
    mode_approval_id: Mapped[str | None] = mapped_column(String(32), default=None)
    mode_changed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    last_decision_id: Mapped[str | None] = mapped_column(String(32), default=None)
    last_action: Mapped[str | None] = mapped_column(String(20), default=None)
    last_action_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    cooldown_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
