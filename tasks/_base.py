"""What every task module shares: the task decorator and its defaults, the runtime, heartbeats."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from celery import Task

from fleet.heartbeat import record_heartbeat
from workers.app import app
from workers.queues import FleetQueue, TaskName, heartbeat_name
from workers.runtime import runtime

# State-changing tasks are idempotent: acknowledged after they finish, and
# handed back when the worker dies mid-task (Celery PR #3053); JSON only;
# results are not stored unless a caller reads them.
TASK_DEFAULTS: dict[str, Any] = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    "serializer": "json",
    "ignore_result": True,
}


def fleet_task(name: TaskName | str, **options: Any) -> Callable[[Callable[..., Any]], Task]:
    """``app.task`` with an explicit name and the shared defaults; ``options`` override them."""
    decorate: Callable[[Callable[..., Any]], Task] = app.task(
        name=str(name), **{**TASK_DEFAULTS, **options}
    )
    return decorate


def heartbeat_task(queue: FleetQueue) -> Task:
    # A canary is worthless once late and harmless to lose: acknowledged on receipt.
    @fleet_task(heartbeat_name(queue), bind=True, acks_late=False, reject_on_worker_lost=False)
    def heartbeat(self: Task, sent_at: float | None = None) -> None:
        record_heartbeat(
            runtime().redis, queue.value, self.request.hostname or "?", time.time(), sent_at
        )

    return heartbeat


__all__ = ["TASK_DEFAULTS", "fleet_task", "heartbeat_task", "runtime"]
