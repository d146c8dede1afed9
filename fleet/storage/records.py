"""Core records shared by every part of the system: agents and their SLA contracts."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from fleet.storage.db import Base


class AgentStatus(StrEnum):
    PROVISIONING = "provisioning"
    AWAITING_KEY = "awaiting_key"  # a step needs a better key than it holds: `fleet keys import`
    ACTIVE = "active"
    PAUSED = "paused"  # out of every routing pool (tier 4, or an operator)
    COMPENSATING = "compensating"  # provisioning gave up; undoing what was made
    FAILED = "failed"  # provisioning gave up and everything made was undone
    RETIRING = "retiring"
    RETIRED = "retired"
    # The fleet's own agents at the gateway (treasury, operator's inbox): their keys
    # are held here, but they are never swept, checked, routed or provisioned.
    SYSTEM = "system"


class Agent(Base):
    __tablename__ = "agents"

    agent_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    fleet: Mapped[str] = mapped_column(String(128))
    environment: Mapped[str] = mapped_column(String(32))
    id_prefix: Mapped[str] = mapped_column(String(64))
    tier: Mapped[str] = mapped_column(String(32))
    capabilities: Mapped[list[str]] = mapped_column(JSON, default=list)
    sla_template: Mapped[str] = mapped_column(String(64))
    status: Mapped[AgentStatus] = mapped_column(String(16), default=AgentStatus.PROVISIONING)
    # Provisioning progress: names of the steps already done, so a redelivered
    # job resumes where it stopped.
    steps_done: Mapped[list[str]] = mapped_column(JSON, default=list)
    failure_reason: Mapped[str | None] = mapped_column(Text, default=None)
    wallet_id: Mapped[str | None] = mapped_column(String(128), default=None)
    claim_chain_id: Mapped[str | None] = mapped_column(String(128), default=None)
    service_id: Mapped[str | None] = mapped_column(String(128), default=None)
    # The agent's gateway key, encrypted with the settings' secrets key; never logged.
    api_key_encrypted: Mapped[str | None] = mapped_column(Text, default=None)
    key_rotated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    traffic_weight: Mapped[str] = mapped_column(String(16), default="1")
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_agents_fleet_status", "fleet", "status"),
        Index("ix_agents_prefix", "id_prefix"),
    )


class SlaContract(Base):
    __tablename__ = "sla_contracts"

    sla_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.agent_id"), index=True)
    template: Mapped[str] = mapped_column(String(64))
    # Terms as agreed, money and percentages as strings.
    terms: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
