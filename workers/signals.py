"""Worker signal handlers: logging, the process's runtime, a clear line when a message is refused.

The runtime is built where the work runs: in each prefork child after the fork
(a gateway loop or a database pool must never cross one), in the worker itself
for the threads and solo pools, which do not fork.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import (
    setup_logging,
    task_rejected,
    task_unknown,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

from config.settings import get_settings
from fleet import tracing
from fleet.hotstate import connect
from workers import runtime
from workers import tracing as worker_tracing
from workers.queues import FleetQueue, TaskName
from workers.redelivery import TakeBackUnacked, spool_dir, spool_lost_deliveries

log = logging.getLogger("fleet.workers")

WORKER_SERVICE = "fleet-worker"  # the workers' service.name in traces


def connect_signals(celery_app: Celery) -> None:
    """Connect the handlers for ``celery_app``'s worker processes."""
    celery_app.steps["consumer"].add(TakeBackUnacked)
    worker_tracing.connect()

    def pool_of(worker: Any) -> str:
        # At worker_init the pool is still the name given (-P threads) or a class.
        pool = worker.pool_cls
        return pool if isinstance(pool, str) else str(pool.__module__)

    def on_worker_init(sender: Any = None, **_: object) -> None:
        spool_lost_deliveries(spool_dir())
        pool = pool_of(sender) if sender is not None else "prefork"
        if "prefork" not in pool:
            settings = get_settings()
            tracing.configure(settings.tracing, WORKER_SERVICE)
            # Threads of one process share it: their audit events share queue messages.
            runtime.start(celery_app, settings, grouped_audit="thread" in pool)

    def on_process_init(**_: object) -> None:
        settings = get_settings()
        tracing.configure(settings.tracing, WORKER_SERVICE)
        runtime.start(celery_app, settings)

    def on_shutdown(**_: object) -> None:
        runtime.stop()
        tracing.force_flush()

    def on_ready(sender: Any = None, **_: object) -> None:
        consumed = set(getattr(celery_app.amqp.queues, "consume_from", None) or ())
        # A provisioning worker that starts (after a crash, a restart of the whole stack)
        # resumes what a dead one held now, from the records, not at the stall sweep.
        if FleetQueue.AUDIT.value in consumed:
            try:
                # The main process of a prefork worker has no runtime: a client of its own.
                r = connect(get_settings().redis_url)
                try:
                    resent = runtime.resend_audit_in_flight(celery_app, r)
                finally:
                    r.close()
            except Exception as exc:  # noqa: BLE001 - the next audit worker to start tries again
                log.warning("could not re-send the audit messages in flight: %s", exc)
            else:
                if resent:
                    log.warning("re-sent %d audit messages not appended yet", resent)
        if FleetQueue.PROVISIONING.value in consumed:
            try:
                celery_app.send_task(TaskName.RESUME_INTERRUPTED, ignore_result=True)
            except Exception as exc:  # noqa: BLE001 - the stall sweep still resumes them later
                log.warning("could not send the start-up resume: %s", exc)

    setup_logging.connect(_configure_logging, weak=False)
    task_rejected.connect(_log_rejected, weak=False)
    task_unknown.connect(_log_unknown, weak=False)
    worker_init.connect(on_worker_init, weak=False)
    worker_process_init.connect(on_process_init, weak=False)
    worker_process_shutdown.connect(on_shutdown, weak=False)
    worker_shutdown.connect(on_shutdown, weak=False)
    worker_ready.connect(on_ready, weak=False)


def _configure_logging(**_: object) -> None:
    logging.basicConfig(
        level=get_settings().log_level,
        format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s",
    )


def _log_rejected(message: object = None, exc: BaseException | None = None, **_: object) -> None:
    # Celery already logs the refusal of untrusted content; this adds the
    # queue so an operator knows which producer to chase.
    delivery = getattr(message, "delivery_info", {}) or {}
    log.error("refused message on queue %s: %s", delivery.get("routing_key"), exc)


def _log_unknown(name: str | None = None, **_: object) -> None:
    log.error("refused message for unknown task %r", name)
