"""Provisioning jobs and the agents each job covers."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from fleet.storage.db import Base


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"  # every agent active or cleanly failed
    INVALID = "invalid"  # the manifest was refused; nothing was called
    REFUSED = "refused"  # provisioning is frozen fleet-wide


class ProvisioningJob(Base):
    __tablename__ = "provisioning_jobs"

    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    fleet: Mapped[str | None] = mapped_column(String(128), default=None)
    environment: Mapped[str | None] = mapped_column(String(32), default=None)
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    manifest_digest: Mapped[str | None] = mapped_column(String(64), default=None)
    state: Mapped[JobState] = mapped_column(String(16), default=JobState.QUEUED)
    problems: Mapped[list[str]] = mapped_column(JSON, default=list)
    total: Mapped[int] = mapped_column(Integer, default=0)
    submitted_by: Mapped[str] = mapped_column(String(128), default="unknown")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class JobAgent(Base):
    __tablename__ = "provisioning_job_agents"

    job_id: Mapped[str] = mapped_column(ForeignKey("provisioning_jobs.job_id"), primary_key=True)
    agent_id: Mapped[str] = mapped_column(
        ForeignKey("agents.agent_id"), primary_key=True, index=True
    )
