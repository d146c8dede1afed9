"""Tasks of the kill switch (fleet/control), on the `audit` queue.

task name:  audit.control.resume_loop      sent by the approvals sweep once a
kwargs:     {"requested_by": "...", "approval_id": "..."}   resume is approved
task name:  audit.control.release_fleet    likewise for a fleet's release
kwargs:     {"fleet": "...", "requested_by": "...", "approval_id": "..."}
task name:  audit.control.freeze_wallets   sent by a fleet freeze, a chunk of its agents
kwargs:     {"fleet": "...", "agents": ["agent id", ...]}
task name:  audit.control.sync             beat: Redis made true to the database
"""

from __future__ import annotations

import logging
from typing import Any

from fleet import control
from fleet.approvals import NotApproved
from fleet.control import FREEZE_WALLETS_TASK, RELEASE_FLEET_TASK, RESUME_TASK
from tasks._base import fleet_task, runtime
from workers.queues import TaskName

log = logging.getLogger(__name__)

assert RESUME_TASK == TaskName.CONTROL_RESUME_LOOP
assert RELEASE_FLEET_TASK == TaskName.CONTROL_RELEASE_FLEET
assert FREEZE_WALLETS_TASK == TaskName.CONTROL_FREEZE_WALLETS


@fleet_task(TaskName.CONTROL_RESUME_LOOP)
def resume_loop(requested_by: str, approval_id: str, reason: str = "") -> dict[str, Any]:
    try:
        return control.resume_loop(
            runtime().control, requested_by, approval_id=approval_id, reason=reason
        )
    except NotApproved as exc:
        log.warning("not resuming the control loop: %s", exc)
        return {"status": "refused", "error": str(exc)}


@fleet_task(TaskName.CONTROL_RELEASE_FLEET)
def release_fleet(
    fleet: str, requested_by: str, approval_id: str, reason: str = ""
) -> dict[str, Any]:
    try:
        return control.release_fleet(
            runtime().control, fleet, requested_by, approval_id=approval_id, reason=reason
        )
    except NotApproved as exc:
        log.warning("not releasing fleet %s: %s", fleet, exc)
        return {"status": "refused", "error": str(exc)}


@fleet_task(TaskName.CONTROL_FREEZE_WALLETS)
def freeze_wallets(fleet: str, agents: list[str]) -> dict[str, Any]:
    return control.freeze_wallets(runtime().control, fleet, agents)


@fleet_task(TaskName.CONTROL_SYNC)
def sync() -> dict[str, int]:
    return control.sync(runtime().control)
