"""The Celery application. This module only builds it: name, config, tasks, logging."""

from __future__ import annotations

from celery import Celery

from config.settings import Settings, get_settings
from workers.celery_config import celery_config
from workers.signals import connect_signals

TASK_MODULES = (
    "tasks.provisioning",
    "tasks.metrics",
    "tasks.sla",
    "tasks.escalation",
    "tasks.audit",
    "tasks.routing",
    "tasks.budgets",
    "tasks.finops",
    "tasks.control",
)


def create_app(settings: Settings | None = None) -> Celery:
    """The app for this process; tests build extra ones for their own Redis."""
    app = Celery("fleet_commander", set_as_current=settings is None)
    app.conf.update(celery_config(settings or get_settings()))
    app.conf.imports = TASK_MODULES
    return app


def create_producer(settings: Settings) -> Celery:
    """An app that only sends (CLI, benchmarks, tests): no result-backend
    subscription that would outlive the Redis it points at."""
    producer = create_app(settings)
    producer.conf.result_backend = None
    return producer


app = create_app()
connect_signals(app)
