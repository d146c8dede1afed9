"""Live updates for console pages: server-sent events."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/console/live", include_in_schema=False)
