"""Witnesses: copies of the chain head kept where the database's owner cannot rewrite them.

The database and the data directory (``checkpoints.jsonl``) can be rolled back
together by whoever owns the host they sit on; a witness is somewhere else.
Two kinds:

- :class:`DirectoryWitness` (``audit.witness_dir``): a directory outside the
  data directory, ideally on another mount and append-only (``chattr +a`` on
  the file, a WORM bucket mount, an NFS export only the audit worker writes).
  Every signed checkpoint is appended to ``<chain>.jsonl`` there, and after
  every append a signed head (``{"type": "head", …}``), so the witness also
  sees entries that no checkpoint covers yet.
- the gateway's event bus: the outbox (:mod:`fleet.audit.mirror`) already
  publishes each checkpoint as a ``fleet.audit.checkpoint`` event;
  :func:`bus_records` reads them back for ``fleet audit verify --witness-bus``.

Records are signed with the audit key, so a witness that someone else can
write to still cannot be made to vouch for a forgery: verify ignores (and
reports) records whose signature does not check against the pinned key.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from fleet.audit.signing import Checkpoint, WitnessedHead

if TYPE_CHECKING:
    from fleet.gateway import Gateway

log = logging.getLogger("fleet.audit.witness")


@dataclass
class WitnessRecords:
    """What one witness holds about one chain."""

    source: str  # where it came from, for messages
    checkpoints: list[Checkpoint] = field(default_factory=list)
    heads: list[WitnessedHead] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # lines that are not records


class DirectoryWitness:
    def __init__(self, directory: Path, chain: str) -> None:
        self.directory = directory
        self.file = directory / f"{chain}.jsonl"
        self.chain = chain

    def _append(self, record: dict[str, Any], *, durable: bool) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        line = orjson.dumps(record) + b"\n"
        # One write on an O_APPEND descriptor: lines from concurrent workers never interleave,
        # and an append-only file (chattr +a) accepts exactly this and nothing else.
        fd = os.open(self.file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)

    def publish_checkpoint(self, checkpoint: Checkpoint) -> None:
        self._append({"type": "checkpoint", **checkpoint.to_dict()}, durable=True)

    def publish_head(self, head: WitnessedHead) -> None:
        # Not fsynced: a head lost in a crash only makes the witness lag, never lie.
        self._append({"type": "head", **head.to_dict()}, durable=False)

    def read(self) -> WitnessRecords:
        records = WitnessRecords(source=str(self.file))
        if not self.file.exists():
            return records
        with self.file.open("rb") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    data = orjson.loads(line)
                    kind = data.pop("type")
                    if data.get("chain") != self.chain:
                        continue
                    if kind == "checkpoint":
                        records.checkpoints.append(Checkpoint.from_dict(data))
                    elif kind == "head":
                        records.heads.append(WitnessedHead.from_dict(data))
                    else:
                        raise ValueError(kind)
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
                    records.unreadable.append(f"{self.file}:{number}")
        return records


def publish_safely(action: str, publish: Any, record: Any) -> None:
    """Publish to the witness; a witness that cannot be written is logged, never fatal.

    The entries are committed by then; the witness lagging makes it see less,
    and the next publication catches it up.
    """
    try:
        publish(record)
    except OSError as exc:
        log.error("audit witness: could not publish the %s: %s", action, exc)


def bus_records(gateway: Gateway, chain: str) -> WitnessRecords:
    """The checkpoints the outbox published on the gateway's event bus."""
    from fleet.audit.mirror import EVENT_TYPE
    from fleet.gateway import operations as ops

    records = WitnessRecords(source=f"the gateway's event bus ({EVENT_TYPE})")
    since: int | None = None
    while True:
        page = gateway.run(ops.get_events(event_type=EVENT_TYPE, since_id=since, limit=100))
        for event in page.events:
            payload = dict(event.payload)
            payload.pop("previous", None)
            if payload.get("chain") != chain:
                continue
            try:
                records.checkpoints.append(Checkpoint.from_dict(payload))
            except (KeyError, TypeError, ValueError):
                records.unreadable.append(f"event {event.id}")
        if len(page.events) < 100:
            return records
        since = page.events[-1].id
