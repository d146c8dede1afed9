"""Traces with real parts: worker processes export to a test OTLP/HTTP collector.

The stack runs with tracing on (``tracing.endpoint`` = the collector in this process);
the test process traces too, so a span opened here is the parent of what the workers do
with the messages sent inside it: context crosses the Redis queue in the messages'
headers. Gateway calls go to the sandbox over HTTP; audit entries are appended by the
audit worker into the database and read back from there.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence

import httpx
import pytest
from sqlalchemy import select

from config.settings import ApiSettings, FlowerSettings, TracingSettings
from fleet import tracing
from fleet.audit.log import AuditLog
from fleet.audit.models import AuditEntry
from fleet.audit.verify import verify_log
from fleet.gateway import GatewayClient, GatewayConfig, operations
from fleet.gateway.errors import GatewayError
from fleet.gateway.loop import LoopGatewayClient
from fleet.provisioning.pipeline import job_progress
from fleet.storage.db import engine_for, session_factory
from stack.local import Stack, local_stack
from stack.parts import wait_until
from stack.processes import free_port
from tests.support.otlp_collector import (
    CollectedSpan,
    OtlpCollector,
    ancestors,
    by_id,
    descends_from,
)
from tests.support.workload import fleet_manifest
from workers.queues import TaskName

pytestmark = pytest.mark.integration

TREASURY = "fleet-treasury"


@pytest.fixture(scope="module")
def collector() -> Iterator[OtlpCollector]:
    with OtlpCollector() as c:
        yield c


@pytest.fixture(scope="module")
def traced(collector: OtlpCollector) -> TracingSettings:
    return TracingSettings(endpoint=collector.endpoint, schedule_delay_ms=50)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, traced: TracingSettings) -> Iterator[Stack]:
    from pydantic import SecretStr

    with local_stack(
        tmp_path_factory.mktemp("tracing"),
        api=ApiSettings(port=free_port(), token=SecretStr("test-token")),
        flower=FlowerSettings(port=free_port(), password=SecretStr("test-flower")),
        tracing=traced,
    ) as st:
        made = httpx.post(f"{st.sandbox().url}/v1/register", json={"agent_id": TREASURY})
        assert made.status_code == 201, made.text
        # prefork: each child configures tracing after the fork (worker_process_init).
        st.start_worker(["provisioning"], concurrency=2, name="provisioning")
        st.start_worker(["audit"], concurrency=1, name="audit")
        yield st


@pytest.fixture
def this_process(traced: TracingSettings) -> Iterator[None]:
    """Tracing on in the test process too, to the same collector."""
    tracing.shutdown()
    tracing.configure(traced, "test-client")
    try:
        yield
    finally:
        tracing.shutdown()


def test_gateway_call_is_a_client_span_with_genai_and_http_attributes(
    stack: Stack, collector: OtlpCollector, this_process: None
) -> None:
    with GatewayClient.from_settings(stack.settings) as client:
        with tracing.span("caller") as caller:
            caller_ids = tracing.ids_of(caller)
            ok = client.send(operations.get_balance(TREASURY))
            with pytest.raises(GatewayError):
                client.run(operations.get_balance("no-such-agent-" + uuid.uuid4().hex[:8]))
    assert caller_ids is not None
    tracing.force_flush()
    spans = collector.wait_for(
        lambda got: sum(s.trace_id == caller_ids[0] for s in got) >= 3, timeout_s=10
    )
    mine = [s for s in spans if s.trace_id == caller_ids[0]]
    calls = [s for s in mine if s.name == "execute_tool get_balance"]
    assert len(calls) == 2, [s.name for s in mine]
    good = next(s for s in calls if s.span_id == ok.trace.span_id)  # the traceparent sent
    assert good.kind == "CLIENT" and good.parent_span_id == caller_ids[1]
    assert good.service_name == "test-client"
    attrs = good.attributes
    assert attrs["gen_ai.operation.name"] == "execute_tool"
    assert attrs["gen_ai.tool.name"] == "get_balance"
    assert attrs["gen_ai.agent.id"] == TREASURY
    assert attrs["http.request.method"] == "GET"
    assert attrs["http.response.status_code"] == 200
    assert attrs["server.address"] == "127.0.0.1"
    assert attrs["server.port"] == stack.settings.sandbox.port
    assert attrs["url.full"].endswith(f"/v1/billing/wallets/{TREASURY}/balance")
    assert attrs["fleet.gateway.charged"] == "0.00"
    assert good.status == "UNSET"
    bad = next(s for s in calls if s is not good)
    assert bad.status == "ERROR" and bad.attributes["error.type"] == "404"
    assert bad.attributes["http.response.status_code"] == 404


def test_the_loop_client_keeps_the_callers_span_across_its_thread(
    stack: Stack, collector: OtlpCollector, this_process: None
) -> None:
    client = LoopGatewayClient.from_settings(stack.settings)
    try:
        with tracing.span("loop caller") as caller:
            ids = tracing.ids_of(caller)
            result = client.send(operations.get_balance(TREASURY))
    finally:
        client.close()
    assert ids is not None and result.trace.trace_id == ids[0]
    tracing.force_flush()
    spans = collector.wait_for(
        lambda got: any(s.span_id == result.trace.span_id for s in got), timeout_s=10
    )
    call = by_id(spans)[result.trace.span_id]
    assert call.parent_span_id == ids[1]


def test_a_task_enqueued_in_a_span_continues_its_trace_in_the_worker_and_its_audit_entries(
    stack: Stack, collector: OtlpCollector, this_process: None
) -> None:
    manifest = fleet_manifest(1, fleet="traced", groups=1)
    job_id = uuid.uuid4().hex
    producer = stack.celery()
    try:
        with tracing.span("submit manifest") as root:
            root_ids = tracing.ids_of(root)
            producer.send_task(
                TaskName.PROVISION_FLEET, kwargs={"manifest": manifest, "job_id": job_id}
            )
    finally:
        producer.close()
    assert root_ids is not None
    trace_id, root_span = root_ids
    sessions = session_factory(engine_for(stack.settings.sqlalchemy_url))

    def finished() -> bool:
        p = job_progress(sessions, job_id)
        return p is not None and p.state == "done"

    wait_until(finished, timeout_s=60)
    tracing.force_flush()

    # The audit entries the work caused carry its trace id (read from the database).
    log = AuditLog.from_settings(stack.settings)

    def entries() -> list[tuple[str, str | None, str | None]]:
        with log.engine.connect() as conn:
            rows = conn.execute(
                select(AuditEntry.action, AuditEntry.trace_id, AuditEntry.span_id).where(
                    AuditEntry.subject.like("traced-%")
                )
            ).all()
        return [(r.action, r.trace_id, r.span_id) for r in rows]

    wait_until(lambda: len(entries()) > 0, timeout_s=30)
    found = entries()
    assert all(t == trace_id for _, t, _ in found), found
    entry_spans = {span_id for _, _, span_id in found}

    def exported(got: Sequence[CollectedSpan]) -> bool:
        ids = {s.span_id for s in got if s.trace_id == trace_id}
        names = {s.name for s in got if s.trace_id == trace_id}
        return entry_spans <= ids and "execute_tool register_agent" in names

    spans = [s for s in collector.wait_for(exported, timeout_s=30) if s.trace_id == trace_id]
    known = by_id(spans)
    fleet_task = [s for s in spans if s.name == f"process {TaskName.PROVISION_FLEET}"]
    assert len(fleet_task) == 1, sorted(s.name for s in spans)
    # The worker's span of the task is the child of the span that sent the message.
    assert fleet_task[0].parent_span_id == root_span
    assert fleet_task[0].kind == "CONSUMER" and fleet_task[0].service_name == "fleet-worker"
    assert fleet_task[0].attributes["messaging.system"] == "celery"
    assert fleet_task[0].attributes["messaging.destination.name"] == "provisioning"
    # A gateway call the work made, a queue hop further down, is in the same trace and
    # descends from the sender's span through the task that made it.
    register = next(s for s in spans if s.name == "execute_tool register_agent")
    assert register.kind == "CLIENT" and register.service_name == "fleet-worker"
    assert str(register.attributes["gen_ai.agent.id"]).startswith("traced-seg0")
    assert register.attributes["http.response.status_code"] == 201
    assert ancestors(register, spans)[-1] == root_span
    assert descends_from(register, fleet_task[0].span_id, spans)
    made_by = known[register.parent_span_id or ""]
    assert made_by.kind == "CONSUMER" and made_by.name.startswith("process provisioning.")
    # Each entry names the span that was current where it was recorded: a task's span.
    assert all(known[span_id].kind == "CONSUMER" for span_id in entry_spans), entry_spans
    assert len(log.entries_for_trace(trace_id)) >= len(found)
    report = verify_log(log)
    assert report.ok, report.summary()


def test_each_attempt_of_a_retried_call_is_its_own_span_under_the_caller(
    collector: OtlpCollector, this_process: None
) -> None:
    answers = iter([503, 200])
    sent: list[str] = []

    def gateway(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers["traceparent"])
        status = next(answers)
        if status != 200:
            return httpx.Response(status, json={"type": "x/unavailable", "status": status})
        return httpx.Response(
            200, json={"balance": "1.00", "currency": "CREDITS"}, headers={"X-Charged": "0.10"}
        )

    config = GatewayConfig(url="http://gw.test:8080", admin_key="k", backoff_initial_s=0.0)
    with GatewayClient(config, transport=httpx.MockTransport(gateway), sleep=lambda _: None) as c:
        with tracing.span("retrying caller") as caller:
            ids = tracing.ids_of(caller)
            result = c.send(operations.get_balance("a1"))
    assert ids is not None and result.attempts == 2
    tracing.force_flush()
    spans = collector.wait_for(
        lambda got: sum(s.parent_span_id == ids[1] for s in got) >= 2, timeout_s=10
    )
    first, second = sorted(
        (s for s in spans if s.parent_span_id == ids[1]), key=lambda s: s.start_ns
    )
    assert first.status == "ERROR" and first.attributes["error.type"] == "503"
    assert "http.request.resend_count" not in first.attributes
    assert second.attributes["http.request.resend_count"] == 1
    assert second.span_id == result.trace.span_id and second.status == "UNSET"
    assert second.attributes["fleet.gateway.charged"] == "0.10"
    assert second.attributes["server.port"] == 8080
    # What the gateway received on each attempt names that attempt's span.
    assert sent == [f"00-{s.trace_id}-{s.span_id}-01" for s in (first, second)]
