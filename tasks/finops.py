"""The weekly FinOps review, on the `audit` queue: a thin wrapper over fleet.finops.

On the audit queue, beside the monthly compliance report: both are reports for people,
slow (a week of the ledger read, a few gateway calls) and never urgent, so they must not
hold up the routing queue that admits and settles spend. Beat sends it on Monday::

    audit.finops_review  {"fleet": "demo", "week": "2026-W48"}   (both optional: every
                          fleet with agents, the week before)
"""

from __future__ import annotations

from celery.exceptions import Reject

from fleet.audit.compliance import fleets_of
from fleet.finops import service
from fleet.finops.rates import GatewayFinance
from fleet.finops.review import ReviewError
from fleet.runtime import Runtime
from tasks._base import fleet_task, runtime
from workers.queues import TaskName


def finops_deps(rt: Runtime) -> service.FinopsDeps:
    return service.FinopsDeps(
        sessions=rt.sessions,
        policy=rt.settings.policy,
        finance=GatewayFinance(rt.gateway_sync.run),
        redis=rt.redis,
        clock=rt.clock,
        report_dir=rt.audit_log.files.report_dir,
    )


@fleet_task(TaskName.AUDIT_FINOPS_REVIEW)
def finops_review(fleet: str | None = None, week: str | None = None) -> list[str]:
    """Build and keep one fleet's review, or every fleet's for the week before (beat)."""
    rt = runtime()
    deps = finops_deps(rt)
    fleets = [fleet] if fleet else fleets_of(rt.engine) or [rt.settings.fleet_name]
    written = []
    for name in fleets:
        try:
            review = service.review(deps, name, week)
        except ReviewError as exc:
            raise Reject(f"finops review refused: {exc}", requeue=False) from None
        json_path, _ = service.save(review, deps.report_dir)
        written.append(str(json_path))
    return written
