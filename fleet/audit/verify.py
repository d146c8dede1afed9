"""Re-checking the chain and its signed checkpoints, and naming the first bad entry.

The pass over the log is one tight loop per row: hash the stored canonical
bytes, parse them (orjson), and compare the position, the link and the query
columns with what was hashed. Only when something disagrees does
:func:`_diagnose` look at the rows around it to say what happened: an entry
*edited* (its bytes or its columns changed, or it was re-hashed), *deleted*
(a gap, or the rest renumbered to close it), *inserted* (an entry that was
never part of the chain, or a copy of one) or *reordered* (entries swapped).

Then every checkpoint, from the database and from the file outside it, must
carry a valid signature of the pinned key and match the entry at its size:
that catches a wholesale rewrite of the chain after some point (which no
single link can show) and a log cut short after its last checkpoint. The
checkpoints' counters must run 1, 2, 3… each linking to the one before, so
none can be removed unnoticed. Every archive record (the anchor the retained
chain starts from) must sit at a signed checkpoint with its head, and its
file must have the recorded digest and verify on its own up to that head.

Last, the log is held to its witnesses (:mod:`fleet.audit.witness`), which
the database's owner cannot roll back: a witness holding a later checkpoint
than the database and the checkpoint file names a *rollback*; one that saw
the log longer than it is now names a *truncation*.

Only the public key pinned in configuration is trusted; without one verify
refuses (:class:`~fleet.audit.signing.UnpinnedKey`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Connection, Result, select

from fleet.audit.canonical import GENESIS
from fleet.audit.log import AuditLog, Head, read_anchor
from fleet.audit.models import AuditArchive, AuditCheckpoint, AuditEntry
from fleet.audit.signing import Checkpoint, read_checkpoint_file, signature_valid
from fleet.audit.witness import WitnessRecords

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
    CHECKPOINT = "checkpoint"  # a checkpoint itself is forged, altered or removed
    ANCHOR = "anchor"  # an archive record no signed checkpoint (or archive file) vouches for
    ROLLED_BACK = "rolled_back"  # a witness holds a later checkpoint than the log has
    TRUNCATED = "truncated"  # a witness saw entries the log no longer has


# Of two problems at the same entry, the one that explains the other is named.
_NAMED_FIRST = {ProblemKind.ANCHOR: 0, ProblemKind.ROLLED_BACK: 1, ProblemKind.TRUNCATED: 2}


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
    witnessed_up_to: int = 0
    witnesses: list[str] = field(default_factory=list)
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
        seen = (
            f"; witnessed up to entry {self.witnessed_up_to} ({', '.join(self.witnesses)})"
            if self.witnesses
            else "; no witness"
        )
        return (
            f"intact: chain {self.chain!r}, {self.entries} entries ({span}), "
            f"{self.checkpoints} signed checkpoints{tail}{seen}"
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
            "witnessed_up_to": self.witnessed_up_to,
            "witnesses": self.witnesses,
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


def verify_log(
    log: AuditLog,
    public_key: Ed25519PublicKey | None = None,
    *,
    witnesses: Sequence[WitnessRecords] | None = None,
) -> VerifyReport:
    """Check every retained entry, checkpoint and archive of the log's chain, and hold them to
    the witnesses (default: the log's configured witness directory).

    public_key overrides the pinned one; with neither, UnpinnedKey is raised.
    """
    started = time.perf_counter()
    chain = log.chain
    report = VerifyReport(chain)
    trusted = public_key if public_key is not None else log.trusted_public_key()
    if witnesses is None:
        witnesses = [log.witness.read()] if log.witness is not None else []
    witnessed = [_trusted_records(w, trusted, report) for w in witnesses]
    if not witnesses:
        report.warnings.append(
            "no witness configured (audit.witness_dir): a tail cut after the last checkpoint, "
            "or a rollback of the database with the checkpoint file, would go unnoticed"
        )
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
        for records in witnessed:
            wanted |= {cp.size for cp in records.checkpoints}
            wanted |= {head.size for head in records.heads}
        archives = list(
            conn.execute(
                select(AuditArchive)
                .where(AuditArchive.chain == chain)
                .order_by(AuditArchive.last_seq)
            )
        )
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
    last_seq = None if chain_problem is not None else (report.last_seq or anchor.seq)
    local = _valid_checkpoints([*db_checkpoints.values(), *file_checkpoints.values()], trusted)
    problems += _check_checkpoint_chain(local)
    problems += _check_archives(
        archives, [*db_checkpoints.values(), *file_checkpoints.values()], witnessed, trusted
    )
    for records in witnessed:
        problems += _check_witness(report, records, local, hashes_at, anchor, last_seq)
    problems += _check_checkpoints(
        report,
        chain,
        anchor,
        db_checkpoints,
        file_checkpoints,
        hashes_at,
        trusted,
        last_seq=last_seq,
    )
    if problems:
        report.problem = min(problems, key=lambda p: (p.seq, _NAMED_FIRST.get(p.kind, 9)))
    report.seconds = time.perf_counter() - started
    return report


def _check_checkpoints(
    report: VerifyReport,
    chain: str,
    anchor: Head,
    db_checkpoints: dict[int, Checkpoint],
    file_checkpoints: dict[int, Checkpoint],
    hashes_at: dict[int, str],
    trusted: Ed25519PublicKey,
    *,
    last_seq: int | None,
) -> list[Problem]:
    """Problems found through checkpoints; last_seq is None when the loop stopped early."""
    K = ProblemKind
    problems: list[Problem] = []
    matched: list[int] = []
    for size in sorted(set(db_checkpoints) | set(file_checkpoints)):
        in_db, in_file = db_checkpoints.get(size), file_checkpoints.get(size)
        candidates = [cp for cp in (in_file, in_db) if cp is not None]
        for cp in candidates:
            if not signature_valid(cp, trusted):
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


# ------------------------------------------------------------- chain of checkpoints, archives


def _valid_checkpoints(
    checkpoints: Sequence[Checkpoint], trusted: Ed25519PublicKey
) -> dict[int, Checkpoint]:
    """The chained (version 2) checkpoints that carry the pinned key's signature, by counter."""
    return {cp.counter: cp for cp in checkpoints if cp.counter > 0 and signature_valid(cp, trusted)}


def _check_checkpoint_chain(local: dict[int, Checkpoint]) -> list[Problem]:
    """Counters 1..n with no gap, each checkpoint naming the digest of the one before."""
    K = ProblemKind
    problems: list[Problem] = []
    previous: Checkpoint | None = None
    for counter in range(1, max(local, default=0) + 1):
        cp = local.get(counter)
        if cp is None:
            after = previous.size if previous is not None else 0
            problems.append(
                Problem(
                    K.CHECKPOINT,
                    after + 1,
                    f"checkpoint #{counter} is missing from the database and the checkpoint "
                    f"file (after entry {after}): checkpoints were removed",
                )
            )
        elif previous is not None and cp.prev_checkpoint != previous.digest():
            problems.append(
                Problem(
                    K.CHECKPOINT,
                    cp.size,
                    f"checkpoint #{counter} at entry {cp.size} does not link to checkpoint "
                    f"#{previous.counter}: the checkpoints were re-ordered or replaced",
                )
            )
        previous = cp if cp is not None else previous
    return problems


def _check_archives(
    archives: Sequence[Any],  # audit_archives rows
    candidates: Sequence[Checkpoint],
    witnessed: Sequence[WitnessRecords],
    trusted: Ed25519PublicKey,
) -> list[Problem]:
    """Each archive record at a signed checkpoint with its head, its file intact and contiguous.

    Version 1 checkpoints (no counter) vouch too, when their signature holds.
    """
    from fleet.audit.export import verify_export

    K = ProblemKind
    signed = {(cp.size, cp.head) for cp in candidates if signature_valid(cp, trusted)}
    for records in witnessed:  # already filtered to the pinned key's signatures
        signed |= {(cp.size, cp.head) for cp in records.checkpoints}
    problems: list[Problem] = []
    prev_last, prev_head = 0, GENESIS
    for row in archives:
        span = f"entries {row.first_seq}..{row.last_seq}"
        if (row.last_seq, row.head) not in signed:
            problems.append(
                Problem(
                    K.ANCHOR,
                    row.first_seq,
                    f"forged archive anchor: the audit_archives record for {span} is not at a "
                    "checkpoint signed with the pinned key and carrying its head; the entries "
                    "it covers were removed without a verified archive",
                )
            )
            break
        trouble = _archive_file_trouble(row, prev_last, prev_head, trusted, verify_export)
        if trouble:
            problems.append(Problem(K.ANCHOR, row.first_seq, f"archive of {span}: {trouble}"))
            break
        prev_last, prev_head = row.last_seq, row.head
    return problems


def _archive_file_trouble(
    row: Any, prev_last: int, prev_head: str, trusted: Ed25519PublicKey, verify: Any
) -> str | None:
    if row.first_seq != prev_last + 1:
        return f"it does not follow the archive before it (which ends at entry {prev_last})"
    path = Path(row.file)
    if not path.is_file():
        return f"its file {path} is missing"
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != row.file_sha256:
        return f"its file {path} does not have the recorded SHA-256"
    check = verify(path, trusted)
    if not check.ok:
        return f"its file {path} does not verify: {check.problems[0]}"
    if (check.first_seq, check.last_seq) != (row.first_seq, row.last_seq):
        return f"its file {path} holds entries {check.first_seq}..{check.last_seq}"
    if check.last_hash != row.head or check.first_prev != prev_head:
        return f"its file {path} does not chain from the previous archive to the recorded head"
    return None


# ------------------------------------------------------------------------------- witnesses


def _trusted_records(
    records: WitnessRecords, trusted: Ed25519PublicKey, report: VerifyReport
) -> WitnessRecords:
    """The witness's records that carry the pinned key's signature; the rest are noted."""
    good = WitnessRecords(
        source=records.source,
        checkpoints=[cp for cp in records.checkpoints if signature_valid(cp, trusted)],
        heads=[h for h in records.heads if signature_valid(h, trusted)],
    )
    ignored = (
        len(records.checkpoints)
        + len(records.heads)
        - len(good.checkpoints)
        - len(good.heads)
        + len(records.unreadable)
    )
    if ignored:
        report.warnings.append(
            f"{records.source}: {ignored} records ignored (unreadable, or not signed with the "
            "pinned key)"
        )
    report.witnesses.append(records.source)
    return good


def _check_witness(
    report: VerifyReport,
    records: WitnessRecords,
    local: dict[int, Checkpoint],
    hashes_at: dict[int, str],
    anchor: Head,
    last_seq: int | None,
) -> list[Problem]:
    K = ProblemKind
    problems: list[Problem] = []
    local_top = max(local, default=0)
    later = [cp for cp in records.checkpoints if cp.counter > local_top]
    for cp in records.checkpoints:
        mine = local.get(cp.counter)
        if mine is not None and mine.digest() != cp.digest():
            problems.append(
                Problem(
                    K.REWRITTEN,
                    min(mine.size, cp.size),
                    f"checkpoint #{cp.counter} differs from the one {records.source} holds "
                    f"(entry {cp.size}, signed {cp.signed_at}): the log was rewritten",
                )
            )
    seen = [(cp.size, cp.head, cp.signed_at) for cp in records.checkpoints]
    seen += [(h.size, h.head, h.signed_at) for h in records.heads]
    end = last_seq
    differs = sorted(
        (size, at)
        for size, head, at in seen
        if size > anchor.seq and size in hashes_at and hashes_at[size] != head
    )
    if differs:
        size, at = differs[0]
        problems.append(
            Problem(
                K.REWRITTEN,
                size,
                f"entry {size} is not the one {records.source} saw at {at}: the log was rewritten",
            )
        )
    if later and end is not None:
        top = max(later, key=lambda cp: cp.counter)
        # Named where the log first departs from what the witness saw, so a rollback
        # followed by new entries is called what it is, not a rewrite of those entries.
        since = min([end + 1, top.size] + [size for size, _ in differs[:1]])
        problems.append(
            Problem(
                K.ROLLED_BACK,
                since,
                f"rolled back: {records.source} holds checkpoint #{top.counter} (entry "
                f"{top.size}, signed {top.signed_at}), but the database and the checkpoint "
                f"file end at checkpoint #{local_top}; the log departs from it at entry {since}",
            )
        )
    if seen:
        size, _, at = max(seen)
        report.witnessed_up_to = max(report.witnessed_up_to, size)
        if end is not None and size > end:
            problems.append(
                Problem(
                    K.TRUNCATED,
                    end + 1,
                    f"truncated: entries {end + 1}..{size} missing; {records.source} saw the "
                    f"log at entry {size} ({at}), it now ends at entry {end}",
                )
            )
    return problems
