"""Traces: OpenTelemetry spans named and attributed by the GenAI semantic conventions.

The whole interface the work plane needs::

    from fleet import tracing

    tracing.configure(settings.tracing, "fleet-worker")   # once per process; idempotent
    with tracing.span("invoke_agent", kind=tracing.SpanKind.CLIENT,
                      **{tracing.GENAI_OPERATION_NAME: "invoke_agent",
                         tracing.GENAI_AGENT_ID: agent_id}) as s:
        s.set_attribute(tracing.GENAI_USAGE_INPUT_TOKENS, 120)
        tracing.current_trace_id()                        # 32 hex, or None outside a span
        tracing.inject(headers)                           # W3C traceparent (+ tracestate)
    with tracing.extracted(message_headers):              # continue a caller's trace
        ...

Off (no endpoint in ``settings.tracing``, the default) neither the tracing SDK nor
the exporter is imported, no provider is built and no exporter thread runs:
:func:`span` hands back the span that is already current (a no-op context
manager), so the cost is one global read.
W3C trace context still travels: :func:`extracted` attaches a caller's context
and :func:`inject` passes it on, so the gateway's ``traceparent`` and the audit
entries keep the caller's trace id even in a process that exports nothing.

On, spans go to the OTLP/HTTP collector in batches from a background thread
(the SDK's ``BatchSpanProcessor``; it restarts itself in a forked child). A
new trace is kept with probability ``sample_ratio``, decided on its trace id so
every process keeps or drops the same trace; within a process a span follows
its parent's decision, and a caller that marked its trace unsampled is obeyed.

This module imports no Celery and nothing else of ours: the worker hook
(``workers/tracing.py``) and the gateway client call it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import threading
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.context import Context as Context
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.trace import Span as Span
from opentelemetry.trace import SpanKind as SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from config.settings import TracingSettings

log = logging.getLogger("fleet.tracing")

INTERNAL = SpanKind.INTERNAL
CLIENT = SpanKind.CLIENT
SERVER = SpanKind.SERVER
PRODUCER = SpanKind.PRODUCER
CONSUMER = SpanKind.CONSUMER

INSTRUMENTATION_NAME = "fleet-commander"

# --- GenAI semantic conventions (gen_ai.*) -------------------------------------------------
GENAI_OPERATION_NAME = "gen_ai.operation.name"
GENAI_PROVIDER_NAME = "gen_ai.provider.name"
GENAI_AGENT_ID = "gen_ai.agent.id"
GENAI_AGENT_NAME = "gen_ai.agent.name"
GENAI_AGENT_DESCRIPTION = "gen_ai.agent.description"
GENAI_CONVERSATION_ID = "gen_ai.conversation.id"
GENAI_REQUEST_MODEL = "gen_ai.request.model"
GENAI_REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
GENAI_RESPONSE_MODEL = "gen_ai.response.model"
GENAI_RESPONSE_ID = "gen_ai.response.id"
GENAI_RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
GENAI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GENAI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GENAI_TOOL_NAME = "gen_ai.tool.name"
GENAI_TOOL_CALL_ID = "gen_ai.tool.call.id"
GENAI_TOOL_TYPE = "gen_ai.tool.type"
GENAI_DATA_SOURCE_ID = "gen_ai.data_source.id"

# Well-known gen_ai.operation.name values.
OP_INVOKE_AGENT = "invoke_agent"
OP_EXECUTE_TOOL = "execute_tool"
OP_CHAT = "chat"
OP_CREATE_AGENT = "create_agent"

# --- HTTP, URL, server, error and messaging conventions used here ---------------------------
HTTP_REQUEST_METHOD = "http.request.method"
HTTP_REQUEST_RESEND_COUNT = "http.request.resend_count"
HTTP_RESPONSE_STATUS_CODE = "http.response.status_code"
URL_FULL = "url.full"
URL_TEMPLATE = "url.template"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
ERROR_TYPE = "error.type"
MESSAGING_SYSTEM = "messaging.system"
MESSAGING_OPERATION_NAME = "messaging.operation.name"
MESSAGING_OPERATION_TYPE = "messaging.operation.type"
MESSAGING_DESTINATION_NAME = "messaging.destination.name"
MESSAGING_MESSAGE_ID = "messaging.message.id"

# --- Ours ----------------------------------------------------------------------------------
FLEET_NAME = "fleet.name"
FLEET_TASK_ID = "fleet.task.id"
FLEET_TASK_NAME = "fleet.task.name"  # a Celery task's dotted name
FLEET_TASK_STATE = "fleet.task.state"  # SUCCESS, FAILURE, RETRY ... as Celery ends it
FLEET_COST_ESTIMATE = "fleet.cost.estimate"
FLEET_COST_ACTUAL = "fleet.cost.actual"
FLEET_GATEWAY_CHARGED = "fleet.gateway.charged"  # the answer's X-Charged, as its decimal text
FLEET_BUDGET_REFUSED = "fleet.budget.refused"

# A W3C traceparent as pydantic models should accept it (version 00; ids not all zero are
# checked by TraceContext / the propagator).
TRACEPARENT_PATTERN = r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"
_TRACEPARENT = re.compile(TRACEPARENT_PATTERN)

Attribute = str | int | float | bool

_PROPAGATOR = TraceContextTextMapPropagator()
_lock = threading.Lock()
_configured = False
_provider: TracerProvider | None = None
_tracer: otel_trace.Tracer | None = None


def configure(settings: TracingSettings, service_name: str) -> None:
    """Set up this process's tracing from ``settings``; the first call wins, later ones do
    nothing (idempotent). Without an endpoint tracing stays off and imports no SDK."""
    global _configured, _provider, _tracer
    with _lock:
        if _configured:
            return
        _configured = True
        url = settings.traces_url
        if url is None:
            return
        # Imported here: a process with tracing off never loads the SDK or the exporter.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        ratio = TraceIdRatioBased(settings.sample_ratio)
        resource = Resource.create(
            {
                "service.name": service_name,
                "service.namespace": settings.service_name,
                "service.instance.id": f"{socket.gethostname()}-{os.getpid()}",
            }
        )
        provider = TracerProvider(
            resource=resource,
            sampler=ParentBased(root=ratio, remote_parent_sampled=ratio),
        )
        exporter = OTLPSpanExporter(endpoint=url, timeout=settings.export_timeout_s)
        provider.add_span_processor(
            BatchSpanProcessor(
                exporter,
                max_queue_size=settings.max_queue_size,
                schedule_delay_millis=settings.schedule_delay_ms,
                max_export_batch_size=min(settings.max_export_batch_size, settings.max_queue_size),
                export_timeout_millis=settings.export_timeout_s * 1000,
            )
        )
        _provider = provider
        _tracer = provider.get_tracer(INSTRUMENTATION_NAME)
        log.info("tracing to %s as %s (sample ratio %s)", url, service_name, settings.sample_ratio)


def enabled() -> bool:
    """Whether spans are recorded and exported in this process."""
    return _tracer is not None


def force_flush(timeout_s: float = 5.0) -> bool:
    """Export what is waiting now (e.g. before a process exits); True when done in time."""
    provider = _provider
    if provider is None:
        return True
    return provider.force_flush(int(timeout_s * 1000))


def shutdown() -> None:
    """Flush and stop the exporter; the process may :func:`configure` again afterwards."""
    global _configured, _provider, _tracer
    with _lock:
        provider, _provider, _tracer, _configured = _provider, None, None, False
    if provider is not None:
        provider.shutdown()


def span(
    name: str, *, kind: SpanKind = SpanKind.INTERNAL, **attributes: Attribute
) -> AbstractContextManager[Span]:
    """A new span, current inside the block, child of the current one; an exception that
    leaves the block is recorded on it and sets its status to error. Off, the span that is
    already current (a non-recording one, or INVALID_SPAN) and nothing else."""
    tracer = _tracer
    if tracer is None:
        return contextlib.nullcontext(otel_trace.get_current_span())
    return tracer.start_as_current_span(name, kind=kind, attributes=attributes or None)


def start_span(
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    parent: Context | None = None,
    attributes: Mapping[str, Attribute] | None = None,
) -> Span | None:
    """A span that is not made current, child of ``parent`` (a context from
    :func:`current_context` or :func:`remote_context`; default the current one), for code
    that ends it elsewhere (a call made over several callbacks). None when tracing is off.
    The caller must ``end()`` it."""
    tracer = _tracer
    if tracer is None:
        return None
    return tracer.start_span(name, context=parent, kind=kind, attributes=attributes)


def current_context() -> Context:
    """The current context, to hand to code that runs later or on another thread."""
    return otel_context.get_current()


def remote_context(trace_id: str, span_id: str, *, sampled: bool = True) -> Context:
    """A context whose current span is the remote span ``trace_id``/``span_id`` (hex), e.g.
    a ``TraceContext`` a caller passed explicitly; sampled remote parents are kept by the
    sample ratio."""
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
    remote = SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=True, trace_flags=flags)
    return otel_trace.set_span_in_context(NonRecordingSpan(remote), Context())


def empty_context() -> Context:
    """A context with no span: a span started in it roots a new trace."""
    return Context()


def context_with(s: Span) -> Context:
    """A context whose current span is ``s`` (to make later spans its children)."""
    return otel_trace.set_span_in_context(s, Context())


def ids_of(s: Span) -> tuple[str, str] | None:
    """(trace id, span id) in hex of a span, or None for an invalid one."""
    ctx = s.get_span_context()
    if not ctx.is_valid:
        return None
    return otel_trace.format_trace_id(ctx.trace_id), otel_trace.format_span_id(ctx.span_id)


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the current span in hex, or None outside any span."""
    return ids_of(otel_trace.get_current_span())


def current_sampled() -> bool:
    """Whether the current span's trace is sampled (W3C flag); True outside any span."""
    ctx = otel_trace.get_current_span().get_span_context()
    return ctx.trace_flags.sampled if ctx.is_valid else True


def current_trace_id() -> str | None:
    """The current trace id as 32 lowercase hex, or None outside a span."""
    ctx = otel_trace.get_current_span().get_span_context()
    return otel_trace.format_trace_id(ctx.trace_id) if ctx.is_valid else None


def current_span_id() -> str | None:
    """The current span id as 16 lowercase hex, or None outside a span."""
    ctx = otel_trace.get_current_span().get_span_context()
    return otel_trace.format_span_id(ctx.span_id) if ctx.is_valid else None


def inject(carrier: MutableMapping[str, str]) -> None:
    """Write the current span's W3C ``traceparent`` (and ``tracestate``) into ``carrier``;
    nothing outside a span."""
    _PROPAGATOR.inject(carrier)


@contextlib.contextmanager
def extracted(carrier: Mapping[str, str]) -> Iterator[None]:
    """Inside the block the caller's context (``traceparent``/``tracestate`` in ``carrier``)
    is current, so new spans are its children. A missing or malformed traceparent is
    ignored, as W3C Trace Context says: the block then runs in the context it had."""
    header = carrier.get("traceparent")
    if not isinstance(header, str) or _TRACEPARENT.match(header.strip()) is None:
        if header is not None:
            log.debug("ignoring malformed traceparent %r", header)
        yield
        return
    ctx = _PROPAGATOR.extract(carrier)
    token = otel_context.attach(ctx)
    try:
        yield
    finally:
        otel_context.detach(token)


def attach(ctx: Context) -> object:
    """Make ``ctx`` current; returns the token for :func:`detach` (for hooks that open and
    close around code they do not wrap, e.g. Celery's task_prerun / task_postrun)."""
    return otel_context.attach(ctx)


def detach(token: object) -> None:
    otel_context.detach(token)  # type: ignore[arg-type]


def extract(carrier: Mapping[str, str]) -> Context | None:
    """The caller's context from ``carrier``, or None when it carries no valid traceparent."""
    header = carrier.get("traceparent")
    if not isinstance(header, str) or _TRACEPARENT.match(header.strip()) is None:
        return None
    ctx = _PROPAGATOR.extract(carrier)
    if not otel_trace.get_current_span(ctx).get_span_context().is_valid:
        return None
    return ctx


def set_error(s: Span, error: BaseException | str) -> None:
    """Mark ``s`` failed: status error, ``error.type``, and the exception as an event."""
    if isinstance(error, BaseException):
        s.set_attribute(ERROR_TYPE, type(error).__qualname__)
        s.record_exception(error)
        s.set_status(Status(StatusCode.ERROR, str(error)[:200]))
    else:
        s.set_attribute(ERROR_TYPE, error)
        s.set_status(Status(StatusCode.ERROR))


def set_attributes(s: Span, attributes: Mapping[str, Any]) -> None:
    """Set the attributes whose value is not None (None is not an OTel attribute value)."""
    for key, value in attributes.items():
        if value is not None:
            s.set_attribute(key, value)
