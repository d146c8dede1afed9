"""What every task module shares: the app and the heartbeat task factory."""

from __future__ import annotations

import time

from celery import Task

from config.settings import get_settings
from fleet.heartbeat import record_heartbeat
from fleet.hotstate import connect
from workers.app import app


def heartbeat_task(queue: str) -> Task:
    @app.task(name=f"{queue}.heartbeat", bind=True, ignore_result=True, acks_late=False)
    def heartbeat(self: Task, sent_at: float | None = None) -> None:
        record_heartbeat(
            connect(get_settings().redis_url),
            queue,
            self.request.hostname or "?",
            time.time(),
            sent_at,
        )

    return heartbeat
