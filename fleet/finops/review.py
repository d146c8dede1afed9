"""The weekly FinOps review of one fleet, built from the spend ledger and the work tasks.

:func:`build_review` returns a JSON-ready mapping; every amount is
``{"amount": "1.234", "unknown": false}`` in the operator's currency (``finops.currency``),
converted at the gateway's exchange rate, or ``{"amount": null, "unknown": true}`` when a
cost is not known yet. :func:`fleet.finops.render.review_html` makes the page of it.

Sections: budget vs actual per segment (flagged over ``finops.flag_over``), cost per
task and its trend over ``finops.trend_weeks`` weeks, the model mix against the routing
policy, the most expensive task trees with their traces, volume discount capture, and
the fleet economics (:mod:`fleet.finops.economics`).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from config.policy import Policy
from fleet.budgets.models import SpendEntry
from fleet.finops import economics
from fleet.finops.attribution import (
    QUANTUM,
    UNKNOWN,
    Cost,
    Mode,
    TaskNode,
    Tree,
    Unknown,
    add,
    as_json,
    attribute,
    build_trees,
    segment_of,
    total,
)
from fleet.finops.rates import FinanceSource
from fleet.storage.records import Agent
from fleet.work.records import WorkTask, reservation_id, task_of

_WEEK = re.compile(r"^(?P<year>\d{4})-W(?P<week>\d{2})$")
# Tasks that never reached an agent spent nothing: their cost is known, and it is 0.
NO_SPEND_STATES = frozenset({"refused", "unroutable"})


class ReviewError(ValueError):
    """A bad input to the review (a week that is not ISO, an unknown fleet…)."""


class NoSuchWeek(ReviewError):
    """A week written the ISO way that no calendar has (2026-W54, 0000-W01)."""


def parse_week(text: str) -> tuple[datetime, datetime]:
    """``2026-W48`` → (its Monday 00:00 UTC, the next Monday 00:00 UTC)."""
    m = _WEEK.match(text or "")
    if not m:
        raise ReviewError(f"week: expected an ISO week like 2026-W48, not {text!r}")
    try:
        monday = date.fromisocalendar(int(m["year"]), int(m["week"]), 1)
    except ValueError:
        raise NoSuchWeek(f"week: {text} does not exist") from None
    start = datetime(monday.year, monday.month, monday.day, tzinfo=UTC)
    return start, start + timedelta(days=7)


def week_of(when: datetime) -> str:
    year, week, _ = when.isocalendar()
    return f"{year}-W{week:02d}"


def previous_week(now: datetime) -> str:
    return week_of(now - timedelta(days=7))


def days_observed(start: datetime, end: datetime, now: datetime) -> Decimal:
    """The days of [start, end) that have passed by ``now``: 7 for a past week; for the
    week under way the time so far (at least an hour, so a rate of its first minutes is
    not a division by almost nothing); 7 for a week not begun (it holds nothing)."""
    if now >= end or now < start:
        return Decimal(7)
    elapsed = max((now - start).total_seconds(), 3600.0)
    return Decimal(str(elapsed)) / Decimal(86400)


def _shift(week: str, weeks: int) -> str:
    start, _ = parse_week(week)
    return week_of(start + timedelta(days=7 * weeks))


@dataclass(frozen=True)
class WeekData:
    """One fleet's week: its task nodes (costs converted) and the agents they ran on."""

    nodes: list[TaskNode]
    tokens: dict[str, int]  # task id -> estimated tokens (work tasks only)
    calls: Counter[str]  # agent -> settled spends (gateway calls / calls_per_task)
    spend_by_agent: dict[str, Decimal]


class _Converter:
    def __init__(self, finance: FinanceSource, to: str) -> None:
        self.finance = finance
        self.to = to
        self.used: dict[str, str] = {}

    def __call__(self, amount: Decimal, currency: str) -> Decimal:
        rate = self.finance.rate(currency, self.to)
        self.used[f"{currency}->{self.to}"] = format(rate, "f")
        return (amount * rate).quantize(QUANTUM)


def _load_week(
    sessions: sessionmaker[Session],
    fleet: str,
    start: datetime,
    end: datetime,
    convert: _Converter,
    work_currency: str,
) -> WeekData:
    with sessions() as s:
        # A work task's spend is booked per attempt, under its reservation id.
        ledger: dict[str, list[SpendEntry]] = defaultdict(list)
        for e in s.scalars(
            select(SpendEntry).where(
                SpendEntry.fleet == fleet,
                SpendEntry.settled_at >= start,
                SpendEntry.settled_at < end,
            )
        ):
            ledger[task_of(e.task_id)].append(e)
        tasks = list(
            s.scalars(
                select(WorkTask).where(
                    WorkTask.fleet == fleet,
                    WorkTask.finished_at >= start,
                    WorkTask.finished_at < end,
                )
            )
        )
        # A task finished this week whose spend settled in another is still costed.
        missing = [
            rid
            for t in tasks
            if t.task_id not in ledger
            for rid in (
                t.task_id,
                *(reservation_id(t.task_id, n) for n in range(1, len(t.attempts or []) + 1)),
            )
        ]
        for chunk in range(0, len(missing), 500):
            for e in s.scalars(
                select(SpendEntry).where(SpendEntry.task_id.in_(missing[chunk : chunk + 500]))
            ):
                ledger[task_of(e.task_id)].append(e)
    nodes: list[TaskNode] = []
    tokens: dict[str, int] = {}
    calls: Counter[str] = Counter()
    spend: dict[str, Decimal] = defaultdict(Decimal)
    seen: set[str] = set()

    def booked(entries: Sequence[SpendEntry]) -> Decimal:
        return sum((convert(Decimal(e.actual), e.currency) for e in entries), Decimal(0))

    for t in tasks:
        seen.add(t.task_id)
        tokens[t.task_id] = t.estimated_tokens
        entries = ledger.get(t.task_id)
        cost: Cost
        if entries:
            cost = booked(entries)
        elif t.actual is not None:
            cost = convert(Decimal(t.actual), work_currency)
        elif t.state in NO_SPEND_STATES or t.agent_id is None:
            cost = Decimal(0)
        else:
            cost = UNKNOWN  # it ran; what it cost is not settled yet
        nodes.append(
            TaskNode(
                t.task_id,
                t.agent_id,
                cost,
                parent_task_id=t.parent_task_id,
                root_task_id=t.root_task_id,
                trace_id=t.trace_id,
                payer_kind=t.payer_kind,
                payer_id=t.payer_id,
                model=t.model,
            )
        )
    for task_id, entries in ledger.items():
        if task_id in seen:
            continue
        week = [e for e in entries if start <= _aware(e.settled_at) < end]
        if week:
            e = week[-1]
            nodes.append(
                TaskNode(
                    task_id,
                    e.agent_id,
                    booked(week),
                    trace_id=e.trace_id,
                    payer_kind="pool" if e.pool else "agent",
                    payer_id=e.pool or e.agent_id,
                    model=e.model,
                )
            )
    for n in nodes:
        if n.agent_id and n.task_id in ledger:
            calls[n.agent_id] += 1
            if not isinstance(n.cost, Unknown):
                spend[n.agent_id] += n.cost
    return WeekData(nodes, tokens, calls, dict(spend))


def _aware(when: datetime) -> datetime:
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _agents(sessions: sessionmaker[Session], fleet: str) -> list[Agent]:
    with sessions() as s:
        return list(s.scalars(select(Agent).where(Agent.fleet == fleet)))


def _money(cost: Cost) -> dict[str, object]:
    return as_json(cost)


def _ratio(a: Cost, b: Decimal) -> Decimal | None:
    if isinstance(a, Unknown) or b == 0:
        return None
    return (a / b).quantize(Decimal("0.0001"))


def _per_task(cost: Cost, n: int) -> Cost:
    if isinstance(cost, Unknown):
        return UNKNOWN
    return (cost / n).quantize(QUANTUM) if n else UNKNOWN  # no task: no cost per task


def _payer_segment(payer: str, prefixes: Mapping[str, str]) -> str:
    kind, _, ident = payer.partition(":")
    return f"pool:{ident}" if kind == "pool" else segment_of(ident, prefixes)


def _segments(
    policy: Policy,
    trees: Sequence[Tree],
    nodes: Sequence[TaskNode],
    prefixes: Mapping[str, str],
    convert: _Converter,
) -> list[dict[str, Any]]:
    f = policy.finops
    actual: dict[str, Cost] = {}
    modes: dict[str, str] = {}
    for tree in trees:
        if not tree.agents:
            continue  # nothing ran (refused, unroutable): nothing to attribute
        caller = tree.root.agent_id or tree.root.payer_id
        mode: Mode = f.attribution_for(segment_of(caller, prefixes))
        for payer, cost in attribute(tree, mode).items():
            seg = _payer_segment(payer, prefixes)
            actual[seg] = add(actual.get(seg, Decimal(0)), cost)
    tasks: Counter[str] = Counter()
    for n in nodes:
        if n.agent_id:
            tasks[segment_of(n.agent_id, prefixes)] += 1
    names = sorted(set(actual) | set(tasks))
    agent_segments = [n for n in names if not n.startswith("pool:")]
    shared = (
        convert(policy.budgets.fleet_day * 7, policy.budgets.currency) / len(agent_segments)
        if agent_segments
        else Decimal(0)
    ).quantize(QUANTUM)
    rows = []
    for name in names:
        modes[name] = "" if name.startswith("pool:") else f.attribution_for(name)
        if name.startswith("pool:"):
            pool_total = policy.budgets.pools.get(name[5:])
            budget = (
                convert(Decimal(pool_total), policy.budgets.currency)
                if pool_total is not None
                else Decimal(0)
            )
            source = "budgets.pools" if pool_total is not None else "none"
        elif name in f.weekly_budget:
            budget = convert(f.weekly_budget[name], policy.budgets.currency)
            source = "finops.weekly_budget"
        else:
            budget, source = shared, "budgets.fleet_day x 7, shared"
        spent = actual.get(name, Decimal(0))
        ratio = _ratio(spent, budget)
        rows.append(
            {
                "segment": name,
                "attribution": modes[name] or "task-pool",
                "budget": _money(budget),
                "budget_source": source,
                "actual": _money(spent),
                "ratio": None if ratio is None else format(ratio, "f"),
                "flagged": ratio is not None and ratio > Decimal(str(f.flag_over)),
                "tasks": tasks.get(name, 0),
            }
        )
    return rows


def _cost_per_task(all_nodes: Sequence[TaskNode]) -> dict[str, Any]:
    """Over the tasks that reached an agent (a refused task is not a task done)."""
    nodes = [n for n in all_nodes if n.agent_id]
    known = [n.cost for n in nodes if not isinstance(n.cost, Unknown)]
    unknown = len(nodes) - len(known)
    cost = total(known)
    return {
        "tasks": len(nodes),
        "known_cost_tasks": len(known),
        "unknown_cost_tasks": unknown,
        "cost": _money(cost),
        "cost_per_task": _money(_per_task(cost, len(known))),
    }


def _model_mix(policy: Policy, week: WeekData) -> dict[str, Any]:
    m = policy.work.models
    counts: Counter[str] = Counter()
    costs: dict[str, Cost] = {}
    off: list[str] = []
    for n in week.nodes:
        counts[n.model] += 1
        costs[n.model] = add(costs.get(n.model, Decimal(0)), n.cost)
        tokens = week.tokens.get(n.task_id)
        if tokens is None:
            continue
        expected = {m.small} if tokens < m.small_below_tokens else {m.frontier, m.mid}
        if n.model not in expected:
            off.append(n.task_id)
    all_tasks = sum(counts.values())
    return {
        "policy": {
            "small_below_tokens": m.small_below_tokens,
            "small": m.small,
            "otherwise": [m.frontier, m.mid],
            "frontier_min_budget_left": format(m.frontier_min_budget_left, "f"),
        },
        "models": [
            {
                "model": model,
                "tasks": counts[model],
                "share": format(
                    (Decimal(counts[model]) / all_tasks).quantize(Decimal("0.0001")), "f"
                ),
                "cost": _money(costs[model]),
            }
            for model in sorted(counts)
        ],
        "off_policy_tasks": len(off),
        "off_policy_examples": sorted(off)[:10],
    }


def _tree_json(tree: Tree) -> dict[str, Any]:
    return {
        "task_id": tree.root.task_id,
        "trace_id": tree.root.trace_id,
        "cost": _money(tree.cost),
        "agents": tree.agents,
        "tasks": [
            {
                "task_id": n.task_id,
                "parent_task_id": n.parent_task_id,
                "agent_id": n.agent_id,
                "model": n.model,
                "cost": _money(n.cost),
                "rolled_up": _money(tree.rolled[n.task_id]),
            }
            for n in tree.nodes
        ],
    }


def _top(trees: Sequence[Tree], n: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    trees = [t for t in trees if t.agents]  # a task that never ran costs nothing to list
    known = [t for t in trees if not isinstance(t.cost, Unknown)]
    known.sort(key=lambda t: (-t.cost, t.root.task_id))  # type: ignore[operator]
    unknown = [t for t in trees if isinstance(t.cost, Unknown)]
    return [_tree_json(t) for t in known[:n]], [_tree_json(t) for t in unknown[:n]]


def _discounts(policy: Policy, week: WeekData, finance: FinanceSource) -> dict[str, Any]:
    f = policy.finops
    tool = f.discount_tool
    per_call = Decimal(str(f.calls_per_task))
    agents = sorted(week.calls)
    volume = {a: int(week.calls[a] * per_call) for a in agents}
    spend = total(week.spend_by_agent.values())
    out: dict[str, Any] = {
        "tool": tool,
        "applied_by_gateway": False,  # informational only: the gateway never applies them
        "captured": _money(Decimal(0)),
        "weekly_calls": sum(volume.values()),
    }
    if not agents:
        return {
            **out,
            "tiers": [],
            "agents": [],
            "available": _money(Decimal(0)),
            "consolidated": _money(Decimal(0)),
            "saving_by_consolidating": _money(Decimal(0)),
        }
    probe = agents[0]
    tiers = [
        {"quantity": q, "discount_pct": format(finance.discount_pct(probe, tool, q), "f")}
        for q in f.discount_probe_quantities
    ]
    available = Decimal(0)
    rows = []
    for a in agents:
        pct = finance.discount_pct(a, tool, volume[a])
        saved = (week.spend_by_agent.get(a, Decimal(0)) * pct / 100).quantize(QUANTUM)
        available += saved
        rows.append(
            {
                "agent_id": a,
                "calls": volume[a],
                "discount_pct": format(pct, "f"),
                "would_save": _money(saved),
            }
        )
    total_pct = finance.discount_pct(probe, tool, max(1, sum(volume.values())))
    consolidated = (
        (spend * total_pct / 100).quantize(QUANTUM) if not isinstance(spend, Unknown) else UNKNOWN
    )
    saving = consolidated - available if not isinstance(consolidated, Unknown) else UNKNOWN
    return {
        **out,
        "tiers": tiers,
        "agents": rows,
        "available": _money(available),
        "consolidated_discount_pct": format(total_pct, "f"),
        "consolidated": _money(consolidated),
        "saving_by_consolidating": _money(saving),
    }


def build_review(
    sessions: sessionmaker[Session],
    policy: Policy,
    finance: FinanceSource,
    *,
    fleet: str,
    week: str,
    overhead_per_hour: Decimal | None,
    generated_at: datetime,
) -> dict[str, Any]:
    """The review of ``fleet`` for ISO ``week``; ``overhead_per_hour`` is the sweeps'
    measured cost at the gateway (None: not measured)."""
    if not fleet or len(fleet) > 128:
        raise ReviewError("fleet: a fleet name is required (at most 128 characters)")
    start, end = parse_week(week)
    f = policy.finops
    convert = _Converter(finance, f.currency)
    agents = _agents(sessions, fleet)
    prefixes = {a.agent_id: a.id_prefix for a in agents}
    data = _load_week(sessions, fleet, start, end, convert, policy.budgets.currency)
    trees = build_trees(data.nodes)
    trend = []
    for back in range(f.trend_weeks - 1, 0, -1):
        w = _shift(week, -back)
        ws, we = parse_week(w)
        past = _load_week(sessions, fleet, ws, we, convert, policy.budgets.currency)
        trend.append({"week": w, **_cost_per_task(past.nodes)})
    trend.append({"week": week, **_cost_per_task(data.nodes)})
    top, unknown_trees = _top(trees, f.top_tasks)
    segments = _segments(policy, trees, data.nodes, prefixes, convert)
    overhead = (
        convert(overhead_per_hour, policy.budgets.currency)
        if overhead_per_hour is not None
        else None
    )
    days = days_observed(start, end, generated_at)
    econ = economics.compute(
        policy,
        segments=segments,
        agents=agents,
        week_nodes=data.nodes,
        prefixes=prefixes,
        overhead_per_hour=overhead,
        convert=lambda amount: convert(amount, policy.budgets.currency),
        days_observed=days,
    )
    return {
        "kind": "finops-review",
        "fleet": fleet,
        "week": week,
        "period": {
            "start": start.isoformat(),
            "end": end.isoformat(),
            "complete": generated_at >= end,
            "days_observed": format(days.quantize(Decimal("0.01")), "f"),
        },
        "generated_at": generated_at.isoformat(),
        "currency": f.currency,
        "exchange_rates": dict(sorted(convert.used.items())),
        "segments": segments,
        "flagged_segments": [s["segment"] for s in segments if s["flagged"]],
        "cost_per_task": {**_cost_per_task(data.nodes), "trend": trend},
        "model_mix": _model_mix(policy, data),
        "top_tasks": top,
        "unknown_cost_trees": unknown_trees,
        "volume_discounts": _discounts(policy, data, finance),
        "economics": econ,
    }


def task_tree(nodes: Iterable[TaskNode], root_task_id: str) -> dict[str, Any] | None:
    """One tree's roll-up, as JSON (None when the root is not among the nodes)."""
    for tree in build_trees(nodes):
        if tree.root.task_id == root_task_id:
            return _tree_json(tree)
    return None
