"""Tasks on the four `escalation.tierN` queues, one queue per tier."""

from __future__ import annotations

from tasks._base import heartbeat_task
from workers.queues import FleetQueue

tier1_heartbeat = heartbeat_task(FleetQueue.ESCALATION_TIER1.value)
tier2_heartbeat = heartbeat_task(FleetQueue.ESCALATION_TIER2.value)
tier3_heartbeat = heartbeat_task(FleetQueue.ESCALATION_TIER3.value)
tier4_heartbeat = heartbeat_task(FleetQueue.ESCALATION_TIER4.value)
