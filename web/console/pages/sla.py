"""The SLA and escalation board: open episodes (how long, which tier ran when), an
acknowledgement with a reason, error budgets per fleet with their burn-rate alerts."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Path, Query, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from fleet.identity import Permission, Principal
from fleet.runtime import Runtime
from fleet.sla.episodes import EpisodeClosed, EpisodeError, EpisodeNotFound
from web.console.render import page
from web.console.session import CsrfChecked, needs
from web.deps import get_runtime

router = APIRouter(prefix="/console/sla", include_in_schema=False)

Fleet = Annotated[str | None, Query(max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
EpisodeId = Annotated[str, Path(max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")]


def minutes(seconds: float | int | None) -> str:
    if seconds is None:
        return "—"
    s = int(seconds)
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def board_model(report: dict[str, Any]) -> dict[str, Any]:
    """The fleet report (fleet.sla.status.fleet_report) as the board shows it: open
    episodes longest first, each with its tiers in the order they ran."""
    open_eps = sorted(
        report.get("open_episodes", []), key=lambda e: e.get("duration_s", 0), reverse=True
    )
    for e in open_eps:
        e["duration"] = minutes(e.get("duration_s"))
        e["tiers"] = [
            {
                "tier": x["tier"],
                "action": x["action"],
                "status": x["status"],
                "at": (x.get("dispatched_at") or "")[:19],
                "after": minutes(x.get("episode_age_s")),
            }
            for x in sorted(e.get("escalations", []), key=lambda x: x["dispatched_at"] or "")
        ]
    budgets = [
        {"name": name, **b}
        for name, b in sorted((report.get("budgets") or {}).items(), key=lambda kv: kv[0])
    ]
    return {
        "open": open_eps,
        "closed": report.get("recently_closed", []),
        "budgets": budgets,
        "burn_alerts": report.get("alerts", []),
        "last_sweep": report.get("last_sweep"),
    }


def load_board(rt: Runtime, fleet: str | None) -> dict[str, Any]:
    from fleet.sla.status import fleet_report

    report = fleet_report(rt.sessions, rt.settings.policy, rt.clock.now(), fleet=fleet, r=rt.redis)
    return board_model(report)


@router.get("")
def board(
    request: Request,
    _: Annotated[Principal, needs(Permission.SLA_READ)],
    fleet: Fleet = None,
    done: Annotated[str | None, Query(max_length=300)] = None,
) -> HTMLResponse:
    rt = get_runtime(request)
    return page(request, "sla.html", {**load_board(rt, fleet), "fleet": fleet, "done": done})


@router.post("/episodes/{episode_id}/ack", dependencies=[needs(Permission.SLA_ACK)])
def acknowledge(
    request: Request,
    principal: CsrfChecked,
    episode_id: EpisodeId,
    reason: Annotated[str, Form(min_length=1, max_length=2000)],
) -> Response:
    """Acknowledge as the signed-in person, with a reason (tiers 3-4 wait until it lapses)."""
    from fleet.sla.service import acknowledge_episode

    rt = get_runtime(request)
    try:
        acknowledge_episode(
            rt.sessions,
            rt.settings.policy,
            rt.clock,
            episode_id,
            principal.principal_id,
            reason,
            attribution=principal.audit_fields(),
        )
        message = f"episode {episode_id} acknowledged by {principal.principal_id}"
    except (EpisodeNotFound, EpisodeClosed, EpisodeError) as exc:
        message = f"not acknowledged: {exc}"
    return RedirectResponse(f"/console/sla?{urlencode({'done': message})}", status_code=303)
