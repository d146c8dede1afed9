"""The queue path with real parts: a real Redis, a real worker process."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery
from kombu.entity import Exchange, Queue

from fleet.heartbeat import read_heartbeat
from stack.parts import celery_worker, producer_app, redis_server, wait_until
from workers.queues import ALL_QUEUES

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


class _Payload:
    """Unpickling this runs code: exactly what a worker must never do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_pickled_message_is_refused_on_every_queue_and_worker_lives_on(
    redis_url: str, tmp_path: Path
) -> None:
    env = {"FLEET_REDIS__URL": redis_url}
    marker = tmp_path / "executed"
    producer = Celery("outsider", broker=redis_url)
    app = producer_app(redis_url)
    with (
        redis.Redis.from_url(redis_url, decode_responses=True) as r,
        producer,
        app,
        celery_worker(env, ALL_QUEUES, tmp_path, name="all-queues") as (sup, log_file),
    ):
        producer.conf.update(task_serializer="pickle", accept_content=["pickle", "json"])
        exchange = Exchange("fleet", type="direct")  # type: ignore[no-untyped-call]
        for queue in ALL_QUEUES:
            producer.send_task(
                f"{queue.value}.heartbeat",
                args=(_Payload(marker),),
                queue=Queue(queue.value, exchange, routing_key=queue.value),  # type: ignore[no-untyped-call]
                serializer="pickle",
            )
        wait_until(
            lambda: log_file.read_text().count("refused message on queue") >= len(ALL_QUEUES)
        )
        log = log_file.read_text()
        assert log.count("Refusing to deserialize untrusted content of type pickle") >= len(
            ALL_QUEUES
        )
        for queue in ALL_QUEUES:
            assert f"refused message on queue {queue.value}:" in log
        assert not marker.exists(), "a pickled payload was executed"
        assert not sup.dead(), "the worker died on a pickled message"

        # The same worker still runs well-formed JSON work on every queue.
        for queue in ALL_QUEUES:
            app.send_task(f"{queue.value}.heartbeat")
        wait_until(lambda: all(read_heartbeat(r, q.value) for q in ALL_QUEUES))
        assert not sup.dead()
