"""The SLA and escalation board: open episodes, tiers, acknowledgement, error budgets."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/console/sla", include_in_schema=False)
