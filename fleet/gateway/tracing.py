"""W3C trace context (``traceparent``) without an OpenTelemetry dependency.

A call made with ``trace=ctx`` sends each attempt as a new child span of
``ctx``; the result (and any error) carries the span that was used, so the
audit entry can record it and a collector can stitch the trace together.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_INVALID_TRACE = "0" * 32
_INVALID_SPAN = "0" * 16


def _new_span_id() -> str:
    return secrets.token_hex(8)


@dataclass(frozen=True, slots=True)
class TraceContext:
    trace_id: str  # 32 lowercase hex
    span_id: str  # 16 lowercase hex
    # The W3C sampled flag: False when the tracer dropped this trace (fleet/tracing.py).
    sampled: bool = True

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[0-9a-f]{32}", self.trace_id) or self.trace_id == _INVALID_TRACE:
            raise ValueError(f"invalid trace id {self.trace_id!r}")
        if not re.fullmatch(r"[0-9a-f]{16}", self.span_id) or self.span_id == _INVALID_SPAN:
            raise ValueError(f"invalid span id {self.span_id!r}")

    @classmethod
    def new(cls) -> TraceContext:
        """A fresh trace with its root span."""
        return cls(secrets.token_hex(16), _new_span_id())

    def child(self) -> TraceContext:
        """A new span in the same trace."""
        return TraceContext(self.trace_id, _new_span_id(), self.sampled)

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"

    @classmethod
    def from_traceparent(cls, header: str) -> TraceContext:
        match = _TRACEPARENT.match(header.strip().lower())
        if match is None:
            raise ValueError(f"invalid traceparent {header!r}")
        return cls(match.group(1), match.group(2), bool(int(match.group(3), 16) & 1))


__all__ = ["TraceContext"]
