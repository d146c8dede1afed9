"""Single real processes for the integration tests that need less than a whole stack:
a Redis server, a Celery worker (no eager mode)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from celery import Celery

from config.settings import RedisSettings, load_settings
from stack.processes import Supervisor, free_port, start_redis, worker_argv
from workers.app import create_producer
from workers.queues import FleetQueue


def producer_app(redis_url: str) -> Celery:
    """Our Celery configuration, pointed at a test's own Redis, for sending work."""
    return create_producer(load_settings(redis=RedisSettings(url=redis_url)))


@contextmanager
def redis_server(data_dir: Path) -> Iterator[str]:
    port = free_port()
    with Supervisor(log_dir=data_dir) as sup:
        start_redis(sup, port, data_dir)
        yield f"redis://127.0.0.1:{port}/0"


def wait_until(
    predicate: Callable[[], object], timeout_s: float = 20.0, interval_s: float = 0.05
) -> object:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout_s} s")
        time.sleep(interval_s)


@contextmanager
def celery_worker(
    env: dict[str, str],
    queues: Sequence[FleetQueue | str],
    log_dir: Path,
    *,
    concurrency: int = 1,
    pool: str = "prefork",
    name: str = "worker",
) -> Iterator[tuple[Supervisor, Path]]:
    """A real `celery worker` process; yields its supervisor and log file."""
    argv = worker_argv(",".join(str(q) for q in queues), concurrency, pool, hostname=f"{name}@%h")
    with Supervisor(log_dir=log_dir) as sup:
        child = sup.start(name, argv, env={**os.environ, **env})
        log_file = log_dir / f"{name}.log"
        wait_until(lambda: child.alive() and b"ready." in log_file.read_bytes(), timeout_s=60)
        yield sup, log_file
