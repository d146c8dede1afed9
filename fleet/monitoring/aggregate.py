"""Fleet aggregation: counts per health class, fleet p99, error rate, SLA compliance %, burn rate.

Each batch of a sweep folds its agents into a :class:`Partial` per fleet;
partials merge exactly (sums, counts and the list of per-agent p99s), so the
fleet view at the end of a sweep reads a few hundred small records instead of
every agent's snapshot again.

Definitions: the fleet p99 is the 99th percentile (nearest rank) of the
agents' own p99 latencies; the fleet error rate is errors over calls (each
agent's error rate weighted by its tool-call volume; unweighted when no
volume is reported); SLA compliance is compliant agents over agents whose
compliance is known; the burn rate is the sum of the agents' $/h. Agents
whose poll failed count as unknown and nowhere else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from fleet.monitoring.snapshot import Health, Snapshot

ALL_FLEETS = "*"


@dataclass
class Partial:
    agents: int = 0
    healthy: int = 0
    degraded: int = 0
    critical: int = 0
    unknown: int = 0
    p99s: list[float] = field(default_factory=list)
    err_weighted: float = 0.0
    volume: int = 0
    err_sum: float = 0.0
    err_n: int = 0
    sla_ok: int = 0
    sla_known: int = 0
    burn: Decimal = Decimal(0)

    def add(self, snap: Snapshot) -> None:
        self.agents += 1
        health = snap.health
        if health is Health.HEALTHY:
            self.healthy += 1
        elif health is Health.DEGRADED:
            self.degraded += 1
        elif health is Health.CRITICAL:
            self.critical += 1
        else:
            self.unknown += 1
            return
        if snap.latency_p99 is not None:
            self.p99s.append(snap.latency_p99)
        if snap.error_rate is not None:
            self.err_sum += snap.error_rate
            self.err_n += 1
            if snap.tool_call_volume:
                self.err_weighted += snap.error_rate * snap.tool_call_volume
                self.volume += snap.tool_call_volume
        if snap.sla_compliant is not None:
            self.sla_known += 1
            self.sla_ok += snap.sla_compliant
        if snap.burn_rate_per_hour is not None:
            self.burn += snap.burn_rate_per_hour

    def merge(self, other: Partial) -> None:
        self.agents += other.agents
        self.healthy += other.healthy
        self.degraded += other.degraded
        self.critical += other.critical
        self.unknown += other.unknown
        self.p99s.extend(other.p99s)
        self.err_weighted += other.err_weighted
        self.volume += other.volume
        self.err_sum += other.err_sum
        self.err_n += other.err_n
        self.sla_ok += other.sla_ok
        self.sla_known += other.sla_known
        self.burn += other.burn

    def to_json(self) -> dict[str, Any]:
        return {
            "n": self.agents,
            "h": self.healthy,
            "d": self.degraded,
            "c": self.critical,
            "u": self.unknown,
            "p": [round(v, 3) for v in self.p99s],
            "ew": self.err_weighted,
            "v": self.volume,
            "es": self.err_sum,
            "en": self.err_n,
            "so": self.sla_ok,
            "sk": self.sla_known,
            "b": str(self.burn),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Partial:
        return cls(
            d["n"],
            d["h"],
            d["d"],
            d["c"],
            d["u"],
            list(d["p"]),
            d["ew"],
            d["v"],
            d["es"],
            d["en"],
            d["so"],
            d["sk"],
            Decimal(d["b"]),
        )

    def health(self, fleet: str) -> FleetHealth:
        if self.volume > 0:
            error_rate: float | None = self.err_weighted / self.volume
        elif self.err_n:
            error_rate = self.err_sum / self.err_n
        else:
            error_rate = None
        return FleetHealth(
            fleet=fleet,
            agents=self.agents,
            healthy=self.healthy,
            degraded=self.degraded,
            critical=self.critical,
            unknown=self.unknown,
            latency_p99=percentile(self.p99s, 0.99),
            error_rate=error_rate,
            sla_compliance=self.sla_ok / self.sla_known if self.sla_known else None,
            burn_rate_per_hour=self.burn.quantize(Decimal("0.01"))
            if self.burn
            else Decimal("0.00"),
        )


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..1) of values, or None for none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class FleetHealth:
    fleet: str
    agents: int
    healthy: int
    degraded: int
    critical: int
    unknown: int
    latency_p99: float | None
    error_rate: float | None
    sla_compliance: float | None
    burn_rate_per_hour: Decimal

    def as_dict(self) -> dict[str, Any]:
        return {
            "fleet": self.fleet,
            "agents": self.agents,
            "healthy": self.healthy,
            "degraded": self.degraded,
            "critical": self.critical,
            "unknown": self.unknown,
            "latency_p99": self.latency_p99,
            "error_rate": self.error_rate,
            "sla_compliance": self.sla_compliance,
            "burn_rate_per_hour": str(self.burn_rate_per_hour),
        }


def merge_partials(parts: list[dict[str, dict[str, Any]]]) -> dict[str, FleetHealth]:
    """Per-batch {fleet: partial} records → {fleet: FleetHealth}, plus ALL_FLEETS for everything."""
    per_fleet: dict[str, Partial] = {}
    total = Partial()
    for part in parts:
        for fleet, raw in part.items():
            p = Partial.from_json(raw)
            per_fleet.setdefault(fleet, Partial()).merge(p)
            total.merge(p)
    out = {fleet: p.health(fleet) for fleet, p in sorted(per_fleet.items())}
    out[ALL_FLEETS] = total.health(ALL_FLEETS)
    return out


__all__ = ["ALL_FLEETS", "FleetHealth", "Partial", "merge_partials", "percentile"]
