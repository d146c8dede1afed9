"""After provisioning: key rotation, tier upgrades, retirement.

Retirement order (operations rules §5): stop routing → drain in-flight work
(up to the drain timeout) → settle SLAs → withdraw funds to the treasury →
final metrics snapshot and audit entry → deregister. Each finished stage is
recorded on the agent, so an interrupted retirement resumes where it stopped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select, update

from fleet.gateway import Conflict, NotFound, tools
from fleet.provisioning.pipeline import ProvisioningDeps, _key_of
from fleet.storage.db import write_session
from fleet.storage.records import Agent, AgentStatus, SlaContract

log = logging.getLogger(__name__)

RETIRE_STAGES = ("stop_routing", "drain", "settle_sla", "withdraw", "final_snapshot", "deregister")


class LifecycleError(Exception):
    """The agent is not in a state that allows this (unknown, not active, …)."""


# ---------------------------------------------------------------- keys


def keys_due(deps: ProvisioningDeps, limit: int = 1000) -> list[str]:
    cutoff = deps.clock.now() - timedelta(days=deps.policy.provisioning.key_rotation_days)
    with deps.sessions() as s:
        return list(
            s.scalars(
                select(Agent.agent_id)
                .where(Agent.status == AgentStatus.ACTIVE, Agent.key_rotated_at < cutoff)
                .order_by(Agent.key_rotated_at)
                .limit(limit)
            )
        )


def rotate_key(deps: ProvisioningDeps, agent_id: str) -> bool:
    """New key from the gateway (the old one keeps working for the overlap window);
    stored encrypted. False when another worker is rotating it, or it is not due."""
    with deps.lock(f"rotate:{agent_id}", 60) as lease:
        if lease is None:
            return False
        with deps.sessions() as s:
            agent = s.get(Agent, agent_id)
            if agent is None or agent.status != AgentStatus.ACTIVE:
                raise LifecycleError(f"agent {agent_id} is not active")
            rotated_at = agent.key_rotated_at
        cutoff = deps.clock.now() - timedelta(days=deps.policy.provisioning.key_rotation_days)
        if rotated_at is not None and rotated_at.replace(tzinfo=cutoff.tzinfo) > cutoff:
            return False  # a redelivered message: already rotated
        result = deps.gateway.run(tools.rotate_agent_key(agent_id))
        _update(
            deps,
            agent_id,
            api_key_encrypted=deps.vault.encrypt(_key_of(result)),
            key_rotated_at=deps.clock.now(),
        )
    deps.audit(
        actor="fleet-commander/provisioning",
        action="rotate_key",
        subject=agent_id,
        details={"overlap_s": str(deps.policy.provisioning.key_overlap_s)},
    )
    return True


# ---------------------------------------------------------------- tier upgrades


@dataclass(frozen=True)
class UpgradePlan:
    agent_id: str
    current_tier: str
    new_tier: str
    current_daily_cost: Decimal
    projected_daily_cost: Decimal

    @property
    def increase(self) -> Decimal:
        if self.current_daily_cost <= 0:
            return Decimal("Infinity") if self.projected_daily_cost > 0 else Decimal("0")
        return (self.projected_daily_cost - self.current_daily_cost) / self.current_daily_cost

    def needs_approval(self, threshold: float) -> bool:
        return self.increase > Decimal(str(threshold))

    def as_details(self) -> dict[str, str]:
        return {
            "current_tier": self.current_tier,
            "new_tier": self.new_tier,
            "current_daily_cost": str(self.current_daily_cost),
            "projected_daily_cost": str(self.projected_daily_cost),
            "increase_pct": "inf"
            if self.increase.is_infinite()
            else str((self.increase * 100).quantize(Decimal("0.1"))),
        }


def plan_upgrade(
    deps: ProvisioningDeps, agent_id: str, new_tier: str, projected_volume: int
) -> UpgradePlan:
    """Estimate the cost impact first (operations rules §5)."""
    agent = _active_agent(deps, agent_id)
    estimate = deps.gateway.run(tools.estimate_tier_change(agent_id, new_tier, projected_volume))
    return UpgradePlan(
        agent_id,
        agent.tier,
        new_tier,
        Decimal(estimate.current_daily_cost),
        Decimal(estimate.projected_daily_cost),
    )


def apply_upgrade(deps: ProvisioningDeps, plan: UpgradePlan, approved_by: list[str]) -> None:
    deps.gateway.run(tools.upgrade_agent_tier(plan.agent_id, plan.new_tier))
    _update(deps, plan.agent_id, tier=plan.new_tier)
    deps.audit(
        actor="fleet-commander/provisioning",
        action="upgrade_tier",
        subject=plan.agent_id,
        details={**plan.as_details(), "approved_by": ",".join(approved_by) or "not required"},
    )


# ---------------------------------------------------------------- retirement


@dataclass
class RetireDeps:
    inflight: Callable[[str], int]  # work items still running on the agent
    sleep: Callable[[float], None] = time.sleep
    poll_s: float = 1.0


def retire_agent(deps: ProvisioningDeps, rdeps: RetireDeps, agent_id: str, reason: str) -> str:
    """Run the remaining retirement stages; returns the agent's final status."""
    with deps.lock(f"retire:{agent_id}", deps.policy.scaling.drain_timeout_s + 120) as lease:
        if lease is None:
            return "held-by-another-worker"
        agent = _agent(deps, agent_id)
        if agent.status == AgentStatus.RETIRED:
            return AgentStatus.RETIRED
        if agent.status not in (AgentStatus.ACTIVE, AgentStatus.PAUSED, AgentStatus.RETIRING):
            raise LifecycleError(
                f"agent {agent_id} is {agent.status}; only active or paused agents retire"
            )
        done: list[str] = list(agent.extra.get("retire_stages", []))
        facts: dict[str, Any] = dict(agent.extra.get("retirement", {}))
        for stage in RETIRE_STAGES:
            if stage in done:
                continue
            facts.update(_RETIRE_FUNCS[stage](deps, rdeps, agent_id, reason) or {})
            done.append(stage)
            extra = {**_agent(deps, agent_id).extra, "retire_stages": done, "retirement": facts}
            values: dict[str, Any] = {"extra": extra}
            if stage == "stop_routing":
                values |= {"status": AgentStatus.RETIRING, "traffic_weight": "0"}
            _update(deps, agent_id, **values)
        _update(deps, agent_id, status=AgentStatus.RETIRED, api_key_encrypted=None)
    return AgentStatus.RETIRED


def _stop_routing(
    deps: ProvisioningDeps, rdeps: RetireDeps, agent_id: str, reason: str
) -> dict[str, Any]:
    return {"reason": reason, "started_at": deps.clock.now().isoformat()}


def _drain(deps: ProvisioningDeps, rdeps: RetireDeps, agent_id: str, reason: str) -> dict[str, Any]:
    deadline = time.monotonic() + deps.policy.scaling.drain_timeout_s
    while (left := rdeps.inflight(agent_id)) > 0 and time.monotonic() < deadline:
        rdeps.sleep(rdeps.poll_s)
    return {"drained": left <= 0, "abandoned_in_flight": max(left, 0)}


def _settle_sla(
    deps: ProvisioningDeps, rdeps: RetireDeps, agent_id: str, reason: str
) -> dict[str, Any]:
    violations = deps.gateway.run(tools.get_sla_violations(agent_id=agent_id))
    with write_session(deps.sessions) as s:
        s.execute(
            update(SlaContract)
            .where(SlaContract.agent_id == agent_id, SlaContract.ended_at.is_(None))
            .values(ended_at=deps.clock.now())
        )
    return {
        "sla_violations": len(violations.violations),
        "violation_minutes": str(violations.duration_minutes),
    }


def _withdraw(
    deps: ProvisioningDeps, rdeps: RetireDeps, agent_id: str, reason: str
) -> dict[str, Any]:
    try:
        deps.gateway.run(tools.freeze_wallet(agent_id, f"retirement: {reason}"[:200]))
    except NotFound:
        return {"withdrawn": "0.00"}
    except Conflict:
        pass  # frozen already (tier 4, or an earlier attempt)
    balance = deps.gateway.run(tools.get_balance(agent_id)).balance
    if balance > 0:
        deps.gateway.run(
            tools.transfer_funds(agent_id, deps.policy.provisioning.treasury_wallet, balance)
        )
    return {"withdrawn": str(balance)}


def _final_snapshot(
    deps: ProvisioningDeps, rdeps: RetireDeps, agent_id: str, reason: str
) -> dict[str, Any]:
    analytics = deps.gateway.run(tools.get_analytics(agent_id))
    snapshot = {
        "latency_p50": str(analytics.latency_p50),
        "latency_p99": str(analytics.latency_p99),
        "error_rate": str(analytics.error_rate),
        "tool_call_volume": str(analytics.tool_call_volume),
        "task_completion_rate": str(analytics.task_completion_rate),
        "at": deps.clock.now().isoformat(),
    }
    deps.audit(
        actor="fleet-commander/provisioning",
        action="retire_agent",
        subject=agent_id,
        details={"reason": reason, "final_snapshot": snapshot},
    )
    return {"final_snapshot": snapshot}


def _deregister(
    deps: ProvisioningDeps, rdeps: RetireDeps, agent_id: str, reason: str
) -> dict[str, Any]:
    try:
        deps.gateway.run(tools.deregister_agent(agent_id, f"retired: {reason}"[:500]))
    except NotFound:
        pass  # gone already: an earlier attempt got this far
    return {"deregistered_at": deps.clock.now().isoformat()}


_RETIRE_FUNCS = {
    "stop_routing": _stop_routing,
    "drain": _drain,
    "settle_sla": _settle_sla,
    "withdraw": _withdraw,
    "final_snapshot": _final_snapshot,
    "deregister": _deregister,
}
assert tuple(_RETIRE_FUNCS) == RETIRE_STAGES


def agents_matching(deps: ProvisioningDeps, agent_or_prefix: str) -> list[str]:
    """An exact agent id, or every retirable agent whose id starts with the prefix."""
    with deps.sessions() as s:
        if s.get(Agent, agent_or_prefix) is not None:
            return [agent_or_prefix]
        return list(
            s.scalars(
                select(Agent.agent_id)
                .where(
                    Agent.agent_id.startswith(agent_or_prefix + "-"),
                    Agent.status.in_(
                        [AgentStatus.ACTIVE, AgentStatus.PAUSED, AgentStatus.RETIRING]
                    ),
                )
                .order_by(Agent.agent_id)
            )
        )


# ---------------------------------------------------------------- helpers


def _agent(deps: ProvisioningDeps, agent_id: str) -> Agent:
    with deps.sessions() as s:
        agent = s.get(Agent, agent_id)
        if agent is None:
            raise LifecycleError(f"no agent {agent_id!r}")
        s.expunge(agent)
        return agent


def _active_agent(deps: ProvisioningDeps, agent_id: str) -> Agent:
    agent = _agent(deps, agent_id)
    if agent.status != AgentStatus.ACTIVE:
        raise LifecycleError(f"agent {agent_id} is {agent.status}, not active")
    return agent


def _update(deps: ProvisioningDeps, agent_id: str, **values: Any) -> None:
    with write_session(deps.sessions) as s:
        s.execute(
            update(Agent)
            .where(Agent.agent_id == agent_id)
            .values(**values, updated_at=deps.clock.now())
        )
