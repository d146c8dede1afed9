"""A routed task's trace: a real `routing` worker exporting to the test OTLP collector.

The caller's trace context (the submission's ``trace``) is the parent of the task's span;
routing and the A2A call are its children, the A2A call a CLIENT span with the GenAI
attributes, and the traceparent the agent received names that span."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from config.settings import TracingSettings
from fleet import tracing
from fleet.budgets.models import SpendEntry
from fleet.hotstate import connect
from fleet.storage.db import engine_for, session_factory
from fleet.work import store
from stack.local import Stack, local_stack
from stack.parts import wait_until
from tests.support.fleet_rows import insert_agents, seeded_ids
from tests.support.otlp_collector import OtlpCollector
from workers.queues import TaskName

pytestmark = pytest.mark.integration


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
        tmp_path_factory.mktemp("routetrace"), latency_ms=1, jitter_ms=0, tracing=traced
    ) as st:
        ids = seeded_ids(st.sandbox().seed(2, prefix="ittrace", profile="idle"))
        insert_agents(
            session_factory(engine_for(st.settings.sqlalchemy_url)),
            ids,
            fleet="itt",
            policy=st.settings.policy,
        )
        st.start_worker(["routing"], concurrency=2, pool="threads", name="routing")
        yield st


@pytest.fixture
def this_process(traced: TracingSettings) -> Iterator[None]:
    tracing.shutdown()
    tracing.configure(traced, "test-client")
    try:
        yield
    finally:
        tracing.shutdown()


def test_a_routed_tasks_trace_links_the_caller_routing_and_the_a2a_call(
    stack: Stack, collector: OtlpCollector, this_process: None
) -> None:
    key = f"trace-{uuid.uuid4().hex}"
    with tracing.span("caller") as caller:
        carrier: dict[str, str] = {}
        tracing.inject(carrier)
        ids = tracing.ids_of(caller)
    assert ids is not None
    trace_id, caller_span = ids
    submission = {
        "type": "traced",
        "capabilities": ["support"],
        "estimated_tokens": 300,
        "payer": {"kind": "segment", "id": "ittrace"},
        "idempotency_key": key,
        "fleet": "itt",
        "trace": {"traceparent": carrier["traceparent"]},
    }
    stack.celery().send_task(TaskName.SUBMIT_TASK.value, kwargs={"task": submission})
    tracing.force_flush()
    names = {"work.task traced", "work.route", "work.admission", "work.settle"}
    spans = collector.wait_for(
        lambda got: (
            {s.name for s in got if s.trace_id == trace_id} >= names
            and any(s.name.startswith("invoke_agent ") for s in got if s.trace_id == trace_id)
        ),
        timeout_s=20,
    )
    mine = [s for s in spans if s.trace_id == trace_id]
    task = next(s for s in mine if s.name == "work.task traced")
    assert task.parent_span_id == caller_span
    assert task.attributes["gen_ai.operation.name"] == "invoke_agent"
    route = next(s for s in mine if s.name == "work.route")
    call = next(s for s in mine if s.name.startswith("invoke_agent "))
    assert route.parent_span_id == task.span_id and call.parent_span_id == task.span_id
    admission = next(s for s in mine if s.name == "work.admission")
    settle = next(s for s in mine if s.name == "work.settle")
    assert admission.parent_span_id == task.span_id and settle.parent_span_id == task.span_id
    assert call.kind == "CLIENT"
    assert call.attributes["gen_ai.agent.id"] == route.attributes["gen_ai.agent.id"]
    assert call.attributes["gen_ai.request.model"] == "frontier"
    assert call.attributes["gen_ai.usage.input_tokens"] == 300
    assert call.attributes["fleet.a2a.state"] == "completed"
    r = connect(stack.settings.redis_url)
    holder = str(r.get(store.idem_key(key)))
    record = store.task_state(r, session_factory(engine_for(stack.settings.sqlalchemy_url)), holder)
    assert record["state"] == "completed", record
    # The spend's ledger row carries the trace id (drained off the hot path).
    stack.celery().send_task(TaskName.BUDGET_DRAIN_LEDGER.value)
    sessions = session_factory(engine_for(stack.settings.sqlalchemy_url))

    def ledger_row() -> SpendEntry | None:
        with sessions() as s:
            return s.get(SpendEntry, f"{holder}.1")

    row: Any = wait_until(ledger_row, timeout_s=20)
    assert row.trace_id == trace_id and row.agent_id == call.attributes["gen_ai.agent.id"]
    assert record["trace_id"] == trace_id
    # The agent received the A2A call's own span as its parent.
    assert record["agent_traceparent"].startswith(f"00-{trace_id}-{call.span_id}-")
