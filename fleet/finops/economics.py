"""Fleet economics (operations.md §3): monthly cost, ROI and break-even per segment.

Monthly cost of a segment = Σ its agents (tasks/day × calls/task × cost/call × days
+ provisioning + monitoring overhead), where

- tasks/day and cost/call come from a week of the ledger (the segment's attributed cost
  over its tasks, calls/task from ``finops.calls_per_task``); a week still running counts
  its tasks over the days it has had so far, not seven,
- provisioning is the monthly price of each agent's key tier (``provisioning.tier_prices``),
- monitoring overhead is what the sweeps cost at the gateway, measured per fleet over the
  last hour (fleet.monitoring.sweep), × 24 × days, shared among the fleet's agents.

ROI = (value − cost) / cost with value = tasks/month × ``finops.value_per_task``;
break-even is the tasks/day at which value covers cost (none when a task costs more
than it is worth). Every input used is returned beside the figures.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from config.policy import Policy
from fleet.finops.attribution import QUANTUM, UNKNOWN, Cost, TaskNode, Unknown, as_json, segment_of
from fleet.storage.records import Agent

_INACTIVE = frozenset({"retired", "failed"})


def _known(amount: Mapping[str, object]) -> Cost:
    value = amount.get("amount")
    return UNKNOWN if amount.get("unknown") or value is None else Decimal(str(value))


def _q(value: Decimal) -> Decimal:
    return value.quantize(QUANTUM)


def compute(
    policy: Policy,
    *,
    segments: Sequence[Mapping[str, Any]],
    agents: Sequence[Agent],
    week_nodes: Sequence[TaskNode],
    prefixes: Mapping[str, str],
    overhead_per_hour: Decimal | None,
    convert: Callable[[Decimal], Decimal],
    days_observed: Decimal = Decimal(7),
) -> dict[str, Any]:
    """The economics of each segment from the review's segment rows (a week's actuals,
    over ``days_observed`` days of it)."""
    if days_observed <= 0:
        raise ValueError("days_observed: must be above 0")
    f = policy.finops
    days = Decimal(f.days_per_month)
    calls_per_task = Decimal(str(f.calls_per_task))
    active = [a for a in agents if str(a.status) not in _INACTIVE]
    by_segment: dict[str, list[Agent]] = {}
    for a in active:
        by_segment.setdefault(a.id_prefix, []).append(a)
    seen_agents: dict[str, set[str]] = {}
    for n in week_nodes:
        if n.agent_id:
            seen_agents.setdefault(segment_of(n.agent_id, prefixes), set()).add(n.agent_id)
    fleet_agents = len(active) or len({n.agent_id for n in week_nodes if n.agent_id})
    monitoring_month: Cost = (
        _q(overhead_per_hour * 24 * days) if overhead_per_hour is not None else UNKNOWN
    )
    rows = []
    for seg in segments:
        name = str(seg["segment"])
        if name.startswith("pool:"):
            continue  # a pool has no agents of its own: its spend is in the callers' segments
        members = by_segment.get(name, [])
        n_agents = len(members) or len(seen_agents.get(name, ()))
        weekly_cost = _known(seg["actual"])
        tasks_week = int(seg["tasks"])
        tasks_per_day = Decimal(tasks_week) / days_observed
        provisioning = sum(
            (convert(policy.provisioning.tier_prices.get(a.tier, Decimal(0))) for a in members),
            Decimal(0),
        )
        monitoring: Cost = (
            UNKNOWN
            if isinstance(monitoring_month, Unknown)
            else (_q(monitoring_month * n_agents / fleet_agents) if fleet_agents else Decimal(0))
        )
        cost_per_call: Cost
        variable: Cost
        if isinstance(weekly_cost, Unknown):
            cost_per_call = variable = UNKNOWN
        else:
            calls = Decimal(tasks_week) * calls_per_task
            cost_per_call = _q(weekly_cost / calls) if calls else Decimal(0)
            variable = _q(tasks_per_day * calls_per_task * cost_per_call * days)
        monthly: Cost = (
            UNKNOWN
            if isinstance(variable, Unknown) or isinstance(monitoring, Unknown)
            else _q(variable + provisioning + monitoring)
        )
        value_per_task = convert(f.value_for(name))
        value = _q(tasks_per_day * days * value_per_task)
        roi: str | None = None
        if not isinstance(monthly, Unknown) and monthly > 0:
            roi = format(((value - monthly) / monthly).quantize(Decimal("0.0001")), "f")
        break_even: str | None = None
        if not isinstance(cost_per_call, Unknown) and not isinstance(monitoring, Unknown):
            margin = value_per_task - cost_per_call * calls_per_task
            if margin > 0:
                fixed = provisioning + monitoring
                break_even = format((fixed / (days * margin)).quantize(Decimal("0.01")), "f")
        rows.append(
            {
                "segment": name,
                "inputs": {
                    "agents": n_agents,
                    "tasks_per_day": format(_q(tasks_per_day), "f"),
                    "days_observed": format(days_observed.quantize(Decimal("0.01")), "f"),
                    "calls_per_task": format(calls_per_task, "f"),
                    "cost_per_call": as_json(cost_per_call),
                    "days_per_month": int(days),
                    "provisioning_per_month": as_json(_q(provisioning)),
                    "monitoring_overhead_per_month": as_json(monitoring),
                    "value_per_task": as_json(value_per_task),
                },
                "usage_per_month": as_json(variable),
                "monthly_cost": as_json(monthly),
                "monthly_value": as_json(value),
                "roi": roi,
                "break_even_tasks_per_day": break_even,
            }
        )
    return {
        "formula": (
            "monthly = tasks/day x calls/task x cost/call x days + provisioning"
            " + monitoring overhead"
        ),
        "monitoring_overhead_per_hour": as_json(
            overhead_per_hour if overhead_per_hour is not None else UNKNOWN
        ),
        "segments": rows,
    }
