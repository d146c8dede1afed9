"""Celery's configuration, derived from the one settings object."""

from __future__ import annotations

from typing import Any

from config.settings import Settings
from workers.queues import TASK_QUEUES, TASK_ROUTES
from workers.schedule import build_beat_schedule


def celery_config(settings: Settings) -> dict[str, Any]:
    worker = settings.worker
    return {
        "broker_url": settings.redis_url,
        "result_backend": settings.redis_url,
        "broker_connection_retry_on_startup": True,
        # Redis redelivers an unacknowledged message after visibility_timeout;
        # it must exceed every countdown/ETA we use or waiting work runs twice.
        "broker_transport_options": {"visibility_timeout": worker.visibility_timeout_s},
        "result_backend_transport_options": {"visibility_timeout": worker.visibility_timeout_s},
        # JSON only: a pickled message is refused, never executed.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_queues": TASK_QUEUES,
        "task_routes": TASK_ROUTES,
        # A task with no route must fail loudly, not vanish into a queue that
        # no worker reads.
        "task_create_missing_queues": False,
        "task_default_queue": "audit",
        # State-changing tasks are idempotent; acknowledge after they finish so
        # a worker killed mid-task loses nothing (Celery PR #3053).
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "task_soft_time_limit": worker.soft_time_limit_s,
        "task_time_limit": worker.time_limit_s,
        "worker_prefetch_multiplier": worker.prefetch_multiplier,
        "worker_concurrency": worker.concurrency,
        # Results in Redis grow without bound unless they expire (Celery #7801).
        "result_expires": worker.result_expires_s,
        "result_extended": True,
        # Events on, so Flower sees every task from sent to done.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_track_started": True,
        "worker_hijack_root_logger": False,
        # A worker that loses Redis exits for its supervisor to restart (workers/redelivery.py).
        "worker_consumer": "workers.redelivery:RestartOnBrokerLoss",
        "beat_schedule": build_beat_schedule(settings),
        # Beat is exactly one scheduler however many run: RedBeat keeps the schedule's
        # state in Redis and sends only while it holds a lock there; a second beat
        # waits on the lock and takes over once a dead holder's lock expires.
        "beat_scheduler": "redbeat.RedBeatScheduler",
        "redbeat_redis_url": settings.redis_url,
        "redbeat_redis_options": {},
        "redbeat_key_prefix": "fleet:redbeat:",
        "redbeat_lock_timeout": int(settings.schedule.beat_lock_ttl_s),
        # How often a waiting beat tries the lock, and the longest a holder's tick sleeps
        # (each tick extends the lock, so it must be well inside the lock's TTL).
        "beat_max_loop_interval": max(1, int(settings.schedule.beat_lock_ttl_s / 6)),
        "timezone": "UTC",
        "enable_utc": True,
    }
