"""SLA violation episodes, the escalation actions taken on them, disputes and burn-rate alerts.

Two constraints carry the guarantees:

* ``sla_episodes.open_agent`` holds the agent id while an episode is open and
  NULL once it is closed, under a unique constraint: an agent has at most one
  open episode, however many checks race to open one.
* ``sla_escalations`` has the primary key (episode_id, tier): the idempotency
  key. An engine that loses the race to insert a tier sends nothing, so each
  tier is sent at most once per episode; the worker then claims the row with a
  conditional update before acting, so a redelivered message does nothing.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from fleet.approvals.models import UtcDateTime
from fleet.storage.db import Base

# Tier 0 is the recovery stage of an episode: the resolved notice and the
# disputes' resolution. It uses the same idempotency key as the four tiers.
RESOLVE_TIER = 0


class EpisodeState(StrEnum):
    OPEN = "open"
    CLOSED = "closed"


class ActionStatus(StrEnum):
    DISPATCHED = "dispatched"  # row written, message sent, no worker has it yet
    RUNNING = "running"  # claimed by a worker until lease_until
    HELD = "held"  # the approval gate said "not without a human": waits for the approval
    DONE = "done"
    FAILED = "failed"  # gave up (non-transient error, or attempts exhausted); the result says why
    SKIPPED = "skipped"  # the episode closed before the action ran

    @property
    def finished(self) -> bool:
        return self in (ActionStatus.DONE, ActionStatus.FAILED, ActionStatus.SKIPPED)


class SlaEpisode(Base):
    __tablename__ = "sla_episodes"

    episode_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.agent_id"), index=True)
    fleet: Mapped[str] = mapped_column(String(128))
    sla_id: Mapped[str | None] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16))
    # The agent id while open, NULL when closed; unique: one open episode per agent.
    open_agent: Mapped[str | None] = mapped_column(String(128), unique=True)
    breached_terms: Mapped[list[str]] = mapped_column(JSON, default=list)
    opened_at: Mapped[datetime] = mapped_column(UtcDateTime)
    # What asked for the check that opened it: "sweep", "alert:<rule>", "operator:…".
    opened_by: Mapped[str] = mapped_column(String(128))
    last_breach_at: Mapped[datetime] = mapped_column(UtcDateTime)
    # Hysteresis: consecutive compliant samples so far, and when the first of them came.
    compliant_streak: Mapped[int] = mapped_column(Integer, default=0)
    recovering_since: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # Set when the source knows whom the breach hurt: tier 3 files a dispute for them.
    counterparty: Mapped[str | None] = mapped_column(String(128))
    disputed_amount: Mapped[str | None] = mapped_column(String(32))
    acked_by: Mapped[str | None] = mapped_column(String(128))
    acked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    ack_until: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # Tier 2 keeps the agent's traffic weight from before its cut, to restore it on recovery.
    weight_before: Mapped[str | None] = mapped_column(String(16))
    # When the violation ended (the first of the compliant samples that closed it).
    closed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    close_reason: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("ix_sla_episodes_state_opened", "state", "opened_at"),
        Index("ix_sla_episodes_closed_at", "closed_at"),
        Index("ix_sla_episodes_fleet", "fleet"),
    )


class SlaEscalation(Base):
    """One tier's action on one episode; the primary key is the idempotency key."""

    __tablename__ = "sla_escalations"

    episode_id: Mapped[str] = mapped_column(ForeignKey("sla_episodes.episode_id"), primary_key=True)
    tier: Mapped[int] = mapped_column(Integer, primary_key=True)
    action: Mapped[str] = mapped_column(String(32))
    task: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    dispatched_at: Mapped[datetime] = mapped_column(UtcDateTime)
    # How long the episode had lasted when the tier was sent.
    episode_age_s: Mapped[int] = mapped_column(Integer, default=0)
    dispatch_count: Mapped[int] = mapped_column(Integer, default=1)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    claimed_by: Mapped[str | None] = mapped_column(String(160))
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # The queue the message was delivered from, as the worker saw it.
    queue: Mapped[str | None] = mapped_column(String(32))
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # Each finished step of the action, so a retried action resumes instead of repeating.
    steps: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    approval_id: Mapped[str | None] = mapped_column(String(32))

    __table_args__ = (Index("ix_sla_escalations_status", "status", "dispatched_at"),)


class DisputeStatus(StrEnum):
    OPEN = "open"
    RESOLVED = "resolved"


class SlaDispute(Base):
    __tablename__ = "sla_disputes"

    dispute_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    episode_id: Mapped[str] = mapped_column(ForeignKey("sla_episodes.episode_id"), index=True)
    agent_id: Mapped[str] = mapped_column(String(128), index=True)
    counterparty: Mapped[str] = mapped_column(String(128))
    claimed: Mapped[str] = mapped_column(String(32))  # decimal string
    status: Mapped[str] = mapped_column(String(16))
    opened_at: Mapped[datetime] = mapped_column(UtcDateTime)
    resolved_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    resolution: Mapped[str | None] = mapped_column(String(64))
    refund: Mapped[str | None] = mapped_column(String(32))
    notes: Mapped[str | None] = mapped_column(Text)


class SlaBurnAlert(Base):
    """A multi-window burn-rate alert that fired (and, later, resolved)."""

    __tablename__ = "sla_burn_alerts"

    alert_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    # "fleet:<name>" or "agent:<id>"
    scope: Mapped[str] = mapped_column(String(160))
    rule: Mapped[str] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(16))
    # scope|rule while firing, NULL once resolved: one firing alert per scope and rule.
    open_key: Mapped[str | None] = mapped_column(String(240), unique=True)
    long_rate: Mapped[str] = mapped_column(String(32))
    short_rate: Mapped[str] = mapped_column(String(32))
    fired_at: Mapped[datetime] = mapped_column(UtcDateTime)
    resolved_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    notified: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    __table_args__ = (Index("ix_sla_burn_alerts_scope", "scope", "fired_at"),)
