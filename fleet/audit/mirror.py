"""Publishing the log's signed checkpoints to the gateway's event bus, through an outbox.

The gateway has no audit trail API: Fleet Commander holds the trail, and the
bus is an outside witness. Each signed checkpoint (chain, size, head hash,
signature, and the checkpoint before it) goes out as one
``fleet.audit.checkpoint`` event (``POST /v1/infra/events``), so anyone
reading the bus can later hold the log to what it said it was, and a
rewrite of already-witnessed entries cannot go unnoticed.

``audit_mirror_state.delivered_seq`` is the size of the last checkpoint the
bus has. One sender at a time (a lease in the same row) walks forward from
there in size order, one checkpoint per call, and advances the cursor after
each answer, so:

- nothing is lost: the cursor moves only after the gateway answered; while
  the gateway is away, checkpoints wait in the database however long that
  lasts (retention never archives past the cursor);
- order holds: checkpoint n+1 is not published before n has been answered;
- once: the lease keeps a second sender out, the cursor only moves forward
  from the value the sender read, and each checkpoint gets one receipt row.
  The bus takes no idempotency key, so after a run that stopped on a failure
  (the answer may have been lost after the event was stored) the next run
  first looks for the checkpoint on the bus, and publishes it only if it is
  not there.

Transient failures (unavailable, breaker open, rate limited, our key refused)
stop the run; the next run (beat every ``mirror_every_s``, or the next
append) resumes at the same checkpoint. A permanent refusal is recorded as
``refused`` with the reason and the walk goes on.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from fleet.audit.events import format_time
from fleet.audit.log import AuditLog, read_anchor
from fleet.audit.models import AuditCheckpoint, AuditMirrorReceipt, AuditMirrorState
from fleet.audit.signing import Checkpoint
from fleet.gateway import Gateway
from fleet.gateway import operations as ops
from fleet.gateway.errors import (
    AuthError,
    GatewayError,
    InvalidResponse,
    MissingKey,
    RateLimited,
    Unavailable,
)

log = logging.getLogger("fleet.audit.mirror")

EVENT_TYPE = "fleet.audit.checkpoint"
SOURCE = "fleet-commander"
_PAGE = 100


@dataclass(frozen=True)
class MirrorRun:
    delivered: int = 0
    refused: int = 0
    skipped: int = 0  # found on the bus already (a lost answer of an earlier run)
    pending: int = 0  # checkpoints still waiting after this run
    busy: bool = False  # another sender holds the lease
    error: str | None = None  # why the run stopped early
    retry_after_s: float | None = None


def event_payload(checkpoint: Checkpoint, previous: Checkpoint | None) -> dict[str, Any]:
    """What the bus is told: the checkpoint as signed, and the one before it."""
    return {
        **checkpoint.to_dict(),
        "previous": None
        if previous is None
        else {"size": previous.size, "head": previous.head, "signature": previous.signature},
    }


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
                    .select_from(AuditCheckpoint)
                    .where(AuditCheckpoint.chain == self.chain, AuditCheckpoint.size > delivered)
                ).scalar_one()
            )

    def _last_error(self) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(
                select(AuditMirrorState.last_error).where(AuditMirrorState.chain == self.chain)
            ).scalar()

    def _advance(
        self, cursor: int, seq: int, status: str, audit_id: str | None, error: str | None
    ) -> bool:
        """Move the cursor from cursor to seq and keep the receipt; False if we no longer
        hold the lease (or another sender moved it)."""
        now = self._now()
        with self.engine.begin() as conn:
            moved = conn.execute(
                update(AuditMirrorState)
                .where(
                    AuditMirrorState.chain == self.chain,
                    AuditMirrorState.lease_owner == self.owner,
                    AuditMirrorState.delivered_seq == cursor,
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

    def _published(self, gateway: Gateway, checkpoint: Checkpoint) -> int | None:
        """The bus event that already carries this checkpoint, if any."""
        since: int | None = None
        while True:
            page = gateway.run(ops.get_events(event_type=EVENT_TYPE, since_id=since, limit=100))
            for event in page.events:
                p = event.payload
                if (p.get("chain"), p.get("size"), p.get("signature")) == (
                    checkpoint.chain,
                    checkpoint.size,
                    checkpoint.signature,
                ):
                    return event.id
            if len(page.events) < 100:
                return None
            since = page.events[-1].id

    def run(
        self, gateway: Gateway, *, max_entries: int = 500, max_seconds: float = 60.0
    ) -> MirrorRun:
        """Publish up to max_entries waiting checkpoints (for at most about max_seconds),
        in order; stop at the first transient failure."""
        if not self.acquire():
            return MirrorRun(busy=True, pending=self.pending())
        delivered = refused = skipped = 0
        error: str | None = None
        retry_after: float | None = None
        deadline = time.monotonic() + max_seconds
        uncertain = self._last_error() is not None
        try:
            cursor = self.delivered_seq()
            previous = self._checkpoint_at(cursor)
            while (
                delivered + refused + skipped < max_entries
                and error is None
                and time.monotonic() < deadline
            ):
                with self.engine.connect() as conn:
                    rows = conn.execute(
                        select(AuditCheckpoint)
                        .where(AuditCheckpoint.chain == self.chain, AuditCheckpoint.size > cursor)
                        .order_by(AuditCheckpoint.size)
                        .limit(min(_PAGE, max_entries - delivered - refused - skipped))
                    ).mappings()
                    page = [Checkpoint.from_dict(dict(row)) for row in rows]
                if not page:
                    break
                for checkpoint in page:
                    status, event_id, note = "delivered", None, None
                    try:
                        if uncertain:
                            event_id = self._published(gateway, checkpoint)
                            if event_id is not None:
                                status, note = "skipped", "already on the bus"
                        if event_id is None:
                            answer = gateway.run(
                                ops.publish_event(
                                    EVENT_TYPE, SOURCE, event_payload(checkpoint, previous)
                                )
                            )
                            event_id = answer.event_id
                        uncertain = False
                    except (Unavailable, RateLimited, AuthError, MissingKey) as exc:
                        # Not this checkpoint's fault: it waits, in place, for the next run.
                        error, retry_after = str(exc), exc.retry_after
                        self._note_failure(error)
                        break
                    except InvalidResponse as exc:
                        # It answered 200, so it has the event; only the answer was odd.
                        note = f"unexpected answer: {exc}"
                    except GatewayError as exc:
                        status, note = "refused", str(exc)
                        log.error(
                            "gateway refused checkpoint %s for good: %s", checkpoint.size, exc
                        )
                    receipt = str(event_id) if event_id is not None else None
                    if not self._advance(cursor, checkpoint.size, status, receipt, note):
                        error = "lost the outbox lease to another sender"
                        break
                    cursor, previous = checkpoint.size, checkpoint
                    if status == "delivered":
                        delivered += 1
                    elif status == "refused":
                        refused += 1
                    else:
                        skipped += 1
        finally:
            self.release()
        return MirrorRun(delivered, refused, skipped, self.pending(), False, error, retry_after)

    def _checkpoint_at(self, size: int) -> Checkpoint | None:
        with self.engine.connect() as conn:
            row = (
                conn.execute(
                    select(AuditCheckpoint).where(
                        AuditCheckpoint.chain == self.chain, AuditCheckpoint.size == size
                    )
                )
                .mappings()
                .first()
            )
        return Checkpoint.from_dict(dict(row)) if row is not None else None
