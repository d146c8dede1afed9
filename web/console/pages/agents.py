"""Agents: the paged, filtered list (fleet, segment, status, health, id), and one
agent's drill-down: identity, tier, wallet, history charts, SLA episodes and error
budget, recent tasks and their cost, audit entries, and the levers that apply.

The list pages in SQL; a health filter reads the health of the matching agents'
snapshots with one Redis script per 5,000 (it returns only the matches), then pages.
Levers go through the approval rules: resuming a paused agent is a release request
(``release_agent``), retiring one a CRITICAL ``retire_agent`` request; freezing and
releasing one agent are the kill switch's (/console/control).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Path, Query, Request
from sqlalchemy import func, select
from starlette.responses import HTMLResponse, RedirectResponse, Response

from fleet.approvals.release import request_release
from fleet.audit.models import AuditEntry
from fleet.identity import Permission, Principal
from fleet.monitoring.models import AgentHourly
from fleet.monitoring.snapshot import Snapshot, snapshot_key
from fleet.runtime import Runtime
from fleet.storage import wallets
from fleet.storage.records import Agent, AgentStatus
from fleet.work.records import WorkTask
from web.console import charts
from web.console.render import page
from web.console.session import CsrfChecked, needs
from web.deps import get_runtime
from workers.queues import TaskName

router = APIRouter(prefix="/console/agents", include_in_schema=False)

HEALTHS = ("healthy", "degraded", "critical", "unknown")
Name = Annotated[str | None, Query(max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
AgentId = Annotated[str, Path(max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]


@dataclass(frozen=True)
class Filters:
    fleet: str | None = None
    segment: str | None = None
    status: str | None = None
    health: str | None = None
    q: str | None = None
    page: int = 1
    size: int = 50

    def query(self, **changes: Any) -> str:
        values = {**self.__dict__, **changes}
        return urlencode({k: v for k, v in values.items() if v not in (None, "")})


class BadFilter(ValueError):
    pass


def parse_filters(
    fleet: str | None,
    segment: str | None,
    status: str | None,
    health: str | None,
    q: str | None,
    page_no: int,
    size: int | None,
    default_size: int,
    max_size: int,
) -> Filters:
    """The list's filters from the query string; a bad one is refused by name."""
    if status and status not in {s.value for s in AgentStatus}:
        raise BadFilter(
            f"status {status!r} is not one of {', '.join(s.value for s in AgentStatus)}"
        )
    if health and health not in HEALTHS:
        raise BadFilter(f"health {health!r} is not one of {', '.join(HEALTHS)}")
    chosen = default_size if size is None else size
    if not 1 <= chosen <= max_size:
        raise BadFilter(f"size {chosen} is not between 1 and {max_size}")
    if page_no < 1:
        raise BadFilter(f"page {page_no} is below 1")
    return Filters(
        fleet or None, segment or None, status or None, health or None, q or None, page_no, chosen
    )


def _where(stmt: Any, f: Filters) -> Any:
    if f.fleet:
        stmt = stmt.where(Agent.fleet == f.fleet)
    if f.segment:
        stmt = stmt.where(Agent.id_prefix == f.segment)
    if f.status:
        stmt = stmt.where(Agent.status == f.status)
    else:
        stmt = stmt.where(Agent.status != AgentStatus.SYSTEM)
    if f.q:
        escaped = f.q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        stmt = stmt.where(Agent.agent_id.like(f"%{escaped}%", escape="\\"))
    return stmt


# Which of KEYS (snapshot hashes) have health ARGV[1] (no snapshot: unknown): their
# 1-based positions. Filtering in Redis sends back the matches only, not every health
# (10,000 agents: 24 ms where a pipeline of HGETs took 135 ms).
_WITH_HEALTH = """
local out = {}
for i, k in ipairs(KEYS) do
  local h = redis.call('HGET', k, 'health') or 'unknown'
  if h == ARGV[1] then out[#out + 1] = i end
end
return out
"""
# Keys per script call: bounds how long one call holds Redis.
HEALTH_CHUNK = 5000


def _with_health(rt: Runtime, ids: list[str], health: str) -> list[str]:
    script = rt.redis.register_script(_WITH_HEALTH)
    out: list[str] = []
    for start in range(0, len(ids), HEALTH_CHUNK):
        chunk = ids[start : start + HEALTH_CHUNK]
        hits = script(keys=[snapshot_key(a) for a in chunk], args=[health])
        out.extend(chunk[int(i) - 1] for i in hits)
    return out


def _snapshots(rt: Runtime, ids: list[str]) -> dict[str, Snapshot]:
    pipe = rt.redis.pipeline(transaction=False)
    for agent_id in ids:
        pipe.hgetall(snapshot_key(agent_id))
    out: dict[str, Snapshot] = {}
    for agent_id, raw in zip(ids, pipe.execute(), strict=True):
        if raw:
            try:
                out[agent_id] = Snapshot.from_redis(raw)
            except (KeyError, ValueError):
                continue
    return out


def list_agents(rt: Runtime, f: Filters) -> dict[str, Any]:
    """One page of agents matching ``f``, with their snapshots, the total and the choices."""
    with rt.sessions() as session:
        if f.health:
            ids = list(session.scalars(_where(select(Agent.agent_id), f).order_by(Agent.agent_id)))
            ids = _with_health(rt, ids, f.health)
            total = len(ids)
            page_ids = ids[(f.page - 1) * f.size : f.page * f.size]
            rows = list(session.scalars(select(Agent).where(Agent.agent_id.in_(page_ids))))
            rows.sort(key=lambda a: a.agent_id)
        else:
            total = session.scalar(_where(select(func.count()).select_from(Agent), f)) or 0
            rows = list(
                session.scalars(
                    _where(select(Agent), f)
                    .order_by(Agent.agent_id)
                    .offset((f.page - 1) * f.size)
                    .limit(f.size)
                )
            )
        fleets = sorted(session.scalars(select(Agent.fleet).distinct()))
        seg_q = select(Agent.id_prefix).distinct()
        if f.fleet:
            seg_q = seg_q.where(Agent.fleet == f.fleet)
        segments = sorted(session.scalars(seg_q))
        agents: list[dict[str, Any]] = [
            {
                "agent_id": a.agent_id,
                "fleet": a.fleet,
                "segment": a.id_prefix,
                "tier": a.tier,
                "status": str(a.status),
            }
            for a in rows
        ]
    snaps = _snapshots(rt, [a["agent_id"] for a in agents])
    for a in agents:
        s = snaps.get(a["agent_id"])
        a["health"] = s.health.value if s else "unknown"
        a["p99"] = s.latency_p99 if s else None
        a["error_rate"] = s.error_rate if s else None
        a["balance"] = s.balance if s else None
    pages = max(1, -(-total // f.size))
    return {
        "agents": agents,
        "total": total,
        "pages": pages,
        "filters": f,
        "fleets": fleets,
        "segments": segments,
        "statuses": [s.value for s in AgentStatus if s is not AgentStatus.SYSTEM],
        "healths": HEALTHS,
    }


@router.get("")
def agents_page(
    request: Request,
    _: Annotated[Principal, needs(Permission.MONITORING_READ)],
    fleet: Name = None,
    segment: Name = None,
    status: Annotated[str | None, Query(max_length=32)] = None,
    health: Annotated[str | None, Query(max_length=32)] = None,
    q: Annotated[str | None, Query(max_length=128)] = None,
    page_no: Annotated[int, Query(alias="page", ge=1, le=1_000_000)] = 1,
    size: Annotated[int | None, Query(ge=1, le=100_000)] = None,
) -> HTMLResponse:
    rt = get_runtime(request)
    cfg = rt.settings.console
    try:
        f = parse_filters(
            fleet, segment, status, health, q, page_no, size, cfg.page_size, cfg.max_page_size
        )
    except BadFilter as exc:
        return page(
            request, "error.html", {"title": "Bad filter", "message": str(exc)}, status_code=400
        )
    return page(request, "agents.html", list_agents(rt, f))


# --- one agent ---------------------------------------------------------------------------


def _dec(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(Decimal(value))
    except (InvalidOperation, ValueError):
        return None


def agent_history(rows: list[AgentHourly]) -> dict[str, Any]:
    """The drill-down's charts from the agent's hourly rollups (oldest first)."""
    labels = [r.hour.strftime("%d %H:00") for r in rows]

    def series(values: list[float | None]) -> list[charts.Point]:
        return [charts.Point(lbl, v) for lbl, v in zip(labels, values, strict=True)]

    return {
        "latency": charts.line_chart(
            "p99 latency (hourly mean)", series([r.latency_p99_avg for r in rows]), unit=" ms"
        ),
        "errors": charts.line_chart(
            "Error rate (hourly mean)",
            series([None if r.error_rate_avg is None else r.error_rate_avg * 100 for r in rows]),
            unit=" %",
        ),
        "balance": charts.line_chart(
            "Balance (hourly low)", series([_dec(r.balance_min) for r in rows]), unit=" $"
        ),
        "burn": charts.line_chart(
            "Burn rate (hourly mean)", series([_dec(r.burn_rate_avg) for r in rows]), unit=" $/h"
        ),
    }


def agent_detail(rt: Runtime, agent_id: str) -> dict[str, Any] | None:
    from fleet.sla.status import agent_report

    cfg = rt.settings.console
    now = rt.clock.now()
    with rt.sessions() as session:
        agent = session.get(Agent, agent_id)
        if agent is None:
            return None
        head = {
            "agent_id": agent.agent_id,
            "fleet": agent.fleet,
            "environment": agent.environment,
            "segment": agent.id_prefix,
            "tier": agent.tier,
            "status": str(agent.status),
            "capabilities": list(agent.capabilities or []),
            "wallet_id": agent.wallet_id,
            "sla_template": agent.sla_template,
            "traffic_weight": agent.traffic_weight,
            "created_at": agent.created_at,
            "public_key": (agent.extra or {}).get("public_key"),
            "wallet": wallets.state(agent),
        }
        hourly = list(
            session.scalars(
                select(AgentHourly)
                .where(
                    AgentHourly.agent_id == agent_id,
                    AgentHourly.hour >= now - timedelta(hours=cfg.history_hours),
                )
                .order_by(AgentHourly.hour)
            )
        )
        tasks = [
            {
                "task_id": t.task_id,
                "type": t.type,
                "state": t.state,
                "model": t.model,
                "charged": t.charged or t.actual or t.estimate,
                "latency_ms": t.latency_ms,
                "finished_at": t.finished_at,
            }
            for t in session.scalars(
                select(WorkTask)
                .where(WorkTask.agent_id == agent_id)
                .order_by(WorkTask.finished_at.desc())
                .limit(cfg.agent_recent)
            )
        ]
        audit = [
            {"time": e.time, "actor": e.actor, "action": e.action, "seq": e.seq}
            for e in session.scalars(
                select(AuditEntry)
                .where(AuditEntry.subject == agent_id)
                .order_by(AuditEntry.time.desc())
                .limit(cfg.agent_recent)
            )
        ]
    snap = _snapshots(rt, [agent_id]).get(agent_id)
    report = agent_report(rt.sessions, rt.settings.policy, now, agent_id, r=rt.redis) or {}
    budgets = rt.settings.policy.budgets
    return {
        "agent": head,
        "snap": snap,
        "wallet": {
            "balance": snap.balance if snap else None,
            "burn": snap.burn_rate_per_hour if snap else None,
            # Ours to know: the gateway has no read of a wallet's frozen flag.
            "frozen": head["wallet"],
            "cap_per_agent_hour": budgets.per_agent_hour,
            "cap_per_task": budgets.per_task,
        },
        "history": agent_history(hourly),
        "sla": report,
        "tasks": tasks,
        "audit": audit,
    }


@router.get("/{agent_id}")
def agent_page(
    request: Request,
    _: Annotated[Principal, needs(Permission.MONITORING_READ)],
    agent_id: AgentId,
    done: Annotated[str | None, Query(max_length=200)] = None,
) -> HTMLResponse:
    rt = get_runtime(request)
    detail = agent_detail(rt, agent_id)
    if detail is None:
        return page(
            request,
            "error.html",
            {"title": "No such agent", "message": f"no agent {agent_id!r}"},
            status_code=404,
        )
    return page(request, "agent.html", {**detail, "done": done})


def _back(agent_id: str, message: str) -> Response:
    return RedirectResponse(
        f"/console/agents/{agent_id}?{urlencode({'done': message[:200]})}", status_code=303
    )


Reason = Annotated[str, Form(min_length=1, max_length=2000)]


@router.post("/{agent_id}/release", dependencies=[needs(Permission.APPROVALS_REQUEST)])
def release(
    request: Request, principal: CsrfChecked, agent_id: AgentId, reason: Reason
) -> Response:
    """Resume a paused agent: a release request, run once someone else approves it."""
    rt = get_runtime(request)
    with rt.sessions() as session:
        agent = session.get(Agent, agent_id)
        if agent is None or agent.status != AgentStatus.PAUSED:
            return _back(agent_id, f"{agent_id} is not paused: nothing to release")
        fleet = agent.fleet
    gate = request_release(
        rt.approvals, agent_id, principal.principal_id, reason=reason, fleet=fleet
    )
    return _back(
        agent_id,
        f"release requested ({gate.risk.value}): approval {gate.request_id} "
        "waits for another person",
    )


@router.post("/{agent_id}/retire", dependencies=[needs(Permission.APPROVALS_REQUEST)])
def retire(request: Request, principal: CsrfChecked, agent_id: AgentId, reason: Reason) -> Response:
    """Retire: a CRITICAL request (two approvers); once approved it drains and deregisters."""
    rt = get_runtime(request)
    with rt.sessions() as session:
        agent = session.get(Agent, agent_id)
        if agent is None or agent.status not in (AgentStatus.ACTIVE, AgentStatus.PAUSED):
            return _back(agent_id, f"{agent_id} is not active or paused: it cannot be retired")
        fleet = agent.fleet
    gate = rt.approvals.request(
        "retire_agent",
        agent_id,
        principal.principal_id,
        fleet=fleet,
        reason=reason,
        irreversible=True,
        task=TaskName.RETIRE_AGENT,
        task_kwargs={"agent_id": agent_id, "reason": reason},
    )
    need = gate.request.required if gate.request else 0
    return _back(
        agent_id,
        f"retirement requested ({gate.risk.value}, {need} approver(s)): approval {gate.request_id}",
    )
