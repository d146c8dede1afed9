"""A message Redis handed over (BRPOP) whose unacknowledged record never landed (Redis died
between the two commands) is spooled by the worker and put back by the next one."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from kombu.transport import redis as redis_transport

from fleet.provisioning.pipeline import job_progress
from fleet.storage.db import engine_for, session_factory
from stack.local import Stack, local_stack
from stack.parts import wait_until
from tests.support.workload import fleet_manifest
from workers.queues import FleetQueue, TaskName
from workers.redelivery import spool_delivery, spool_lost_deliveries

pytestmark = pytest.mark.integration


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with local_stack(tmp_path / "stack") as st:
        assert httpx.post(f"{st.sandbox().url}/v1/register", json={"agent_id": "fleet-treasury"})
        yield st


def test_a_delivery_whose_record_failed_is_spooled_before_the_error_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def record_fails(self: Any, message: Any, delivery_tag: str) -> None:
        raise redis.exceptions.ConnectionError("Connection reset by peer")

    monkeypatch.setattr(redis_transport.QoS, "append", record_fails)
    spool = tmp_path / "spool"
    spool_lost_deliveries(spool)

    class Delivered:
        _raw = {"body": "e30=", "headers": {"task": "t"}, "properties": {}}
        delivery_info = {"exchange": "fleet", "routing_key": "audit"}

    with pytest.raises(redis.exceptions.ConnectionError):
        redis_transport.QoS.append(object(), Delivered(), "tag-1")
    kept = json.loads((spool / "tag-1.json").read_text())
    assert kept == [Delivered._raw, "fleet", "audit"]


def test_the_next_worker_of_the_queue_puts_a_spooled_delivery_back_and_runs_it(
    stack: Stack,
) -> None:
    job_id = uuid.uuid4().hex
    app = stack.celery()
    try:
        app.send_task(
            TaskName.PROVISION_FLEET,
            kwargs={"manifest": fleet_manifest(2, fleet="spooled"), "job_id": job_id},
        )
    finally:
        app.close()
    # What BRPOP does: the message leaves its queue. Its record is never written.
    r = redis.Redis.from_url(stack.settings.redis_url)
    popped = r.rpop(FleetQueue.PROVISIONING.value)
    assert popped is not None and r.llen(FleetQueue.PROVISIONING.value) == 0
    raw = json.loads(popped)
    tag = raw["properties"]["delivery_tag"]
    spool_delivery(stack.settings.data_dir / "spool", tag, raw, "fleet", "provisioning")

    stack.start_worker(["provisioning"], concurrency=2, pool="threads", name="provisioning")
    sessions = session_factory(engine_for(stack.settings.sqlalchemy_url))

    def done() -> bool:
        p = job_progress(sessions, job_id, with_agents=False)
        return p is not None and p.total == 2 and p.done == 2

    wait_until(done, timeout_s=90, interval_s=0.2)
    assert not list((stack.settings.data_dir / "spool").glob("*.json")), "spool emptied"
    r.close()
