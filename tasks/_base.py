"""What every task module shares: the task decorator and its defaults, the runtime, heartbeats."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import redis
import sqlalchemy.exc
from celery import Task

from fleet.durability import deadletters
from fleet.heartbeat import record_heartbeat
from workers.app import app
from workers.queues import FleetQueue, TaskName, heartbeat_name
from workers.runtime import runtime

log = logging.getLogger("fleet.tasks")

# State-changing tasks are idempotent: acknowledged after they finish, and
# handed back when the worker dies mid-task (Celery PR #3053); JSON only;
# results are not stored unless a caller reads them.
TASK_DEFAULTS: dict[str, Any] = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    "serializer": "json",
    "ignore_result": True,
}


# Redis or the database away for a while (restarting): worth a retry, never a failure.
TRANSIENT: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
)


class FleetTask(Task):  # type: ignore[misc]  # Celery's Task is untyped
    """Counts the deliveries of a late-acknowledged message; past ``worker.max_deliveries``
    it is buried as a dead letter instead of run (fleet/durability/deadletters.py).

    Redis or the database unreachable mid-task (restarting) is a reason to try again,
    never to fail and acknowledge: the task is retried with backoff; if even the retry
    cannot be sent, the message stays unacknowledged and the reconnecting worker takes
    it back.
    """

    autoretry_for = TRANSIENT
    retry_backoff = 1
    retry_backoff_max = 30
    retry_jitter = True
    max_retries = 20

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        if not self.acks_late or request.called_directly or not request.id:
            return super().__call__(*args, **kwargs)
        rt = runtime()
        worker = rt.settings.worker
        try:
            count = deadletters.count_delivery(
                rt.redis, request.id, 2 * worker.visibility_timeout_s
            )
        except redis.RedisError:
            # Uncounted rather than failed (and acknowledged): the count is a guard, the
            # work is the point; the body meets Redis away too and retries.
            return super().__call__(*args, **kwargs)
        if count > worker.max_deliveries:
            message = deadletters.Message(
                task_id=request.id,
                task_name=self.name,
                queue=(request.delivery_info or {}).get("routing_key"),
                args=list(args),
                kwargs=dict(kwargs),
            )
            letter = deadletters.bury(rt.sessions, message, count - 1, rt.clock.now())
            deadletters.clear_deliveries(rt.redis, request.id)
            log.error(
                "dead letter %s: %s[%s] delivered %d times without finishing; not run again "
                "(`fleet dlq list`)",
                letter,
                self.name,
                request.id,
                count - 1,
            )
            return None
        try:
            return super().__call__(*args, **kwargs)
        finally:
            # A count left behind only expires; it must not turn a result into a failure.
            with contextlib.suppress(redis.RedisError):
                deadletters.clear_deliveries(rt.redis, request.id)


def fleet_task(name: TaskName | str, **options: Any) -> Callable[[Callable[..., Any]], Task]:
    """``app.task`` with an explicit name and the shared defaults; ``options`` override them."""
    decorate: Callable[[Callable[..., Any]], Task] = app.task(
        name=str(name), **{"base": FleetTask, **TASK_DEFAULTS, **options}
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


__all__ = ["TASK_DEFAULTS", "TRANSIENT", "FleetTask", "fleet_task", "heartbeat_task", "runtime"]
