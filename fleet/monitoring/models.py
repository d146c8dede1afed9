"""Monitoring tables: hourly history per agent, one row per fleet per sweep, alerts, the
stream cursor.

The latest state lives in Redis (snapshots, fleet health); these keep history
for reports, baselines and `fleet alerts`, trimmed by the retention task.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Float, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from fleet.storage.db import Base


class AgentHourly(Base):
    """One agent's samples over one hour, folded as they came in."""

    __tablename__ = "monitoring_agent_hourly"

    agent_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    hour: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    fleet: Mapped[str | None] = mapped_column(String(128), default=None)
    samples: Mapped[int] = mapped_column(Integer)
    unknown: Mapped[int] = mapped_column(Integer, default=0)
    critical: Mapped[int] = mapped_column(Integer, default=0)
    degraded: Mapped[int] = mapped_column(Integer, default=0)
    latency_p99_avg: Mapped[float | None] = mapped_column(Float, default=None)
    latency_p99_max: Mapped[float | None] = mapped_column(Float, default=None)
    error_rate_avg: Mapped[float | None] = mapped_column(Float, default=None)
    reputation_avg: Mapped[float | None] = mapped_column(Float, default=None)
    # Money as decimal strings, as everywhere.
    balance_min: Mapped[str | None] = mapped_column(String(32), default=None)
    burn_rate_avg: Mapped[str | None] = mapped_column(String(32), default=None)
    sla_compliant: Mapped[int] = mapped_column(Integer, default=0)
    sla_checked: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (Index("ix_monitoring_agent_hourly_hour", "hour"),)


class FleetSweep(Base):
    """A fleet's (or a segment's, "fleet/segment") aggregate as one sweep saw it."""

    __tablename__ = "monitoring_fleet_sweeps"

    sweep_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    fleet: Mapped[str] = mapped_column(String(200), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    agents: Mapped[int] = mapped_column(Integer)
    healthy: Mapped[int] = mapped_column(Integer)
    degraded: Mapped[int] = mapped_column(Integer)
    critical: Mapped[int] = mapped_column(Integer)
    unknown: Mapped[int] = mapped_column(Integer)
    latency_p99: Mapped[float | None] = mapped_column(Float, default=None)
    error_rate: Mapped[float | None] = mapped_column(Float, default=None)
    sla_compliance: Mapped[float | None] = mapped_column(Float, default=None)
    burn_rate_per_hour: Mapped[str] = mapped_column(String(32))

    __table_args__ = (Index("ix_monitoring_fleet_sweeps_started_at", "started_at"),)


class Alert(Base):
    """One alert: fired when its condition had held long enough, resolved when it cleared.

    ``open_key`` (rule and subject) is set while the alert is open and unique,
    so a condition that holds has one alert however often it is evaluated,
    and a redelivered evaluation cannot open a second.
    """

    __tablename__ = "monitoring_alerts"

    alert_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    rule: Mapped[str] = mapped_column(String(64))
    scope: Mapped[str] = mapped_column(String(16))  # agent | fleet
    subject: Mapped[str] = mapped_column(String(160))  # agent id or fleet name
    fleet: Mapped[str | None] = mapped_column(String(128), default=None)
    severity: Mapped[str] = mapped_column(String(16))
    audience: Mapped[str] = mapped_column(String(16))
    open_key: Mapped[str | None] = mapped_column(String(240), unique=True, default=None)
    value: Mapped[str] = mapped_column(String(64))
    threshold: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text)
    since: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    fired_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    # What was done about it (pause, traffic cut, freeze, escalation), for the resolve and the
    # audit.
    actions: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    __table_args__ = (
        Index("ix_monitoring_alerts_fired_at", "fired_at"),
        Index("ix_monitoring_alerts_subject", "subject"),
    )


__all__ = ["AgentHourly", "Alert", "FleetSweep"]


class StreamCursor(Base):
    """The last event id the stream consumer handed on, per stream: where it resumes
    when Redis lost its copy."""

    __tablename__ = "monitoring_stream_cursors"

    stream: Mapped[str] = mapped_column(String(128), primary_key=True)
    last_event_id: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
