"""Who pays for a multi-agent task: caller-pays, proportional or task pool, per segment.

A task tree is a root task and the sub-agent tasks below it (``parent_task_id``). Its cost
rolls up to the root; a cost not known yet (a task that ran but whose spend is not settled)
makes every level above it unknown: :data:`UNKNOWN`, never $0.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal
from typing import Final

from config.policy import AttributionMode

Mode = AttributionMode
MODES: Final = ("caller-pays", "proportional", "task-pool")


@dataclass(frozen=True, slots=True)
class Unknown:
    """A cost not known yet: shown as "unknown" (JSON null + ``"unknown": true``)."""

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Final = Unknown()
Cost = Decimal | Unknown

# Shares are exact to a millionth; what rounding leaves goes to the largest share.
QUANTUM: Final = Decimal("0.000001")

_AGENT_ID = re.compile(r"^(?P<prefix>.+)-\d{4,}-[0-9a-f]{8}$")


def segment_of(agent_id: str, prefixes: Mapping[str, str] | None = None) -> str:
    """An agent's segment: its manifest group's id prefix (from the agents table when
    known, else read off the id ``{prefix}-{index:04d}-{8 hex}``); else the id itself."""
    if prefixes and agent_id in prefixes:
        return prefixes[agent_id]
    m = _AGENT_ID.match(agent_id)
    return m.group("prefix") if m else agent_id


def add(a: Cost, b: Cost) -> Cost:
    if isinstance(a, Unknown) or isinstance(b, Unknown):
        return UNKNOWN
    return a + b


def total(costs: Iterable[Cost]) -> Cost:
    out: Cost = Decimal(0)
    for c in costs:
        out = add(out, c)
    return out


@dataclass(frozen=True, slots=True)
class TaskNode:
    task_id: str
    agent_id: str | None
    cost: Cost
    parent_task_id: str | None = None
    root_task_id: str | None = None
    trace_id: str | None = None
    payer_kind: str = "agent"
    payer_id: str = ""
    model: str = ""


@dataclass(frozen=True)
class Tree:
    root: TaskNode
    nodes: tuple[TaskNode, ...]  # the root first
    rolled: Mapping[str, Cost]  # each node's own cost plus everything below it

    @property
    def cost(self) -> Cost:
        return self.rolled[self.root.task_id]

    @property
    def agents(self) -> list[str]:
        return sorted({n.agent_id for n in self.nodes if n.agent_id})


def build_trees(nodes: Iterable[TaskNode]) -> list[Tree]:
    """Group tasks into trees by their root; each tree's costs rolled up from its leaves."""
    by_id = {n.task_id: n for n in nodes}
    children: dict[str, list[str]] = defaultdict(list)
    tops: list[str] = []
    for n in by_id.values():
        if n.parent_task_id and n.parent_task_id in by_id:
            children[n.parent_task_id].append(n.task_id)
        else:
            tops.append(n.task_id)  # a root, or a sub-task whose parent is not in view
    trees = []
    visited: set[str] = set()
    pending = sorted(tops)
    while True:
        for top in pending:
            rolled: dict[str, Cost] = {}
            order: list[TaskNode] = []
            _walk(top, frozenset({top}), by_id, children, rolled, order)
            visited.update(rolled)
            trees.append(Tree(by_id[top], tuple(order), rolled))
        # Tasks in a parent cycle (bad data) have no top: the first one is made one.
        left = sorted(set(by_id) - visited)
        if not left:
            break
        pending = left[:1]
    return trees


def _walk(
    task_id: str,
    seen: frozenset[str],
    by_id: Mapping[str, TaskNode],
    children: Mapping[str, list[str]],
    rolled: dict[str, Cost],
    order: list[TaskNode],
) -> Cost:
    node = by_id[task_id]
    order.append(node)
    cost: Cost = node.cost
    for child in sorted(children.get(task_id, ())):
        if child not in seen:  # a cycle in bad data is cut, not followed forever
            cost = add(cost, _walk(child, seen | {child}, by_id, children, rolled, order))
    rolled[task_id] = cost
    return cost


def spans_per_agent(tree: Tree) -> Counter[str]:
    """Each task in the trace is a span of its agent."""
    return Counter(n.agent_id for n in tree.nodes if n.agent_id)


def _split(amount: Decimal, weights: Mapping[str, int]) -> dict[str, Decimal]:
    whole = sum(weights.values())
    shares = {
        k: (amount * w / whole).quantize(QUANTUM, rounding=ROUND_DOWN) for k, w in weights.items()
    }
    left = amount - sum(shares.values(), Decimal(0))
    if left:
        biggest = max(sorted(weights), key=lambda k: weights[k])
        shares[biggest] += left
    return shares


def payer_key(kind: str, ident: str) -> str:
    return f"{kind}:{ident}"


def attribute(tree: Tree, mode: Mode) -> dict[str, Cost]:
    """The tree's cost by payer (``agent:ID`` or ``pool:NAME``); an unknown total is
    unknown for every payer it would have gone to."""
    cost = tree.cost
    root = tree.root
    if mode == "caller-pays":
        return {payer_key("agent", root.agent_id or root.payer_id): cost}
    if mode == "task-pool":
        if root.payer_kind == "pool":
            return {payer_key("pool", root.payer_id): cost}
        # No pool named: the caller pays.
        return {payer_key("agent", root.agent_id or root.payer_id): cost}
    spans = spans_per_agent(tree)
    if not spans:
        return {payer_key("agent", root.payer_id): cost}
    weights = {payer_key("agent", a): n for a, n in spans.items()}
    if isinstance(cost, Unknown):
        return dict.fromkeys(weights, UNKNOWN)
    return dict(_split(cost, weights))


def attribute_all(
    trees: Sequence[Tree], mode_for: Mapping[str, Mode], default: Mode, segment: Mapping[str, str]
) -> dict[str, Cost]:
    """Every tree attributed by the mode of its caller's segment; summed per payer."""
    out: dict[str, Cost] = {}
    for tree in trees:
        caller = tree.root.agent_id or tree.root.payer_id
        mode = mode_for.get(segment.get(caller, segment_of(caller)), default)
        for payer, cost in attribute(tree, mode).items():
            out[payer] = add(out.get(payer, Decimal(0)), cost)
    return out


def as_json(cost: Cost) -> dict[str, object]:
    """``{"amount": "1.23", "unknown": false}`` or ``{"amount": null, "unknown": true}``."""
    if isinstance(cost, Unknown):
        return {"amount": None, "unknown": True}
    return {"amount": format(cost, "f"), "unknown": False}
