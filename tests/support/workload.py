"""Work for the integration tests: fleet manifests and audit events shaped like real ones."""

from __future__ import annotations

from typing import Any

from fleet.audit.events import ApprovalState, Article, AuditEvent, build_event


def fleet_manifest(
    agents: int, *, fleet: str, groups: int = 4, tier: str = "starter"
) -> dict[str, Any]:
    """``agents`` split over ``groups`` groups of ``tier``, each funded to 25.00."""
    per_group, rest = divmod(agents, groups)
    out = []
    for g in range(groups):
        count = per_group + (1 if g < rest else 0)
        if count:
            out.append(
                {
                    "id_prefix": f"{fleet}-seg{g}",
                    "count": count,
                    "tier": tier,
                    "initial_balance": "25.00",
                    "capabilities": ["support"],
                    "trust_claims": [{"type": "operator", "value": "integration"}],
                    "sla_template": "standard-support" if g % 2 == 0 else "premium-support",
                    "pricing": {"per_task": "0.02"},
                }
            )
    return {"fleet": fleet, "environment": "test", "agents": out}


def audit_events(count: int, fleet: str = "bench") -> list[AuditEvent]:
    """Entries shaped like the provisioning and escalation ones: a few fields, money as strings."""
    actions = (
        "provision_agent",
        "create_wallet",
        "restart_agent",
        "reroute_traffic",
        "freeze_agent",
    )
    return [
        build_event(
            actor="fleet-commander/test",
            action=actions[i % len(actions)],
            subject=f"seg{i % 4}-{i:04d}-{i * 2654435761 % 2**32:08x}",
            fleet=fleet,
            details={
                "step": i,
                "balance": f"{i % 1000}.{i % 100:02d}",
                "tier": "starter",
                "api_key": "never-stored",
            },
            article=Article.RECORD_KEEPING if i % 3 else Article.HUMAN_OVERSIGHT,
            approval=ApprovalState.NONE,
            trace_id=f"{i:032x}" if i else None,
            span_id=f"{i:016x}" if i else None,
        )
        for i in range(count)
    ]
