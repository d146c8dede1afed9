"""Tasks on the `sla` queue."""

from __future__ import annotations

from tasks._base import heartbeat_task
from workers.queues import FleetQueue

heartbeat = heartbeat_task(FleetQueue.SLA.value)
