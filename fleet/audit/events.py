"""What a producer hands to the audit log: one validated, redacted, float-free event."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import Enum, StrEnum
from typing import Any, Protocol

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from fleet import tracing
from fleet.clock import Clock, SystemClock


class Article(StrEnum):
    """The EU AI Act article an entry serves as evidence for."""

    RISK_MANAGEMENT = "Art. 9"
    DOCUMENTATION = "Art. 11"
    RECORD_KEEPING = "Art. 12"
    TRANSPARENCY = "Art. 13"
    HUMAN_OVERSIGHT = "Art. 14"
    ACCURACY = "Art. 15"


class ApprovalState(StrEnum):
    """Whether, and how, a human approved the action an entry records."""

    NONE = "none"  # no approval involved (observations, LOW actions)
    PENDING = "pending"  # waiting for approvers; the action has not run
    APPROVED = "approved"  # pre-approved by the quorum (HIGH, CRITICAL)
    DENIED = "denied"  # rejected by an approver, or expired unapproved
    REVIEW_PENDING = "review_pending"  # MEDIUM: ran, awaits post-hoc review
    REVIEWED = "reviewed"  # MEDIUM: reviewed after the fact


class TraceLike(Protocol):
    """Anything with W3C ids, e.g. ``fleet.gateway.TraceContext``."""

    @property
    def trace_id(self) -> str: ...

    @property
    def span_id(self) -> str: ...


REDACTED = "[redacted]"

# Keys that may hold credentials. Names that only describe one (an id, a
# fingerprint, a rotation time) are kept: the audit must say which key
# rotated, never what it is.
_SECRET_KEY = re.compile(r"key|secret|token|passw|credential|authoriz|private", re.IGNORECASE)
_DESCRIBES_A_SECRET = re.compile(
    r"(_id|_ids|_fingerprint|_version|_at|_age_days|_count|_rotated|_expires)$", re.IGNORECASE
)

# I-JSON (RFC 7493) integers, which RFC 8785 can represent exactly.
_MAX_INT = 2**53 - 1
MAX_DETAILS_BYTES = 64 * 1024

_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def is_secret_key(name: str) -> bool:
    return bool(_SECRET_KEY.search(name)) and not _DESCRIBES_A_SECRET.search(name)


def format_time(when: datetime) -> str:
    """Fixed-width UTC ISO 8601, so strings sort in time order (and index well)."""
    if when.tzinfo is None:
        raise ValueError("audit times must be timezone-aware")
    return when.astimezone(UTC).strftime(_TIME_FORMAT)


def parse_time(text: str) -> datetime:
    return datetime.strptime(text, _TIME_FORMAT).replace(tzinfo=UTC)


def _check_text(value: str, path: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{path}: not valid Unicode text (lone surrogate)") from None


def clean_details(value: Any, path: str = "details") -> Any:
    """JSON without floats, with secret-looking keys redacted.

    Money and ratios must arrive as strings (or Decimal, turned into one): a
    float would make the entry's hash depend on how a number was printed.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        _check_text(value, path)
        return value
    if isinstance(value, int):
        if abs(value) > _MAX_INT:
            raise ValueError(
                f"{path}: integer {value} is too large for canonical JSON; send it as a string"
            )
        return value
    if isinstance(value, float):
        raise ValueError(
            f"{path}: floats are not allowed in audit entries ({value!r}); send a decimal string"
        )
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{path}: not a finite amount")
        return format(value, "f")
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Enum):
        return clean_details(value.value, path)
    if isinstance(value, uuid.UUID):
        return value.hex
    if isinstance(value, BaseModel):
        return clean_details(value.model_dump(mode="python"), path)
    if isinstance(value, Mapping):
        cleaned: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{path}: keys must be strings, not {type(key).__name__}")
            _check_text(key, path)
            cleaned[key] = REDACTED if is_secret_key(key) else clean_details(item, f"{path}.{key}")
        return cleaned
    if isinstance(value, list | tuple):
        return [clean_details(item, f"{path}[{i}]") for i, item in enumerate(value)]
    raise ValueError(f"{path}: {type(value).__name__} cannot go into an audit entry")


def _new_event_id() -> str:
    return uuid.uuid4().hex


_HEX32 = r"^[0-9a-f]{32}$"
_HEX16 = r"^[0-9a-f]{16}$"


class AuditEvent(BaseModel):
    """One action the system took, as its producer saw it.

    ``event_id`` makes appending idempotent: a redelivered message whose event
    is already in the log is skipped, not written twice.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: str = Field(default_factory=_new_event_id, pattern=r"^[0-9A-Za-z_-]{8,64}$")
    time: datetime
    actor: str = Field(min_length=1, max_length=128)
    action: str = Field(min_length=1, max_length=64)
    # An agent id, or "<kind>:<name>" for anything else ("fleet:demo", "approval:ab12…").
    subject: str = Field(min_length=1, max_length=160)
    fleet: str | None = Field(default=None, max_length=128)
    details: dict[str, Any] = Field(default_factory=dict)
    article: Article = Article.RECORD_KEEPING
    approval: ApprovalState = ApprovalState.NONE
    approval_id: str | None = Field(default=None, max_length=64)
    trace_id: str | None = Field(default=None, pattern=_HEX32)
    span_id: str | None = Field(default=None, pattern=_HEX16)

    @field_validator("time")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("must be timezone-aware")
        # Microseconds are what the log keeps; equal events must hash equally.
        return value.astimezone(UTC)

    @field_validator("details", mode="before")
    @classmethod
    def _clean(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            raise ValueError("must be a mapping")
        cleaned = clean_details(value)
        if len(orjson.dumps(cleaned)) > MAX_DETAILS_BYTES:
            raise ValueError(f"larger than {MAX_DETAILS_BYTES} bytes; record a reference instead")
        return cleaned

    @property
    def agent_id(self) -> str | None:
        """The agent this entry is about, or None for fleets and other subjects."""
        return None if ":" in self.subject else self.subject


def build_event(
    *,
    actor: str,
    action: str,
    subject: str,
    details: Mapping[str, Any] | None = None,
    article: Article | str = Article.RECORD_KEEPING,
    approval: ApprovalState | str = ApprovalState.NONE,
    approval_id: str | None = None,
    fleet: str | None = None,
    trace: TraceLike | None = None,
    trace_id: str | None = None,
    span_id: str | None = None,
    time: datetime | None = None,
    clock: Clock | None = None,
    event_id: str | None = None,
) -> AuditEvent:
    """An event stamped with the clock's time (keyword arguments only).

    Its trace is ``trace`` (or ``trace_id``/``span_id``) when given, else the span current
    where the event is built (:mod:`fleet.tracing`), so every entry a traced task causes
    carries that task's trace id. The ids are part of the hashed entry (see
    :func:`fleet.audit.canonical.event_object`): they are evidence of which work caused
    the entry, so re-attributing an entry to another trace breaks the chain like any
    other edit."""
    if trace is not None:
        trace_id, span_id = trace.trace_id, trace.span_id
    elif trace_id is None and span_id is None:
        ids = tracing.current_ids()
        if ids is not None:
            trace_id, span_id = ids
    fields: dict[str, Any] = {
        "time": time or (clock or SystemClock()).now(),
        "actor": actor,
        "action": action,
        "subject": subject,
        "fleet": fleet,
        "details": dict(details or {}),
        "article": article,
        "approval": approval,
        "approval_id": approval_id,
        "trace_id": trace_id,
        "span_id": span_id,
    }
    if event_id is not None:
        fields["event_id"] = event_id
    return AuditEvent(**fields)


def fleet_subject(name: str) -> str:
    return f"fleet:{name}"
