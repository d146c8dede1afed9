"""Tasks on the four `escalation.tierN` queues, one queue per tier.

Each task carries an episode id; the worker claims the (episode, tier) row
before acting, so a redelivered or duplicated message changes nothing (see
fleet/escalation/actions.py). The engine that sends them runs on the `sla`
queue (tasks/sla.py).
"""

from __future__ import annotations

import os
import socket
from typing import Any

from celery import Task

from config.settings import ESCALATION_MAX_COUNTDOWN_S
from fleet.escalation.actions import run_action
from fleet.sla.models import RESOLVE_TIER
from tasks._base import fleet_task, heartbeat_task, runtime
from workers.queues import FleetQueue, TaskName

tier1_heartbeat = heartbeat_task(FleetQueue.ESCALATION_TIER1)
tier2_heartbeat = heartbeat_task(FleetQueue.ESCALATION_TIER2)
tier3_heartbeat = heartbeat_task(FleetQueue.ESCALATION_TIER3)
tier4_heartbeat = heartbeat_task(FleetQueue.ESCALATION_TIER4)

# Countdowns stay below the broker's visibility timeout (checked when settings load).
_MAX_COUNTDOWN_S = ESCALATION_MAX_COUNTDOWN_S


def _run(task: Task, episode_id: str, tier: int, approval_id: str | None) -> dict[str, Any]:
    worker = f"{task.request.hostname or socket.gethostname()}:{os.getpid()}"
    queue = (task.request.delivery_info or {}).get("routing_key")
    outcome = run_action(
        runtime().escalation, episode_id, tier, worker=worker, queue=queue, approval_id=approval_id
    )
    if outcome.retry_in is not None:
        raise task.retry(countdown=min(outcome.retry_in, _MAX_COUNTDOWN_S), max_retries=None)
    return outcome.as_dict()


@fleet_task(TaskName.TIER1_REMEDIATE, bind=True)
def remediate(
    self: Task, episode_id: str, tier: int = 1, approval_id: str | None = None
) -> dict[str, Any]:
    return _run(self, episode_id, 1, approval_id)


@fleet_task(TaskName.TIER2_REROUTE, bind=True)
def reroute(
    self: Task, episode_id: str, tier: int = 2, approval_id: str | None = None
) -> dict[str, Any]:
    return _run(self, episode_id, 2, approval_id)


@fleet_task(TaskName.TIER3_NOTIFY, bind=True)
def notify(
    self: Task, episode_id: str, tier: int = 3, approval_id: str | None = None
) -> dict[str, Any]:
    return _run(self, episode_id, 3, approval_id)


@fleet_task(TaskName.TIER4_FREEZE, bind=True)
def freeze(
    self: Task, episode_id: str, tier: int = 4, approval_id: str | None = None
) -> dict[str, Any]:
    return _run(self, episode_id, 4, approval_id)


@fleet_task(TaskName.TIER3_RESOLVE, bind=True)
def resolve(
    self: Task, episode_id: str, tier: int = RESOLVE_TIER, approval_id: str | None = None
) -> dict[str, Any]:
    """The recovery stage of a closed episode: resolved notice, disputes resolved by policy."""
    return _run(self, episode_id, RESOLVE_TIER, approval_id)
