"""Time as a dependency: domain code reads a Clock, so tests and the demo can move it."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """A clock that only moves when told: a 30-minute escalation runs in milliseconds."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> datetime:
        self._now += timedelta(seconds=seconds)
        return self._now

    def set(self, when: datetime) -> None:
        self._now = when


class OffsetFileClock:
    """The system clock moved by the seconds written in a file: a clock that separate
    processes (workers, beat, the API) share and a test or demo moves by rewriting it.

    The file is read again only when it changes (its mtime); missing or empty means 0.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stamp: float | None = None
        self._offset = 0.0

    def offset_s(self) -> float:
        try:
            stamp = self._path.stat().st_mtime_ns
        except FileNotFoundError:
            return 0.0
        if stamp != self._stamp:
            text = self._path.read_text().strip()
            self._offset = float(text) if text else 0.0
            self._stamp = stamp
        return self._offset

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.offset_s())

    def advance(self, seconds: float) -> datetime:
        """Move every process reading this file forward (an atomic rewrite)."""
        offset = self.offset_s() + seconds
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(repr(offset))
        tmp.replace(self._path)
        return datetime.now(UTC) + timedelta(seconds=offset)


def clock_from(offset_file: Path | None) -> Clock:
    """The process's clock: the system's, or one moved by an offset file (settings)."""
    return OffsetFileClock(offset_file) if offset_file is not None else SystemClock()


def utc_from_timestamp(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def epoch_seconds() -> float:
    return time.time()
