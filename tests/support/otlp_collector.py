"""A test OTLP/HTTP trace collector: a local HTTP server that decodes what exporters post.

``POST /v1/traces`` with an ``ExportTraceServiceRequest`` (protobuf, optionally gzip or
deflate) is decoded with ``opentelemetry-proto`` into :class:`CollectedSpan` s; anything
else is answered 404 / 400 / 415 as a collector would. Runs in a thread of the test
process, so worker processes export to it over real HTTP::

    with OtlpCollector() as collector:
        settings = TracingSettings(endpoint=collector.endpoint, schedule_delay_ms=50)
        ...
        spans = collector.wait_for(lambda spans: any(s.name == "x" for s in spans))
"""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

_KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
_STATUS = {0: "UNSET", 1: "OK", 2: "ERROR"}


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, which)


@dataclass(frozen=True)
class CollectedSpan:
    trace_id: str  # 32 hex
    span_id: str  # 16 hex
    parent_span_id: str | None  # 16 hex, None for a root span
    name: str
    kind: str  # INTERNAL, SERVER, CLIENT, PRODUCER, CONSUMER
    attributes: dict[str, Any]
    status: str  # UNSET, OK, ERROR
    service_name: str | None
    resource: dict[str, Any] = field(default_factory=dict)
    events: tuple[str, ...] = ()
    start_ns: int = 0
    end_ns: int = 0


class OtlpCollector:
    """``endpoint`` is the root to configure (``http://127.0.0.1:PORT``)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._lock = threading.Condition()
        self._spans: list[CollectedSpan] = []
        self.requests = 0
        self.rejected = 0
        collector = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: bytes, ctype: str = "text/plain") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if self.path.rstrip("/") != "/v1/traces":
                    collector._reject()
                    self._answer(404, b"only /v1/traces")
                    return
                if "protobuf" not in (self.headers.get("Content-Type") or ""):
                    collector._reject()
                    self._answer(415, b"application/x-protobuf only")
                    return
                encoding = (self.headers.get("Content-Encoding") or "").lower()
                try:
                    if encoding == "gzip":
                        raw = gzip.decompress(raw)
                    elif encoding == "deflate":
                        raw = zlib.decompress(raw)
                    request = ExportTraceServiceRequest.FromString(raw)
                except Exception as exc:  # noqa: BLE001 - a bad body is the sender's problem
                    collector._reject()
                    self._answer(400, f"undecodable: {exc}".encode())
                    return
                collector._add(request)
                self._answer(
                    200,
                    ExportTraceServiceResponse().SerializeToString(),
                    "application/x-protobuf",
                )

        self._server = ThreadingHTTPServer((host, 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="otlp-collector", daemon=True
        )

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _reject(self) -> None:
        with self._lock:
            self.rejected += 1

    def _add(self, request: ExportTraceServiceRequest) -> None:
        decoded: list[CollectedSpan] = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    decoded.append(
                        CollectedSpan(
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_span_id=s.parent_span_id.hex() or None,
                            name=s.name,
                            kind=_KINDS.get(s.kind, str(s.kind)),
                            attributes={a.key: _value(a.value) for a in s.attributes},
                            status=_STATUS.get(s.status.code, str(s.status.code)),
                            service_name=resource.get("service.name"),
                            resource=resource,
                            events=tuple(e.name for e in s.events),
                            start_ns=s.start_time_unix_nano,
                            end_ns=s.end_time_unix_nano,
                        )
                    )
        with self._lock:
            self.requests += 1
            self._spans.extend(decoded)
            self._lock.notify_all()

    @property
    def spans(self) -> list[CollectedSpan]:
        with self._lock:
            return list(self._spans)

    def clear(self) -> None:
        with self._lock:
            self._spans.clear()

    def wait_for(
        self, done: Callable[[Sequence[CollectedSpan]], bool], timeout_s: float = 20.0
    ) -> list[CollectedSpan]:
        """The spans collected once ``done(spans)`` holds; AssertionError after timeout_s."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while not done(self._spans):
                left = deadline - time.monotonic()
                if left <= 0:
                    names = sorted({s.name for s in self._spans})
                    raise AssertionError(
                        f"collector: condition not met in {timeout_s}s; "
                        f"{len(self._spans)} spans so far: {names}"
                    )
                self._lock.wait(min(left, 0.5))
            return list(self._spans)

    def trace(self, trace_id: str) -> list[CollectedSpan]:
        return [s for s in self.spans if s.trace_id == trace_id]

    def named(self, name: str) -> list[CollectedSpan]:
        return [s for s in self.spans if s.name == name]


def by_id(spans: Sequence[CollectedSpan]) -> dict[str, CollectedSpan]:
    return {s.span_id: s for s in spans}


def ancestors(span: CollectedSpan, spans: Sequence[CollectedSpan]) -> list[str]:
    """The span ids from ``span``'s parent up to its root, nearest first; a parent that was
    not exported ends the list (named, so a test sees where the chain broke)."""
    known = by_id(spans)
    chain: list[str] = []
    parent = span.parent_span_id
    while parent is not None and parent not in chain:
        chain.append(parent)
        above = known.get(parent)
        parent = above.parent_span_id if above is not None else None
    return chain


def descends_from(span: CollectedSpan, ancestor_id: str, spans: Sequence[CollectedSpan]) -> bool:
    """Whether ``ancestor_id`` is ``span``'s parent, grandparent, ... (same trace)."""
    return ancestor_id in ancestors(span, spans)
