"""Re-checking the chain and its signed checkpoints, and naming the first bad entry.

The pass over the log is one tight loop per row: hash the stored canonical
bytes, parse them (orjson), and compare the position, the link and the query
columns with what was hashed. Only when something disagrees does
:func:`_diagnose` look at the rows around it to say what happened: an entry
*edited* (its bytes or its columns changed, or it was re-hashed), *deleted*
(a gap, or the rest renumbered to close it), *inserted* (an entry that was
never part of the chain, or a copy of one) or *reordered* (entries swapped).

Then every checkpoint, from the database and from the file outside it, must
carry a valid signature of the trusted key and match the entry at its size:
that catches a wholesale rewrite of the chain after some point (which no
single link can show) and a log cut short after its last checkpoint.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Connection, Result, select

from fleet.audit.log import AuditLog, Head, read_anchor
from fleet.audit.models import AuditCheckpoint, AuditEntry
from fleet.audit.signing import Checkpoint, MissingSigningKey, read_checkpoint_file, signature_valid

# Columns that repeat a field of the hashed event, in the order the loop reads them.
EVENT_FIELDS = (
    "event_id",
    "time",
    "actor",
    "action",
    "subject",
    "fleet",
    "article",
    "approval",
    "approval_id",
    "trace_id",
    "span_id",
)
_COLUMNS = (AuditEntry.seq, AuditEntry.hash, AuditEntry.body, AuditEntry.prev_hash) + tuple(
    getattr(AuditEntry, name) for name in EVENT_FIELDS
)
_WINDOW_BEFORE, _WINDOW_AFTER = 2, 64


class ProblemKind(StrEnum):
    EDITED = "edited"
    DELETED = "deleted"
    INSERTED = "inserted"
    REORDERED = "reordered"
    REWRITTEN = "rewritten"  # consistent links, but not what a signed checkpoint says
    CHECKPOINT = "checkpoint"  # a checkpoint itself is forged or altered


@dataclass(frozen=True)
class Problem:
    kind: ProblemKind
    seq: int  # the first entry concerned
    message: str


@dataclass
class VerifyReport:
    chain: str
    entries: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    checkpoints: int = 0
    signed_up_to: int = 0
    problem: Problem | None = None
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def unsigned(self) -> int:
        """Entries after the last checkpoint: intact as far as links go, not yet signed."""
        return 0 if self.last_seq is None else max(0, self.last_seq - self.signed_up_to)

    def summary(self) -> str:
        if self.problem is not None:
            return f"TAMPERED: {self.problem.message}"
        span = f"{self.first_seq}..{self.last_seq}" if self.entries else "none"
        tail = f", {self.unsigned} after the last checkpoint" if self.unsigned else ""
        return (
            f"intact: chain {self.chain!r}, {self.entries} entries ({span}), "
            f"{self.checkpoints} signed checkpoints{tail}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "chain": self.chain,
            "ok": self.ok,
            "entries": self.entries,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "checkpoints": self.checkpoints,
            "signed_up_to": self.signed_up_to,
            "unsigned": self.unsigned,
            "problem": None
            if self.problem is None
            else {
                "kind": self.problem.kind.value,
                "seq": self.problem.seq,
                "message": self.problem.message,
            },
            "warnings": self.warnings,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class _Seen:
    """One row as diagnosis sees it."""

    seq: int  # the row's column
    hash: str
    hash_ok: bool
    body_seq: int | None
    body_prev: str | None


def _see(row: Any) -> _Seen:
    seq, digest, body = row[0], row[1], row[2]
    raw = body.encode("utf-8")
    try:
        obj = orjson.loads(raw)
        body_seq, body_prev = int(obj["seq"]), str(obj["prev"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return _Seen(seq, digest, False, None, None)
    return _Seen(seq, digest, hashlib.sha256(raw).hexdigest() == digest, body_seq, body_prev)


def _window(conn: Connection, chain: str, low: int, high: int) -> list[Any]:
    return list(
        conn.execute(
            select(*_COLUMNS)
            .where(AuditEntry.chain == chain, AuditEntry.seq >= low, AuditEntry.seq <= high)
            .order_by(AuditEntry.seq)
        )
    )


def _diagnose(conn: Connection, chain: str, anchor: Head, bad_seq: int, last_good: Head) -> Problem:
    """Say what happened at the first row that does not follow last_good (the rows around it
    tell)."""
    low = max(anchor.seq + 1, last_good.seq - _WINDOW_BEFORE)
    rows = [_see(r) for r in _window(conn, chain, low, bad_seq + _WINDOW_AFTER)]
    before = [r for r in rows if r.seq < bad_seq]
    here = next(r for r in rows if r.seq == bad_seq)
    after = [r for r in rows if r.seq > bad_seq]
    p1 = before[-1] if before else None  # the row just before, when it is still there
    nxt = after[0] if after else None
    expected = last_good.seq + 1
    K = ProblemKind

    if not here.hash_ok:
        if (
            nxt is not None
            and nxt.hash_ok
            and nxt.body_seq == here.seq
            and nxt.body_prev == last_good.hash
        ):
            # The next row is the genuine entry of this position, pushed down by one.
            return Problem(
                K.INSERTED,
                here.seq,
                f"entry {here.seq} was inserted: it is not part of the chain, "
                "and the entries after it were renumbered",
            )
        return Problem(
            K.EDITED,
            here.seq,
            f"entry {here.seq} was edited: its content no longer matches its hash",
        )

    if here.seq > expected and here.body_seq == here.seq:
        last = here.seq - 1
        which = f"entry {expected}" if last == expected else f"entries {expected}..{last}"
        return Problem(
            K.DELETED, expected, f"{which} deleted: entry {here.seq} follows entry {last_good.seq}"
        )

    if here.body_seq is not None and here.body_seq < here.seq:
        # This row holds an earlier position's entry: something was put in front of it.
        if p1 is not None and here.body_seq == p1.seq and here.body_prev == p1.body_prev:
            return Problem(
                K.INSERTED,
                p1.seq,
                f"entry {p1.seq} was inserted: the original entry {p1.seq} "
                f"now sits at {here.seq}, and the entries after it were renumbered",
            )
        return Problem(
            K.INSERTED,
            here.seq,
            f"entry {here.seq} was inserted: it is a copy of entry {here.body_seq}",
        )

    if here.body_seq is not None and here.body_seq > here.seq:
        # This row holds a later position's entry: the one expected here moved, or is gone.
        moved = next((r for r in after if r.body_seq == here.seq), None)
        if moved is not None:
            return Problem(
                K.REORDERED,
                here.seq,
                f"entries reordered: entry {here.seq} was moved to position "
                f"{moved.seq}, and position {here.seq} holds entry {here.body_seq}",
            )
        gone = here.body_seq - 1
        which = f"entry {here.seq}" if gone == here.seq else f"entries {here.seq}..{gone}"
        return Problem(
            K.DELETED,
            here.seq,
            f"{which} deleted, and the entries after renumbered to hide the gap",
        )

    if here.body_prev != last_good.hash:
        linked_to = nxt is None or nxt.body_prev == here.hash
        if p1 is not None and p1.seq == last_good.seq and linked_to:
            # This row is sound and what follows links to it: its predecessor changed under it.
            return Problem(
                K.EDITED,
                p1.seq,
                f"entry {p1.seq} was edited and re-hashed: entry {here.seq} no longer links to it",
            )
        return Problem(
            K.EDITED,
            bad_seq,
            f"entry {bad_seq} does not link to entry {last_good.seq}: "
            f"the chain was altered at {bad_seq}",
        )

    # Sound bytes, sound links: what disagrees are the columns queries read.
    return Problem(
        K.EDITED,
        here.seq,
        f"entry {here.seq} was edited: its columns no longer match its hashed content",
    )


@contextmanager
def _stream(conn: Connection, chain: str) -> Iterator[Result[Any]]:
    """All rows in order, fetched in slices (a server-side cursor on PostgreSQL), closed on exit."""
    result = conn.execution_options(stream_results=True, yield_per=20_000).execute(
        select(*_COLUMNS).where(AuditEntry.chain == chain).order_by(AuditEntry.seq)
    )
    try:
        yield result
    finally:
        result.close()


def verify_log(log: AuditLog, public_key: Ed25519PublicKey | None = None) -> VerifyReport:
    """Check every retained entry and every checkpoint of the log's chain."""
    started = time.perf_counter()
    chain = log.chain
    report = VerifyReport(chain)
    trusted = public_key
    if trusted is None:
        try:
            trusted = log.trusted_public_key()
        except MissingSigningKey:
            trusted = None  # fine while nothing was ever signed; a problem otherwise
    with log.engine.connect() as conn:
        anchor = read_anchor(conn, chain)
        db_checkpoints = {
            cp.size: cp
            for cp in (
                Checkpoint.from_dict(dict(m))
                for m in conn.execute(
                    select(AuditCheckpoint).where(AuditCheckpoint.chain == chain)
                ).mappings()
            )
        }
        file_checkpoints: dict[int, Checkpoint] = {}
        for cp in read_checkpoint_file(log.files.checkpoints):
            if cp.chain == chain:
                file_checkpoints.setdefault(cp.size, cp)
        wanted = set(db_checkpoints) | set(file_checkpoints)
        hashes_at: dict[int, str] = {}

        bad_seq: int | None = None
        sha256, loads = hashlib.sha256, orjson.loads
        prev_hash, expect = anchor.hash, anchor.seq + 1
        count = 0
        row: Any
        with _stream(conn, chain) as rows:
            for row in rows:
                seq, digest, body = row[0], row[1], row[2]
                raw = body.encode("utf-8")
                if seq != expect or row[3] != prev_hash or sha256(raw).hexdigest() != digest:
                    bad_seq = seq
                    break
                obj = loads(raw)
                entry = obj["entry"]
                if (
                    obj["seq"] != seq
                    or obj["prev"] != prev_hash
                    or obj["chain"] != chain
                    or (
                        entry["event_id"],
                        entry["time"],
                        entry["actor"],
                        entry["action"],
                        entry["subject"],
                        entry["fleet"],
                        entry["article"],
                        entry["approval"],
                        entry["approval_id"],
                        entry["trace_id"],
                        entry["span_id"],
                    )
                    != row[4:]
                ):
                    bad_seq = seq
                    break
                if seq in wanted:
                    hashes_at[seq] = digest
                prev_hash, expect = digest, seq + 1
                count += 1
                if count == 1:
                    report.first_seq = seq
        chain_problem = None
        if bad_seq is not None:
            chain_problem = _diagnose(conn, chain, anchor, bad_seq, Head(expect - 1, prev_hash))
        report.entries = count
        report.last_seq = expect - 1 if count else None

    problems = [chain_problem] if chain_problem is not None else []
    problems += _check_checkpoints(
        report,
        chain,
        anchor,
        db_checkpoints,
        file_checkpoints,
        hashes_at,
        trusted,
        last_seq=None if chain_problem is not None else (report.last_seq or anchor.seq),
    )
    if problems:
        report.problem = min(problems, key=lambda p: p.seq)
    report.seconds = time.perf_counter() - started
    return report


def _check_checkpoints(
    report: VerifyReport,
    chain: str,
    anchor: Head,
    db_checkpoints: dict[int, Checkpoint],
    file_checkpoints: dict[int, Checkpoint],
    hashes_at: dict[int, str],
    trusted: Ed25519PublicKey | None,
    *,
    last_seq: int | None,
) -> list[Problem]:
    """Problems found through checkpoints; last_seq is None when the loop stopped early."""
    K = ProblemKind
    problems: list[Problem] = []
    matched: list[int] = []
    if trusted is None and (db_checkpoints or file_checkpoints):
        first = min(set(db_checkpoints) | set(file_checkpoints))
        return [
            Problem(
                K.CHECKPOINT,
                first,
                "checkpoints exist but the signing key is missing: give the public key to check "
                "them",
            )
        ]
    for size in sorted(set(db_checkpoints) | set(file_checkpoints)):
        in_db, in_file = db_checkpoints.get(size), file_checkpoints.get(size)
        candidates = [cp for cp in (in_file, in_db) if cp is not None]
        for cp in candidates:
            if trusted is None or not signature_valid(cp, trusted):
                where = "database" if cp is in_db else "checkpoint file"
                problems.append(
                    Problem(
                        K.CHECKPOINT,
                        size,
                        f"checkpoint at entry {size} in the {where} has no valid signature: forged "
                        "or altered",
                    )
                )
        if (
            in_db is not None
            and in_file is not None
            and (in_db.head, in_db.signature) != (in_file.head, in_file.signature)
        ):
            problems.append(
                Problem(
                    K.CHECKPOINT,
                    size,
                    f"checkpoint at entry {size} differs between the database and the checkpoint "
                    "file",
                )
            )
        if in_file is None:
            report.warnings.append(f"checkpoint at entry {size} is not in the checkpoint file")
        elif in_db is None:
            report.warnings.append(
                f"checkpoint at entry {size} is missing from the database (kept in the file)"
            )
        checkpoint = in_file or in_db
        assert checkpoint is not None  # size is a key of one of the two
        head = checkpoint.head
        if size < anchor.seq:
            continue  # archived with its entries
        if size == anchor.seq:
            if head != anchor.hash:
                problems.append(
                    Problem(
                        K.REWRITTEN,
                        size,
                        f"the archived head at entry {size} does not match its signed checkpoint",
                    )
                )
            continue
        if size in hashes_at:
            if hashes_at[size] == head:
                matched.append(size)
            else:
                since = max([m for m in matched if m < size], default=anchor.seq)
                problems.append(
                    Problem(
                        K.REWRITTEN,
                        since + 1,
                        f"entries {since + 1}..{size} were rewritten: entry {size} does not match "
                        f"the checkpoint signed at {checkpoint.signed_at}",
                    )
                )
        elif last_seq is not None and size > last_seq:
            problems.append(
                Problem(
                    K.DELETED,
                    last_seq + 1,
                    f"entries {last_seq + 1}..{size} deleted: the log ends at {last_seq} but a "
                    f"checkpoint covers {size}",
                )
            )
    report.checkpoints = len(matched) + sum(1 for s in db_checkpoints if s <= anchor.seq)
    report.signed_up_to = max(matched, default=anchor.seq)
    return problems
