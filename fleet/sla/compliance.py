"""One compliance sample per agent: its SLA terms evaluated on its latest metrics snapshot.

The gateway holds no SLA terms and its own compliance check compares trust probes
that never run (it always answers "not compliant"), so Fleet Commander holds the
terms and judges them itself, from what the metrics sweep last read of the agent
(its self-reported p99 latency and error rate):

=====================  ===================================
fresh local snapshot   sample
=====================  ===================================
breaches terms T       BREACH (T)
meets every term       COMPLIANT
none, stale, or the    UNKNOWN: changes nothing
poll failed
=====================  ===================================

A snapshot is fresh when the metrics sweep wrote it less than
``sla.snapshot_max_age_s`` before the check. Terms the snapshot cannot measure
are not judged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from fleet.monitoring.snapshot import Health, Snapshot


class Verdict(StrEnum):
    BREACH = "breach"
    COMPLIANT = "compliant"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Sample:
    agent_id: str
    at: datetime
    verdict: Verdict
    breached_terms: tuple[str, ...] = ()
    margin_pct: float | None = None
    source: str = "snapshot"  # measured | snapshot | none
    note: str = ""

    def to_redis(self) -> dict[str, str]:
        return {
            "at": self.at.isoformat(),
            "verdict": self.verdict.value,
            "terms": ",".join(self.breached_terms),
            "margin_pct": "" if self.margin_pct is None else str(self.margin_pct),
            "source": self.source,
            "note": self.note[:300],
        }


def local_breaches(terms: Mapping[str, Any], snap: Snapshot) -> tuple[str, ...]:
    """The contract terms our own last poll shows broken (only those it can measure)."""
    out = []
    limit = terms.get("p99_latency_ms")
    if limit is not None and snap.latency_p99 is not None and snap.latency_p99 > float(limit):
        out.append("p99_latency_ms")
    limit = terms.get("max_error_rate")
    if limit is not None and snap.error_rate is not None and snap.error_rate > float(limit):
        out.append("max_error_rate")
    return tuple(out)


def is_fresh(snap: Snapshot | None, at: datetime, max_age_s: float) -> bool:
    return (
        snap is not None
        and snap.health is not Health.UNKNOWN
        and at.timestamp() - snap.polled_at <= max_age_s
    )


# Measured figures count once the work plane has seen this many of the agent's tasks.
MEASURED_MIN_TASKS = 20


def measured_view(snap: Snapshot, at: datetime, max_age_s: float) -> Snapshot | None:
    """The snapshot with the work plane's measured latency and error rate in place of the
    self-reported ones, when fresh measurements of enough tasks exist; else None."""
    if (
        snap.measured_at is None
        or at.timestamp() - snap.measured_at > max_age_s
        or (snap.measured_tasks or 0) < MEASURED_MIN_TASKS
    ):
        return None
    return dataclasses.replace(
        snap,
        latency_p99=snap.measured_latency_p99
        if snap.measured_latency_p99 is not None
        else snap.latency_p99,
        error_rate=snap.measured_error_rate
        if snap.measured_error_rate is not None
        else snap.error_rate,
    )


def decide(
    agent_id: str,
    at: datetime,
    snapshot: Snapshot | None,
    terms: Mapping[str, Any],
    snapshot_max_age_s: float,
) -> Sample:
    """SLA samples prefer what we measured of the agent's tasks over what it reports."""
    measured = measured_view(snapshot, at, snapshot_max_age_s) if snapshot is not None else None
    if measured is not None:
        source, snapshot = "measured", measured
    elif not is_fresh(snapshot, at, snapshot_max_age_s) or snapshot is None:
        why = "no snapshot" if snapshot is None else "no fresh snapshot"
        return Sample(agent_id, at, Verdict.UNKNOWN, (), None, "none", why)
    else:
        source = "snapshot"
    broken = local_breaches(terms, snapshot)
    margin = margin_pct(terms, snapshot)
    if broken:
        return Sample(agent_id, at, Verdict.BREACH, broken, margin, source)
    return Sample(agent_id, at, Verdict.COMPLIANT, (), margin, source)


def margin_pct(terms: Mapping[str, Any], snap: Snapshot) -> float | None:
    """How far the tightest measured term is from its limit, in percent of the limit
    (negative when broken); None when no term could be measured."""
    margins = []
    for term, value in (("p99_latency_ms", snap.latency_p99), ("max_error_rate", snap.error_rate)):
        limit = terms.get(term)
        if limit is not None and value is not None and float(limit) > 0:
            margins.append((float(limit) - value) / float(limit) * 100)
    return round(min(margins), 2) if margins else None
