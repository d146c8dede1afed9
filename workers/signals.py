"""Worker signal handlers: logging set-up and a clear line when a message is refused."""

from __future__ import annotations

import logging

from celery.signals import setup_logging, task_rejected, task_unknown

from config.settings import get_settings

log = logging.getLogger("fleet.workers")


@setup_logging.connect
def _configure_logging(**_: object) -> None:
    logging.basicConfig(
        level=get_settings().log_level,
        format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s",
    )


@task_rejected.connect
def _log_rejected(message: object = None, exc: BaseException | None = None, **_: object) -> None:
    # Celery already logs the refusal of untrusted content; this adds the
    # queue so an operator knows which producer to chase.
    delivery = getattr(message, "delivery_info", {}) or {}
    log.error("refused message on queue %s: %s", delivery.get("routing_key"), exc)


@task_unknown.connect
def _log_unknown(name: str | None = None, **_: object) -> None:
    log.error("refused message for unknown task %r", name)
