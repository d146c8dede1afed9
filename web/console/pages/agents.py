"""Agents: the paged, filtered list, and one agent's drill-down with its levers."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/console/agents", include_in_schema=False)
