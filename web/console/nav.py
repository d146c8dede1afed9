"""The console's navigation: every page, and the permission each needs to be offered.

A page a person may not open is not listed for them (the page itself checks again).
"""

from __future__ import annotations

from dataclasses import dataclass

from fleet.identity import Permission, Principal


@dataclass(frozen=True)
class NavItem:
    path: str
    label: str
    permission: Permission
    summary: str


NAV: tuple[NavItem, ...] = (
    NavItem("/console/", "Overview", Permission.MONITORING_READ, "fleet health, live"),
    NavItem("/console/agents", "Agents", Permission.MONITORING_READ, "every agent, drill-down"),
    NavItem("/console/sla", "SLA board", Permission.SLA_READ, "episodes, tiers, error budgets"),
    NavItem("/console/money", "Money", Permission.MONITORING_READ, "spend against budgets"),
    NavItem(
        "/console/provisioning",
        "Provisioning",
        Permission.PROVISIONING_READ,
        "jobs and manifests",
    ),
    NavItem("/console/approvals", "Approvals", Permission.APPROVALS_READ, "pending requests"),
    NavItem("/console/audit", "Audit", Permission.AUDIT_READ, "verify, checkpoints, export"),
    NavItem("/console/control", "Kill switch", Permission.MONITORING_READ, "pause loop, freeze"),
    NavItem("/console/scaling", "Scaling", Permission.MONITORING_READ, "autoscaler decisions"),
)


def nav_for(principal: Principal, current_path: str) -> list[dict[str, object]]:
    """The items this person may open, the current one marked."""
    items: list[dict[str, object]] = []
    for item in NAV:
        if not principal.may(item.permission):
            continue
        current = current_path == item.path or (
            item.path != "/console/" and current_path.startswith(item.path)
        )
        items.append(
            {"path": item.path, "label": item.label, "summary": item.summary, "current": current}
        )
    return items
