"""Exports a regulator can verify on their own, with nothing but the public key.

JSON lines (``--format jsonl``)::

    {"type": "header", "chain": …, "public_key": <Ed25519, 64 hex>, "key_id": …, …}
    {"type": "entry", "seq": n, "hash": h, "body": {"chain", "entry", "prev", "seq", "v"}}
    …
    {"type": "checkpoint", "chain", "size", "head", "signed_at", "key_id", "signature"}

CSV (``--format csv``): one row per record, ``record`` being ``key``, ``entry``
or ``checkpoint``; entry rows carry the readable fields, ``prev``, ``hash`` and
``body`` (the canonical JSON that was hashed). A cell that a spreadsheet would
run as a formula (it begins with ``= + - @``, a tab or a CR), or that begins
with ``'``, is written with a ``'`` in front; readers drop that one quote.

To verify: for each entry, ``hash == sha256(RFC8785(body))`` and
``body.prev`` is the previous entry's hash (``body.seq`` counting up by one);
each checkpoint's signature verifies over the RFC 8785 bytes of ``{"chain",
"counter", "head", "key_id", "prev_checkpoint", "signed_at", "size", "type":
"checkpoint", "v": 2}`` (``{"chain", "head", "key_id", "signed_at", "size",
"type": "checkpoint", "v": 1}`` for one with counter 0), and its ``head`` is
the hash of entry ``size``. The export ends on a checkpoint, so
every entry in it is covered by a signature. :func:`verify_export` does this.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Literal

import orjson
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Connection, func, select

from fleet.audit.canonical import FORMAT_VERSION
from fleet.audit.events import format_time
from fleet.audit.log import AuditLog, read_anchor, read_head
from fleet.audit.models import AuditCheckpoint, AuditEntry
from fleet.audit.signing import (
    Checkpoint,
    key_id_of,
    load_public_key,
    public_key_hex,
    signature_valid,
)

Format = Literal["jsonl", "csv"]
EXPORT_FORMAT = "fleet-commander-audit-export"

_READABLE = (
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
    "event_id",
)
CSV_COLUMNS = (
    "record",
    "seq",
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
    "event_id",
    "details",
    "prev",
    "hash",
    "body",
    "size",
    "head",
    "signed_at",
    "key_id",
    "signature",
    "public_key",
    "counter",
    "prev_checkpoint",
)


# What makes Excel, LibreOffice or Sheets read a cell as a formula (OWASP "CSV injection");
# a leading quote is escaped too, so unescaping gives back exactly what was written.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")


def spreadsheet_safe(value: object) -> object:
    """The cell as written: text a spreadsheet would evaluate gets a leading quote."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def spreadsheet_value(cell: str) -> str:
    """The text a cell written by :func:`spreadsheet_safe` stood for."""
    return cell[1:] if cell.startswith("'") else cell


class _SafeWriter:
    """csv.DictWriter whose every cell goes through :func:`spreadsheet_safe`."""

    def __init__(self, text: IO[str]) -> None:
        self._writer = csv.DictWriter(text, CSV_COLUMNS)

    def writeheader(self) -> None:
        self._writer.writeheader()

    def writerow(self, row: dict[str, Any]) -> None:
        self._writer.writerow({k: spreadsheet_safe(v) for k, v in row.items()})


@dataclass(frozen=True)
class ExportSummary:
    first_seq: int | None
    last_seq: int | None
    entries: int
    checkpoints: int


def _seq_range(
    conn: Connection, log: AuditLog, since: datetime | None, until: datetime | None
) -> tuple[int, int]:
    """A contiguous run of the chain (so it can be verified) covering [since, until)."""
    chain = log.chain
    anchor, head = read_anchor(conn, chain), read_head(conn, chain)
    first, last = anchor.seq + 1, head.seq
    if since is not None:
        found = conn.execute(
            select(func.min(AuditEntry.seq)).where(
                AuditEntry.chain == chain, AuditEntry.time >= format_time(since)
            )
        ).scalar()
        first = found if found is not None else last + 1
    if until is not None:
        found = conn.execute(
            select(func.max(AuditEntry.seq)).where(
                AuditEntry.chain == chain, AuditEntry.time < format_time(until)
            )
        ).scalar()
        last = found if found is not None else first - 1
    return first, last


def export_log(
    log: AuditLog,
    out: IO[bytes],
    *,
    fmt: Format = "jsonl",
    since: datetime | None = None,
    until: datetime | None = None,
    first_seq: int | None = None,
    last_seq: int | None = None,
    sign_head: bool = True,
) -> ExportSummary:
    """Write entries (by time, or by sequence numbers) with the checkpoints that cover them.

    With sign_head the current head is checkpointed first, so the export ends
    on a signature whatever the checkpoint cadence.
    """
    if sign_head:
        log.checkpoint()
    signer = log.signer
    with log.engine.connect() as conn:
        first, last = _seq_range(conn, log, since, until)
        if first_seq is not None:
            first = max(first, first_seq)
        if last_seq is not None:
            last = min(last, last_seq)
        # The checkpoint at first-1 vouches for the link into the first entry;
        # the first one at or after `last` covers the final entries.
        checkpoints = [
            Checkpoint.from_dict(dict(m))
            for m in conn.execute(
                select(AuditCheckpoint)
                .where(AuditCheckpoint.chain == log.chain, AuditCheckpoint.size >= first - 1)
                .order_by(AuditCheckpoint.size)
            ).mappings()
        ]
        covering = [cp for cp in checkpoints if cp.size <= last] + [
            cp for cp in checkpoints if cp.size > last
        ][:1]
        header = {
            "type": "header",
            "format": EXPORT_FORMAT,
            "version": FORMAT_VERSION,
            "chain": log.chain,
            "exported_at": format_time(log.clock.now()),
            "since": format_time(since) if since else None,
            "until": format_time(until) if until else None,
            "first_seq": first if last >= first else None,
            "last_seq": last if last >= first else None,
            "hash": "SHA-256 of the RFC 8785 canonical JSON of body",
            "signature": "Ed25519 over the RFC 8785 canonical JSON of the checkpoint without its "
            "signature",
            "public_key": signer.public_hex,
            "key_id": signer.key_id,
        }
        rows = conn.execution_options(stream_results=True, yield_per=20_000).execute(
            select(AuditEntry.seq, AuditEntry.hash, AuditEntry.body, AuditEntry.prev_hash)
            .where(AuditEntry.chain == log.chain, AuditEntry.seq >= first, AuditEntry.seq <= last)
            .order_by(AuditEntry.seq)
        )
        if fmt == "jsonl":
            count = _write_jsonl(out, header, rows, covering)
        else:
            count = _write_csv(out, header, rows, covering)
    return ExportSummary(first if count else None, last if count else None, count, len(covering))


def _write_jsonl(
    out: IO[bytes], header: dict[str, Any], rows: Any, checkpoints: list[Checkpoint]
) -> int:
    out.write(orjson.dumps(header) + b"\n")
    count = 0
    for seq, digest, body, _prev in rows:
        # The stored canonical bytes go out untouched: no re-serialisation can alter them.
        out.write(
            b'{"type":"entry","seq":%d,"hash":"%s","body":%s}\n'
            % (seq, digest.encode(), body.encode("utf-8"))
        )
        count += 1
    for cp in checkpoints:
        out.write(orjson.dumps({"type": "checkpoint", **cp.to_dict()}) + b"\n")
    return count


def _write_csv(
    out: IO[bytes], header: dict[str, Any], rows: Any, checkpoints: list[Checkpoint]
) -> int:
    text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)
    writer = _SafeWriter(text)
    writer.writeheader()
    writer.writerow(
        {"record": "key", "public_key": header["public_key"], "key_id": header["key_id"]}
    )
    count = 0
    for seq, digest, body, prev in rows:
        entry = orjson.loads(body)["entry"]
        writer.writerow(
            {
                "record": "entry",
                "seq": seq,
                "prev": prev,
                "hash": digest,
                "body": body,
                **{k: entry[k] for k in _READABLE},
                "details": rfc8785.dumps(entry["details"]).decode("utf-8"),
            }
        )
        count += 1
    for cp in checkpoints:
        writer.writerow(
            {"record": "checkpoint", **{k: v for k, v in cp.to_dict().items() if k != "chain"}}
        )
    text.detach()
    return count


# ------------------------------------------------------------------ verifying an export


@dataclass
class ExportCheck:
    entries: int = 0
    checkpoints: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    key_id: str | None = None
    first_prev: str | None = None  # what the first entry links to
    last_hash: str | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(kind, record) from either export format."""
    with path.open("rb") as handle:
        start = handle.read(1)
        handle.seek(0)
        if start == b"{":
            for line in handle:
                if line.strip():
                    record = orjson.loads(line)
                    yield record["type"], record
            return
        reader = csv.DictReader(io.TextIOWrapper(handle, encoding="utf-8", newline=""))
        for raw in reader:
            row = {k: spreadsheet_value(v or "") for k, v in raw.items()}
            kind = row["record"]
            if kind == "key":
                yield "header", {"public_key": row["public_key"], "key_id": row["key_id"]}
            elif kind == "entry":
                body = orjson.loads(row["body"])
                entry = body.get("entry") or {}
                # The readable columns must say what the hashed body says.
                readable = {k: row[k] or None for k in _READABLE}
                hashed = {k: entry.get(k) for k in _READABLE}
                details_ok = row["details"] == rfc8785.dumps(entry.get("details")).decode("utf-8")
                yield (
                    "entry",
                    {
                        "seq": int(row["seq"]),
                        "hash": row["hash"],
                        "body": body,
                        "columns_ok": readable == hashed
                        and details_ok
                        and row["prev"] == body.get("prev"),
                    },
                )
            elif kind == "checkpoint":
                yield "checkpoint", {**row, "size": int(row["size"])}


def verify_export(path: Path, public_key: Ed25519PublicKey | str | None = None) -> ExportCheck:
    """Check an export alone. Pass the public key obtained out of band to pin it;
    otherwise the key in the export is used (which proves integrity, not origin)."""
    check = ExportCheck()
    pinned = load_public_key(public_key) if isinstance(public_key, str) else public_key
    key = pinned
    prev: str | None = None
    hashes: dict[int, str] = {}
    checkpoints: list[Checkpoint] = []
    chain: str | None = None
    for kind, record in _records(path):
        if kind == "header":
            check.key_id = record["key_id"]
            if key is None:
                key = load_public_key(record["public_key"])
                check.warnings.append(
                    "public key taken from the export itself: compare its key_id with the one "
                    "published"
                )
            elif key_id_of(record["public_key"]) != key_id_of(public_key_hex(key)):
                check.problems.append(
                    "the export was signed with a different key than the one given"
                )
            chain = record.get("chain", chain)
        elif kind == "entry":
            body, seq, digest = record["body"], int(record["seq"]), record["hash"]
            chain = chain or body.get("chain")
            if hashlib.sha256(rfc8785.dumps(body)).hexdigest() != digest:
                check.problems.append(f"entry {seq}: hash does not match its content")
            if body.get("seq") != seq or body.get("chain") != chain:
                check.problems.append(f"entry {seq}: position or chain differs from its content")
            if not record.get("columns_ok", True):
                check.problems.append(f"entry {seq}: readable columns differ from the hashed body")
            if prev is not None and body.get("prev") != prev:
                check.problems.append(f"entry {seq}: does not link to the entry before it")
            if check.first_seq is not None and seq != (check.last_seq or 0) + 1:
                check.problems.append(
                    f"entry {seq}: follows entry {check.last_seq} (missing or reordered entries)"
                )
            if check.first_seq is None:
                check.first_seq = seq
                check.first_prev = body.get("prev")
                hashes[seq - 1] = body.get("prev")
            check.last_seq = seq
            check.last_hash = digest
            hashes[seq] = digest
            prev = digest
            check.entries += 1
        elif kind == "checkpoint":
            checkpoints.append(
                Checkpoint(
                    chain=record.get("chain") or chain or "",
                    size=int(record["size"]),
                    head=record["head"],
                    signed_at=record["signed_at"],
                    key_id=record["key_id"],
                    signature=record["signature"],
                    counter=int(record.get("counter") or 0),
                    prev_checkpoint=record.get("prev_checkpoint") or "",
                )
            )
    if key is None:
        check.problems.append("no public key: the export has no header")
        return check
    covered = 0
    for cp in checkpoints:
        if not signature_valid(cp, key):
            check.problems.append(f"checkpoint at {cp.size}: signature does not verify")
            continue
        if cp.size in hashes and hashes[cp.size] != cp.head:
            check.problems.append(f"checkpoint at {cp.size}: the entry there has a different hash")
            continue
        check.checkpoints += 1
        if cp.size in hashes:
            covered = max(covered, cp.size)
    if check.last_seq is not None and covered < check.last_seq:
        check.warnings.append(
            f"entries {covered + 1}..{check.last_seq} are not covered by a checkpoint in the export"
        )
    return check
