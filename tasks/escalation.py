"""Tasks on the four `escalation.tierN` queues, one queue per tier.

Each task carries an episode id; the worker claims the (episode, tier) row
before acting, so a redelivered or duplicated message changes nothing (see
fleet/escalation/actions.py). The engine that sends them runs on the `sla`
queue (tasks/sla.py).
"""

from __future__ import annotations

import functools
import os
import socket
from typing import Any

import httpx
from celery import Task

from fleet.clock import SystemClock
from fleet.escalation.actions import ActionDeps, run_action
from fleet.sla.models import RESOLVE_TIER
from tasks import _deps
from tasks._base import heartbeat_task
from workers.app import app
from workers.queues import FleetQueue

tier1_heartbeat = heartbeat_task(FleetQueue.ESCALATION_TIER1.value)
tier2_heartbeat = heartbeat_task(FleetQueue.ESCALATION_TIER2.value)
tier3_heartbeat = heartbeat_task(FleetQueue.ESCALATION_TIER3.value)
tier4_heartbeat = heartbeat_task(FleetQueue.ESCALATION_TIER4.value)

# Countdowns stay below the broker's visibility timeout (see workers/celery_config.py).
_MAX_COUNTDOWN_S = 3000


@functools.cache
def _http() -> httpx.Client:
    return httpx.Client(
        timeout=_deps.settings().policy.escalation.remediation_timeout_s, follow_redirects=False
    )


@functools.cache
def action_deps() -> ActionDeps:
    from tasks.audit import approvals

    return ActionDeps(
        _deps.sessions(),
        _deps.settings().policy,
        SystemClock(),
        _deps.gateway(),
        _http(),
        approvals(),
    )


def _run(task: Task, episode_id: str, tier: int, approval_id: str | None) -> dict[str, Any]:
    worker = f"{task.request.hostname or socket.gethostname()}:{os.getpid()}"
    queue = (task.request.delivery_info or {}).get("routing_key")
    outcome = run_action(
        action_deps(), episode_id, tier, worker=worker, queue=queue, approval_id=approval_id
    )
    if outcome.retry_in is not None:
        raise task.retry(countdown=min(outcome.retry_in, _MAX_COUNTDOWN_S), max_retries=None)
    return outcome.as_dict()


@app.task(name="escalation.tier1.remediate", bind=True, acks_late=True, ignore_result=True)
def remediate(
    self: Task, episode_id: str, tier: int = 1, approval_id: str | None = None
) -> dict[str, Any]:
    return _run(self, episode_id, 1, approval_id)


@app.task(name="escalation.tier2.reroute", bind=True, acks_late=True, ignore_result=True)
def reroute(
    self: Task, episode_id: str, tier: int = 2, approval_id: str | None = None
) -> dict[str, Any]:
    return _run(self, episode_id, 2, approval_id)


@app.task(name="escalation.tier3.notify", bind=True, acks_late=True, ignore_result=True)
def notify(
    self: Task, episode_id: str, tier: int = 3, approval_id: str | None = None
) -> dict[str, Any]:
    return _run(self, episode_id, 3, approval_id)


@app.task(name="escalation.tier4.freeze", bind=True, acks_late=True, ignore_result=True)
def freeze(
    self: Task, episode_id: str, tier: int = 4, approval_id: str | None = None
) -> dict[str, Any]:
    return _run(self, episode_id, 4, approval_id)


@app.task(name="escalation.tier3.resolve", bind=True, acks_late=True, ignore_result=True)
def resolve(
    self: Task, episode_id: str, tier: int = RESOLVE_TIER, approval_id: str | None = None
) -> dict[str, Any]:
    """The recovery stage of a closed episode: resolved notice, disputes resolved by policy."""
    return _run(self, episode_id, RESOLVE_TIER, approval_id)


def reset() -> None:
    for cached in (_http, action_deps):
        cached.cache_clear()
