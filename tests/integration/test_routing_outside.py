"""Outside agents end to end: a real `routing` worker, the sandbox over HTTP, the test
OTLP collector.

No agent of ours has the capability ``translate``; a sandbox agent listed in the
marketplace (its endpoint its A2A endpoint) has. With the default policy (outside agents
off) the task is refused for want of a candidate; with outside agents allowed it is
delivered to that endpoint, the discovery call (``execute_tool search_services``) is in
the task's trace, and a second task within the cache TTL makes no discovery call."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from config.settings import TracingSettings
from fleet import tracing
from fleet.hotstate import connect
from fleet.storage.db import engine_for, session_factory
from fleet.work import store
from stack.local import Stack, local_stack
from stack.parts import wait_until
from tests.support.fleet_rows import insert_agents, seeded_ids
from tests.support.otlp_collector import CollectedSpan, OtlpCollector
from workers.queues import TaskName

pytestmark = pytest.mark.integration

FINAL = {"completed", "failed", "canceled", "refused", "unroutable"}
DEFAULT = Path(__file__).resolve().parents[2] / "config" / "defaults" / "policy.yaml"


@pytest.fixture(scope="module")
def collector() -> Iterator[OtlpCollector]:
    with OtlpCollector() as c:
        yield c


@pytest.fixture(scope="module")
def traced(collector: OtlpCollector) -> TracingSettings:
    return TracingSettings(endpoint=collector.endpoint, schedule_delay_ms=50)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, traced: TracingSettings) -> Iterator[Stack]:
    with local_stack(
        tmp_path_factory.mktemp("routeoutside"), latency_ms=1, jitter_ms=0, tracing=traced
    ) as st:
        yield st


@pytest.fixture
def this_process(traced: TracingSettings) -> Iterator[None]:
    tracing.shutdown()
    tracing.configure(traced, "test-client")
    try:
        yield
    finally:
        tracing.shutdown()


def _received(stack: Stack) -> dict[str, int]:
    key = stack.settings.gateway.admin_key.get_secret_value()
    answer = httpx.get(
        f"{stack.settings.gateway_url}/_sandbox/a2a",
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    answer.raise_for_status()
    received: dict[str, int] = answer.json()["received"]
    return received


def _submit(stack: Stack, key: str) -> tuple[str, str]:
    """One ``translate`` task in a trace of its own; (trace id, the task's record key)."""
    with tracing.span("caller") as caller:
        carrier: dict[str, str] = {}
        tracing.inject(carrier)
        ids = tracing.ids_of(caller)
    assert ids is not None
    submission = {
        "type": "translate",
        "capabilities": ["translate"],
        "estimated_tokens": 300,
        "payer": {"kind": "segment", "id": "itout"},
        "idempotency_key": key,
        "fleet": "ito",
        "trace": {"traceparent": carrier["traceparent"]},
    }
    stack.celery().send_task(TaskName.SUBMIT_TASK.value, kwargs={"task": submission})
    tracing.force_flush()
    return ids[0], key


def _finished(stack: Stack, key: str) -> dict[str, Any]:
    r = connect(stack.settings.redis_url)
    sessions = session_factory(engine_for(stack.settings.sqlalchemy_url))

    def done() -> dict[str, Any] | None:
        holder = r.get(store.idem_key(key))
        if holder is None:
            return None
        record = store.task_state(r, sessions, str(holder))
        return record if record.get("state") in FINAL else None

    record: Any = wait_until(done, timeout_s=15)
    return dict(record)


def _trace(collector: OtlpCollector, trace_id: str) -> list[CollectedSpan]:
    spans = collector.wait_for(
        lambda got: any(s.trace_id == trace_id and s.name == "work.task translate" for s in got),
        timeout_s=10,
    )
    return [s for s in spans if s.trace_id == trace_id]


def test_outside_agents_take_work_only_when_the_policy_allows_them(
    stack: Stack, collector: OtlpCollector, this_process: None, tmp_path: Path
) -> None:
    sandbox = stack.sandbox()
    own = seeded_ids(sandbox.seed(1, prefix="itoown", profile="idle"))
    insert_agents(
        session_factory(engine_for(stack.settings.sqlalchemy_url)),
        own,
        fleet="ito",
        policy=stack.settings.policy,
    )  # capability "support" only
    (outside,) = seeded_ids(sandbox.seed(1, prefix="itoext", profile="idle"))
    listed = sandbox.list_service(outside, ["translate"], cost="0.05", trust_score=0.9)
    assert listed["endpoint"] == f"{stack.settings.gateway_url}/a2a/{outside}"
    # One of ours listed too: never an outside agent.
    sandbox.list_service(own[0], ["translate"], cost="0.05", trust_score=1.0)

    # Policy off (the default): no candidate.
    off = stack.start_worker(["routing"], concurrency=2, pool="threads", name="routing-off")
    _, key = _submit(stack, f"off-{uuid.uuid4().hex}")
    record = _finished(stack, key)
    assert record["state"] == "unroutable", record
    assert "no candidate" in record["reason"] and "translate" in record["reason"]
    stack.sup.stop(off)

    # Outside agents allowed, discovered by the free search_services, cached for 5 min.
    policy = tmp_path / "outside.yaml"
    policy.write_text(
        f"extends: {DEFAULT}\n"
        "routing:\n  outside:\n    allowed: true\n    discovery: search_services\n"
        "    min_trust_score: 0.5\n    max_cost_per_call: '0.10'\n    cache_ttl_s: 300\n"
    )
    stack.start_worker(
        ["routing"],
        concurrency=2,
        pool="threads",
        name="routing-on",
        extra_env={"FLEET_POLICY_FILE": str(policy)},
    )
    before = _received(stack).get(outside, 0)
    trace_id, key = _submit(stack, f"on-{uuid.uuid4().hex}")
    record = _finished(stack, key)
    assert record["state"] == "completed", record
    assert record["agent_id"] == outside
    attempt = record["attempts"][-1]
    assert attempt["outside"] is True and attempt["service_id"] == listed["id"]
    assert _received(stack).get(outside, 0) == before + 1

    spans = _trace(collector, trace_id)
    task = next(s for s in spans if s.name == "work.task translate")
    discover = next(s for s in spans if s.name == "work.discover")
    call = next(s for s in spans if s.name == "execute_tool search_services")
    assert discover.parent_span_id == task.span_id and call.parent_span_id == discover.span_id
    assert call.kind == "CLIENT" and discover.attributes["fleet.outside.cached"] is False
    invoke = next(s for s in spans if s.name.startswith("invoke_agent "))
    assert invoke.attributes["gen_ai.agent.id"] == outside

    # Within the cache TTL: delivered again, no discovery call.
    trace_id, key = _submit(stack, f"again-{uuid.uuid4().hex}")
    record = _finished(stack, key)
    assert record["state"] == "completed" and record["agent_id"] == outside, record
    spans = _trace(collector, trace_id)
    discover = next(s for s in spans if s.name == "work.discover")
    assert discover.attributes["fleet.outside.cached"] is True
    assert not any(s.name.startswith("execute_tool") for s in spans)
