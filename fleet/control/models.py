"""Tables of the kill switch (migration 0015): the control-loop pause and fleet freezes.

A row is the durable truth; Redis holds a hot copy (``fleet.control.state``) that the
sweep, the escalation actions, work dispatch and provisioning read on every run.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from fleet.storage.db import Base


class ControlPause(Base):
    """The whole control loop paused: one row (scope ``loop``) while it holds."""

    __tablename__ = "control_pauses"

    scope: Mapped[str] = mapped_column(String(32), primary_key=True)
    paused_by: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text)
    paused_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class FleetFreeze(Base):
    """A fleet frozen by a person: its agents paused and wallets frozen until released."""

    __tablename__ = "fleet_freezes"

    fleet: Mapped[str] = mapped_column(String(128), primary_key=True)
    frozen_by: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text)
    frozen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # The agents this freeze paused (only these are made active again by the release).
    agents: Mapped[list[Any]] = mapped_column(JSON, default=list)
