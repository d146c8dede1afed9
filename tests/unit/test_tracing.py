"""fleet/tracing.py and the worker hooks without a collector: settings, off-mode, propagation.

Exports to a real collector are in tests/integration/test_tracing.py. What must hold in a
process that never configured tracing (or configured it off) runs in a fresh interpreter,
so nothing another test imported or configured hides an import or a thread.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import httpx
import pytest

from config.errors import ConfigError
from config.settings import TracingSettings, load_settings
from fleet import tracing
from fleet.audit.events import build_event
from fleet.gateway import GatewayClient, GatewayConfig, operations
from workers import tracing as worker_tracing

CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"


def test_tracing_is_off_by_default_and_the_endpoint_turns_it_on() -> None:
    assert not TracingSettings().enabled and TracingSettings().traces_url is None
    on = TracingSettings(endpoint="http://collector:4318")
    assert on.enabled and on.traces_url == "http://collector:4318/v1/traces"
    full = TracingSettings(endpoint="https://c.example/otlp/v1/traces")
    assert full.traces_url == "https://c.example/otlp/v1/traces"
    assert not TracingSettings(endpoint="").enabled  # compose's ${VAR:-}


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("FLEET_TRACING__ENDPOINT", "grpc://collector:4317", "tracing.endpoint"),
        ("FLEET_TRACING__ENDPOINT", "not a url", "tracing.endpoint"),
        ("FLEET_TRACING__SAMPLE_RATIO", "1.5", "tracing.sample_ratio"),
        ("FLEET_TRACING__SCHEDULE_DELAY_MS", "soon", "tracing.schedule_delay_ms"),
    ],
)
def test_a_bad_tracing_setting_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, named: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert variable in str(caught.value) and named in str(caught.value)


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_TRACING__ENDPOINT", "http://127.0.0.1:4318/")
    monkeypatch.setenv("FLEET_TRACING__SAMPLE_RATIO", "0.25")
    settings = load_settings().tracing
    assert settings.traces_url == "http://127.0.0.1:4318/v1/traces"
    assert settings.sample_ratio == 0.25


_OFF_PROCESS = textwrap.dedent(
    f"""
    import json, sys, threading
    import httpx
    from config.settings import Settings
    from fleet import tracing
    from fleet.audit.events import build_event
    from fleet.gateway import GatewayClient, GatewayConfig, operations
    import workers.app  # the worker's signal hooks, as a worker process has them

    tracing.configure(Settings().tracing, "fleet-worker")
    seen = []
    def answer(request):
        seen.append(request.headers.get("traceparent"))
        return httpx.Response(200, json={{"balance": "1.00", "currency": "CREDITS"}},
                              headers={{"X-Charged": "0.00"}})
    client = GatewayClient(GatewayConfig(url="http://gw.test", admin_key="k"),
                           transport=httpx.MockTransport(answer))
    with tracing.span("ignored") as outside:
        outside_recording = outside.is_recording()
        outside_trace = tracing.current_trace_id()
    with tracing.extracted({{"traceparent": "{TRACEPARENT}"}}):
        inside = tracing.current_trace_id()
        with tracing.span("still nothing") as s:
            span_recording = s.is_recording()
        client.run(operations.get_balance("a1"))
        event = build_event(actor="t", action="a", subject="a1")
        carrier = {{}}
        tracing.inject(carrier)
    client.close()
    print(json.dumps({{
        "enabled": tracing.enabled(),
        "sdk": sorted(m for m in sys.modules if m.startswith("opentelemetry.sdk.trace")
                      or m.startswith("opentelemetry.exporter")),
        "provider": tracing._provider is not None,
        "threads": sorted(t.name for t in threading.enumerate()),
        "outside": [outside_recording, outside_trace],
        "inside": inside, "span_recording": span_recording,
        "sent": seen, "event": [event.trace_id, event.span_id], "carrier": carrier,
    }}))
    """
)


def test_off_by_default_loads_no_sdk_starts_no_thread_yet_carries_the_callers_trace() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _OFF_PROCESS],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "FLEET_ENVIRONMENT": "test"},
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["enabled"] is False
    # (redis-py imports the SDK's metrics package itself; the tracing SDK stays out.)
    assert got["sdk"] == [], "tracing off must not load the tracing SDK or an exporter"
    assert got["provider"] is False
    assert got["threads"] == ["MainThread"], "tracing off must start no exporter thread"
    assert got["outside"] == [False, None]
    assert got["inside"] == CALLER_TRACE and got["span_recording"] is False
    # The gateway call continues the caller's trace with a span id of its own.
    (sent,) = got["sent"]
    version, trace_id, span_id, _ = sent.split("-")
    assert (version, trace_id) == ("00", CALLER_TRACE) and span_id != CALLER_SPAN
    # An audit event built there carries the caller's trace, and the propagator passes it on.
    assert got["event"] == [CALLER_TRACE, CALLER_SPAN]
    assert got["carrier"]["traceparent"] == TRACEPARENT


def test_outside_any_span_there_is_no_trace_id_and_nothing_to_inject() -> None:
    assert tracing.current_trace_id() is None and tracing.current_ids() is None
    carrier: dict[str, str] = {}
    tracing.inject(carrier)
    assert carrier == {}
    assert build_event(actor="t", action="a", subject="s").trace_id is None


@pytest.mark.parametrize(
    "header",
    [
        "garbage",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333-01",  # span id too short
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # invalid trace id
        "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",  # upper case
    ],
)
def test_a_malformed_traceparent_is_ignored_as_w3c_says(header: str) -> None:
    with tracing.extracted({"traceparent": header}):
        assert tracing.current_trace_id() is None
    assert tracing.extract({"traceparent": header}) is None


def test_a_callers_unsampled_trace_stays_unsampled_at_the_gateway() -> None:
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["traceparent"])
        return httpx.Response(200, json={"balance": "1.00", "currency": "CREDITS"})

    client = GatewayClient(
        GatewayConfig(url="http://gw.test", admin_key="k"), transport=httpx.MockTransport(answer)
    )
    with client, tracing.extracted({"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-00"}):
        client.send(operations.get_balance("a1"))
    (sent,) = seen
    assert sent.startswith(f"00-{CALLER_TRACE}-") and sent.endswith("-00")


def test_explicit_trace_ids_win_over_the_current_span() -> None:
    with tracing.extracted({"traceparent": TRACEPARENT}):
        event = build_event(actor="t", action="a", subject="s", trace_id="1" * 32, span_id="2" * 16)
    assert (event.trace_id, event.span_id) == ("1" * 32, "2" * 16)


def test_a_gateway_call_outside_any_span_roots_a_trace_of_its_own() -> None:
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["traceparent"])
        return httpx.Response(200, json={"balance": "1.00", "currency": "CREDITS"})

    client = GatewayClient(
        GatewayConfig(url="http://gw.test", admin_key="k"), transport=httpx.MockTransport(answer)
    )
    with client:
        result = client.send(operations.get_balance("a1"))
    assert seen == [result.trace.traceparent]
    assert result.trace.trace_id != CALLER_TRACE


def test_the_publish_hook_writes_the_senders_traceparent_and_keeps_an_explicit_one() -> None:
    headers: dict[str, object] = {}
    worker_tracing._on_publish(headers=headers)
    assert "traceparent" not in headers  # no span, nothing to carry
    with tracing.extracted({"traceparent": TRACEPARENT}):
        worker_tracing._on_publish(headers=headers)
        explicit: dict[str, object] = {"traceparent": "00-" + "3" * 32 + "-" + "4" * 16 + "-01"}
        worker_tracing._on_publish(headers=explicit)
    assert headers["traceparent"] == TRACEPARENT
    assert explicit["traceparent"] == "00-" + "3" * 32 + "-" + "4" * 16 + "-01"


def test_the_task_hooks_run_the_task_in_the_senders_trace_and_restore_the_context() -> None:
    task = SimpleNamespace(
        name="provisioning.provision_agent",
        request=SimpleNamespace(traceparent=TRACEPARENT, delivery_info={"routing_key": "q"}),
    )
    assert tracing.current_trace_id() is None
    worker_tracing._on_prerun(task_id="t1", task=task)
    try:
        assert tracing.current_trace_id() == CALLER_TRACE
        assert build_event(actor="t", action="a", subject="s").trace_id == CALLER_TRACE
    finally:
        worker_tracing._on_postrun(task_id="t1", state="SUCCESS")
    assert tracing.current_trace_id() is None
    # A message without a traceparent runs outside any trace (tracing off).
    bare = SimpleNamespace(name="x", request=SimpleNamespace(delivery_info={}))
    worker_tracing._on_prerun(task_id="t2", task=bare)
    assert tracing.current_trace_id() is None
    worker_tracing._on_postrun(task_id="t2", state="SUCCESS")


def test_remote_context_marks_the_parent_remote_and_sampled() -> None:
    from opentelemetry import trace as otel_trace

    ctx = tracing.remote_context(CALLER_TRACE, CALLER_SPAN)
    span_context = otel_trace.get_current_span(ctx).get_span_context()
    assert span_context.is_remote and span_context.trace_flags.sampled
    assert otel_trace.format_trace_id(span_context.trace_id) == CALLER_TRACE
