"""Mirroring the log to the gateway (``create_audit_trail``) through an outbox.

The log itself is the outbox: ``audit_mirror_state.delivered_seq`` is how far
the gateway has been given the chain. One sender at a time (a lease in the
same row) walks forward from there in chain order, one entry per call, and
advances the cursor after each answer, so:

- nothing is lost: the cursor moves only after the gateway answered for
  that entry; while the gateway is down, entries simply wait in the log
  (retention never archives past the cursor);
- nothing is sent twice by us: the lease keeps a second sender out, the
  cursor only moves forward from the value the sender read, and each entry
  gets one receipt row (primary key). The client runs with a single attempt
  per call: the outbox is the retry layer, not a second one stacked on it;
- order holds: entry n+1 is not sent before entry n has been answered.

The gateway has no idempotency key, so one case remains: a call that reached
the gateway but whose answer was lost (a timeout, a crash before the cursor
commit) is sent again on the next run. Each copy carries the entry's chain,
seq and hash in ``metadata`` so a duplicate is recognisable at the gateway.

Transient failures (unavailable, breaker open, rate limited, our key
refused) stop the run; the next run — beat every ``mirror_every_s``, or the
next append — resumes at the same entry. A permanent refusal of one entry
(e.g. the gateway does not know the agent) is recorded as ``refused`` with
the reason and the walk goes on; entries whose subject is not an agent (a
fleet, an approval) are ``skipped``: the gateway keeps audit trails per agent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

import orjson
from sqlalchemy import Engine, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from fleet.audit.events import format_time
from fleet.audit.log import AuditLog, read_anchor
from fleet.audit.models import AuditEntry, AuditMirrorReceipt, AuditMirrorState
from fleet.gateway.errors import (
    AuthError,
    Conflict,
    GatewayError,
    InvalidResponse,
    RateLimited,
    Unavailable,
)
from fleet.gateway.tracing import TraceContext

log = logging.getLogger("fleet.audit.mirror")

TOOL = "create_audit_trail"
_PAGE = 100


class GatewayCall(Protocol):
    """``GatewayClient.call``: one tool call, returning the answer's JSON object."""

    def __call__(
        self,
        tool: str,
        input: Mapping[str, Any] | None = None,
        *,
        trace: TraceContext | None = None,
    ) -> dict[str, Any]: ...


@dataclass(frozen=True)
class MirrorRun:
    delivered: int = 0
    refused: int = 0
    skipped: int = 0
    pending: int = 0  # entries still waiting after this run
    busy: bool = False  # another sender holds the lease
    error: str | None = None  # why the run stopped early
    retry_after_s: float | None = None


def gateway_input(body: str, seq: int, digest: str) -> dict[str, Any] | None:
    """The create_audit_trail input for an entry, or None when its subject is not an agent."""
    obj = orjson.loads(body)
    entry = obj["entry"]
    subject: str = entry["subject"]
    if ":" in subject:
        return None
    return {
        "agent_id": subject,
        "action": entry["action"],
        "details": entry["details"],
        "metadata": {
            "source": "fleet-commander",
            "chain": obj["chain"],
            "seq": seq,
            "hash": digest,
            "prev": obj["prev"],
            "event_id": entry["event_id"],
            "time": entry["time"],
            "actor": entry["actor"],
            "fleet": entry["fleet"],
            "article": entry["article"],
            "approval": entry["approval"],
            "approval_id": entry["approval_id"],
            "trace_id": entry["trace_id"],
            "span_id": entry["span_id"],
        },
    }


def _trace(entry_input: dict[str, Any]) -> TraceContext | None:
    meta = entry_input["metadata"]
    if meta["trace_id"] and meta["span_id"]:
        return TraceContext(meta["trace_id"], meta["span_id"])
    return None


class Outbox:
    def __init__(self, audit_log: AuditLog, *, owner: str, lease_s: float = 60.0) -> None:
        self.log = audit_log
        self.engine: Engine = audit_log.engine
        self.chain = audit_log.chain
        self.owner = owner
        self.lease_s = lease_s

    def _now(self) -> str:
        return format_time(self.log.clock.now())

    def _lease_until(self) -> str:
        return format_time(self.log.clock.now() + timedelta(seconds=self.lease_s))

    def _ensure_state(self) -> None:
        with self.engine.connect() as conn:
            if conn.execute(
                select(AuditMirrorState.chain).where(AuditMirrorState.chain == self.chain)
            ).first():
                return
            start = read_anchor(conn, self.chain).seq
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(AuditMirrorState), [{"chain": self.chain, "delivered_seq": start}]
                )
        except IntegrityError:
            pass  # another sender created it first

    def acquire(self) -> bool:
        self._ensure_state()
        now = self._now()
        with self.engine.begin() as conn:
            taken = conn.execute(
                update(AuditMirrorState)
                .where(
                    AuditMirrorState.chain == self.chain,
                    or_(
                        AuditMirrorState.lease_owner.is_(None),
                        AuditMirrorState.lease_owner == self.owner,
                        AuditMirrorState.lease_until < now,
                    ),
                )
                .values(lease_owner=self.owner, lease_until=self._lease_until())
            )
            return taken.rowcount == 1

    def release(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(AuditMirrorState)
                .where(
                    AuditMirrorState.chain == self.chain, AuditMirrorState.lease_owner == self.owner
                )
                .values(lease_owner=None, lease_until=None)
            )

    def delivered_seq(self) -> int:
        with self.engine.connect() as conn:
            value = conn.execute(
                select(AuditMirrorState.delivered_seq).where(AuditMirrorState.chain == self.chain)
            ).scalar()
            return int(value) if value is not None else read_anchor(conn, self.chain).seq

    def pending(self) -> int:
        delivered = self.delivered_seq()
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(AuditEntry)
                    .where(AuditEntry.chain == self.chain, AuditEntry.seq > delivered)
                ).scalar_one()
            )

    def _advance(self, seq: int, status: str, audit_id: str | None, error: str | None) -> bool:
        """Move the cursor past seq and keep the receipt; False if we no longer hold the lease."""
        now = self._now()
        with self.engine.begin() as conn:
            moved = conn.execute(
                update(AuditMirrorState)
                .where(
                    AuditMirrorState.chain == self.chain,
                    AuditMirrorState.lease_owner == self.owner,
                    AuditMirrorState.delivered_seq == seq - 1,
                )
                .values(
                    delivered_seq=seq,
                    lease_until=self._lease_until(),
                    last_error=None,
                    last_attempt_at=now,
                )
            )
            if moved.rowcount != 1:
                return False
            conn.execute(
                insert(AuditMirrorReceipt),
                [
                    {
                        "chain": self.chain,
                        "seq": seq,
                        "status": status,
                        "audit_id": audit_id,
                        "error": error,
                        "at": now,
                    }
                ],
            )
        return True

    def _note_failure(self, error: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(AuditMirrorState)
                .where(
                    AuditMirrorState.chain == self.chain, AuditMirrorState.lease_owner == self.owner
                )
                .values(last_error=error[:2000], last_attempt_at=self._now())
            )

    def run(
        self, call: GatewayCall, *, max_entries: int = 500, max_seconds: float = 60.0
    ) -> MirrorRun:
        """Send up to max_entries waiting entries (for at most about max_seconds), in order;
        stop at the first transient failure."""
        if not self.acquire():
            return MirrorRun(busy=True, pending=self.pending())
        delivered = refused = skipped = 0
        error: str | None = None
        retry_after: float | None = None
        deadline = time.monotonic() + max_seconds
        try:
            cursor = self.delivered_seq()
            while (
                delivered + refused + skipped < max_entries
                and error is None
                and time.monotonic() < deadline
            ):
                with self.engine.connect() as conn:
                    page = conn.execute(
                        select(AuditEntry.seq, AuditEntry.hash, AuditEntry.body)
                        .where(AuditEntry.chain == self.chain, AuditEntry.seq > cursor)
                        .order_by(AuditEntry.seq)
                        .limit(min(_PAGE, max_entries - delivered - refused - skipped))
                    ).all()
                if not page:
                    break
                for seq, digest, body in page:
                    payload = gateway_input(body, seq, digest)
                    audit_id: str | None = None
                    note: str | None = "subject is not an agent"
                    status = "skipped"
                    if payload is not None:
                        try:
                            answer = call(TOOL, payload, trace=_trace(payload))
                            status, audit_id, note = (
                                "delivered",
                                str(answer.get("audit_id") or "") or None,
                                None,
                            )
                        except (Unavailable, RateLimited, AuthError) as exc:
                            # Not this entry's fault: it waits, in place, for the next run.
                            error, retry_after = str(exc), exc.retry_after
                            self._note_failure(error)
                            break
                        except Conflict as exc:
                            status, note = "delivered", f"gateway already had it: {exc}"
                        except InvalidResponse as exc:
                            # It answered 200, so it has the entry; only the answer was odd.
                            status, note = "delivered", f"unexpected answer: {exc}"
                        except GatewayError as exc:
                            status, note = "refused", str(exc)
                            log.error("gateway refused audit entry %s for good: %s", seq, exc)
                    if not self._advance(seq, status, audit_id, note):
                        error = "lost the outbox lease to another sender"
                        break
                    cursor = seq
                    if status == "delivered":
                        delivered += 1
                    elif status == "refused":
                        refused += 1
                    else:
                        skipped += 1
        finally:
            self.release()
        return MirrorRun(delivered, refused, skipped, self.pending(), False, error, retry_after)
