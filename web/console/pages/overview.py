"""The fleet overview: agents by health class, fleet p99, error rate, SLA compliance,
burn rate, tool-call volume and history charts, open alerts, per fleet and per segment
(``fleet/segment``) — updated live (web/console/live.py).

:func:`overview_model` is pure: it turns what the sweep stored (the fleet view, its
history rows, open alerts) into what the template shows; :func:`load_overview`
reads those from the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from sqlalchemy import and_, or_, select
from starlette.responses import HTMLResponse

from fleet.identity import Permission
from fleet.monitoring import sweep as sweeping
from fleet.monitoring.aggregate import ALL_FLEETS
from fleet.monitoring.alerts import alert_view
from fleet.monitoring.models import Alert, FleetSweep
from fleet.monitoring.volume import hourly_volume
from fleet.runtime import Runtime
from fleet.storage.records import Agent
from web.console import charts
from web.console.render import page
from web.console.session import needs
from web.deps import get_runtime

router = APIRouter(prefix="/console", include_in_schema=False)

HEALTH_CLASSES = ("healthy", "degraded", "critical", "unknown")
# A fleet, "*" for all, or one fleet's segment as "fleet/segment" (its agents' id prefix).
FleetName = Annotated[
    str,
    Query(max_length=200, pattern=r"^[A-Za-z0-9*][A-Za-z0-9._*-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$"),
]


class UnknownFleet(ValueError):
    pass


@dataclass
class HistoryRow:
    at: datetime
    agents: int
    critical: int
    latency_p99: float | None
    error_rate: float | None
    burn_rate_per_hour: Decimal


@dataclass
class Overview:
    fleet: str  # the view: a fleet, "*", or "fleet/segment"
    fleets: list[str]
    health: dict[str, Any]
    counts: dict[str, int]
    agents: int
    sweep: dict[str, str]
    alerts: list[dict[str, Any]]
    bar: Any
    charts: dict[str, Any] = field(default_factory=dict)
    peaks: dict[str, str] = field(default_factory=dict)
    segments: list[str] = field(default_factory=list)  # "fleet/segment" views there are

    @property
    def agents_filter(self) -> str:
        """The agents list's query for this view (fleet, and segment)."""
        if self.fleet == ALL_FLEETS:
            return ""
        fleet, _, segment = self.fleet.partition("/")
        return f"&fleet={quote(fleet)}" + (f"&segment={quote(segment)}" if segment else "")

    @property
    def version(self) -> str:
        return self.sweep.get("sweep_id", "") + "|" + self.sweep.get("finished_at", "")

    @property
    def as_of(self) -> str | None:
        """When the view shown was made (UTC), for people; None before the first one."""
        try:
            at = datetime.fromtimestamp(float(self.sweep["finished_at"]), UTC)
        except (KeyError, ValueError, OverflowError, OSError):
            return None
        return f"{at:%H:%M:%S} UTC"


def _money(value: object) -> Decimal:
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        return Decimal(0)


def _calls(n: int) -> str:
    return f"{n:,} call" if n == 1 else f"{n:,} calls"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f} %"


def hourly(rows: list[HistoryRow], now: datetime, hours: int) -> list[dict[str, Any]]:
    """History rows folded per hour (the last ``hours``, oldest first): the worst p99 and
    error rate, the most critical agents, the mean burn of the hour's sweeps."""
    start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours - 1)
    buckets: list[dict[str, Any]] = [
        {"hour": start + timedelta(hours=i), "p99": None, "err": None, "crit": None, "burn": []}
        for i in range(hours)
    ]
    for row in rows:
        at = row.at if row.at.tzinfo else row.at.replace(tzinfo=now.tzinfo)
        i = int((at - start).total_seconds() // 3600)
        if not 0 <= i < hours:
            continue
        b = buckets[i]
        if row.latency_p99 is not None:
            b["p99"] = max(b["p99"] or 0.0, row.latency_p99)
        if row.error_rate is not None:
            b["err"] = max(b["err"] or 0.0, row.error_rate)
        b["crit"] = max(b["crit"] or 0, row.critical)
        b["burn"].append(row.burn_rate_per_hour)
    for b in buckets:
        burns = b.pop("burn")
        b["burn"] = float(sum(burns) / len(burns)) if burns else None
    return buckets


def overview_model(
    fleet: str,
    fleets: dict[str, dict[str, Any]],
    sweep: dict[str, str],
    alerts: list[dict[str, Any]],
    history: list[HistoryRow],
    now: datetime,
    hours: int,
    volume: list[tuple[datetime, int | None]] | None = None,
    segments: dict[str, dict[str, Any]] | None = None,
) -> Overview:
    views = {**fleets, **(segments or {})}
    if fleet not in views and fleet != ALL_FLEETS:
        what = "segment" if "/" in fleet else "fleet"
        raise UnknownFleet(
            f"no {what} {fleet!r} in the last sweep; known: "
            f"{', '.join(sorted(k for k in views if k != ALL_FLEETS)) or 'none'}"
        )
    health = dict(views.get(fleet) or {})
    counts = {k: int(health.get(k) or 0) for k in HEALTH_CLASSES}
    burn = _money(health.get("burn_rate_per_hour", "0"))
    p99 = health.get("latency_p99")
    shown = {
        "p99": "—" if p99 is None else f"{float(p99):,.0f} ms",
        "error_rate": _pct(health.get("error_rate")),
        "sla": _pct(health.get("sla_compliance")),
        "burn": f"${burn:,.2f}/h",
    }
    buckets = hourly(history, now, hours)
    labels = [b["hour"].strftime("%H:00") for b in buckets]

    def series(key: str, scale: float = 1.0) -> list[charts.Point]:
        return [
            charts.Point(lbl, None if b[key] is None else b[key] * scale)
            for lbl, b in zip(labels, buckets, strict=True)
        ]

    made = {
        "p99": charts.line_chart(f"Fleet p99 latency, last {hours} h", series("p99"), unit=" ms"),
        "errors": charts.line_chart(f"Error rate, last {hours} h", series("err", 100.0), unit=" %"),
        "critical": charts.line_chart(f"Critical agents, last {hours} h", series("crit")),
        "burn": charts.line_chart(f"Burn rate, last {hours} h", series("burn"), unit=" $/h"),
        "volume": charts.line_chart(
            f"Tool calls reported per hour, last {hours} h",
            [charts.Point(at.strftime("%H:00"), calls) for at, calls in volume or []],
        ),
    }
    peaks: dict[str, str] = {}
    reported = [(calls, at) for at, calls in volume or [] if calls is not None]
    if reported:
        calls, at = max(reported, key=lambda pair: pair[0])
        total = sum(c for c, _ in reported)
        peaks["volume"] = f"{_calls(calls)} in the hour from {at:%H:00} UTC"
        peaks["volume_total"] = f"{_calls(total)} in the last {hours} h"
    return Overview(
        fleet=fleet,
        fleets=sorted(f for f in fleets if f != ALL_FLEETS),
        health={**health, **{"shown": shown}},
        counts=counts,
        agents=int(health.get("agents") or sum(counts.values())),
        sweep=sweep,
        alerts=alerts,
        bar=charts.health_bar(counts),
        charts=made,
        peaks=peaks,
        segments=sorted(segments or {}),
    )


def load_overview(rt: Runtime, fleet: str) -> Overview:
    fleets, meta = sweeping.fleet_health(rt.redis)
    segments = sweeping.segment_health(rt.redis)
    of_fleet, _, segment = fleet.partition("/")
    cfg = rt.settings.console
    now = rt.clock.now()
    since = now - timedelta(hours=cfg.history_hours)
    with rt.sessions() as session:
        alert_q = (
            select(Alert)
            .where(Alert.resolved_at.is_(None))
            .order_by(Alert.fired_at.desc())
            .limit(cfg.overview_alerts)
        )
        if segment:
            members = select(Agent.agent_id).where(
                Agent.fleet == of_fleet, Agent.id_prefix == segment
            )
            # The segment's agents' alerts, and those of its whole fleet.
            alert_q = alert_q.where(
                or_(
                    Alert.subject.in_(members),
                    and_(Alert.scope == "fleet", Alert.subject == of_fleet),
                )
            )
        elif fleet != ALL_FLEETS:
            alert_q = alert_q.where(Alert.fleet == fleet)
        open_alerts = [alert_view(a) for a in session.scalars(alert_q)]
        # Columns, not ORM objects: a day of sweeps is over a thousand rows a fleet.
        hist = [
            HistoryRow(at, agents, critical, p99, err, _money(burn))
            for at, agents, critical, p99, err, burn in session.execute(
                select(
                    FleetSweep.finished_at,
                    FleetSweep.agents,
                    FleetSweep.critical,
                    FleetSweep.latency_p99,
                    FleetSweep.error_rate,
                    FleetSweep.burn_rate_per_hour,
                )
                .where(FleetSweep.started_at >= since, FleetSweep.fleet == fleet)
                .order_by(FleetSweep.finished_at)
            )
        ]
    counted = [f for f in fleets if f != ALL_FLEETS] if fleet == ALL_FLEETS else [fleet]
    calls = hourly_volume(rt.redis, counted, now, cfg.history_hours)
    return overview_model(
        fleet,
        fleets,
        meta,
        open_alerts,
        hist,
        now,
        cfg.history_hours,
        volume=calls,
        segments=segments,
    )


@router.get("/", dependencies=[needs(Permission.MONITORING_READ)])
def overview(request: Request, fleet: FleetName = ALL_FLEETS) -> HTMLResponse:
    rt = get_runtime(request)
    try:
        model = load_overview(rt, fleet)
    except UnknownFleet as exc:
        return page(
            request, "error.html", {"title": "Unknown fleet", "message": str(exc)}, status_code=404
        )
    return page(request, "overview.html", {"o": model})
