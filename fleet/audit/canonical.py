"""The bytes an entry's hash is taken over.

An entry is ``{"chain", "entry", "prev", "seq", "v"}`` serialised with RFC 8785
(JSON Canonicalization Scheme); its hash is the SHA-256 of those bytes, and
``prev`` is the previous entry's hash, so changing any byte of any entry breaks
every link after it. Anyone can recompute it from an export with any RFC 8785
implementation::

    sha256(rfc8785.dumps({"chain": c, "entry": e, "prev": p, "seq": n, "v": 1})).hexdigest()

The event part (``entry``) is canonicalised once, outside the chain lock; the
envelope around it is assembled by concatenation, which is exactly what RFC
8785 produces for it (keys in that order, integers in plain decimal), so the
critical section costs a hash, not a serialisation.
"""

from __future__ import annotations

import hashlib
from typing import Any

import rfc8785

from fleet.audit.events import AuditEvent, format_time

FORMAT_VERSION = 1
GENESIS = "0" * 64


def event_object(event: AuditEvent, *, appended_at: str | None = None) -> dict[str, Any]:
    """The hashed event. With appended_at (the writer's clock) that is its ``time``, and
    the producer's own time is kept only as ``claimed_time``."""
    claimed = format_time(event.time)
    stamped: dict[str, Any] = (
        {"time": claimed} if appended_at is None else {"time": appended_at, "claimed_time": claimed}
    )
    return {
        "event_id": event.event_id,
        **stamped,
        "actor": event.actor,
        "action": event.action,
        "subject": event.subject,
        "fleet": event.fleet,
        "details": event.details,
        "article": event.article.value,
        "approval": event.approval.value,
        "approval_id": event.approval_id,
        "trace_id": event.trace_id,
        "span_id": event.span_id,
    }


def canonical(value: Any) -> bytes:
    return rfc8785.dumps(value)


def envelope(chain_json: bytes, event_json: bytes, prev: str, seq: int) -> bytes:
    """RFC 8785 bytes of {"chain", "entry", "prev", "seq", "v"}; chain_json is canonical(chain)."""
    return b"".join(
        (
            b'{"chain":',
            chain_json,
            b',"entry":',
            event_json,
            b',"prev":"',
            prev.encode("ascii"),
            b'","seq":',
            str(seq).encode("ascii"),
            b',"v":',
            str(FORMAT_VERSION).encode("ascii"),
            b"}",
        )
    )


def entry_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()
