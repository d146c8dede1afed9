"""Cost attribution of task trees: the three modes, roll-up to the root, unknown kept."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from fleet.finops.attribution import (
    UNKNOWN,
    Cost,
    TaskNode,
    as_json,
    attribute,
    attribute_all,
    build_trees,
    segment_of,
)
from fleet.finops.render import money
from fleet.work.submission import SubmissionError, parse_submission

D = Decimal
A = "research-0001-0a1b2c3d"
B = "writer-0001-1a2b3c4d"
C = "writer-0002-2a3b4c5d"


LEAF = D("0.30")


def tree_nodes(leaf_cost: Cost = LEAF) -> list[TaskNode]:
    # root (A, 1.00) -> child (B, 0.50) -> grandchild (C, leaf_cost); root -> child2 (B, 0.20)
    return [
        TaskNode("r", A, D("1.00"), trace_id="t1", payer_kind="pool", payer_id="research-pool"),
        TaskNode("c1", B, D("0.50"), parent_task_id="r", root_task_id="r", trace_id="t1"),
        TaskNode("c2", B, D("0.20"), parent_task_id="r", root_task_id="r", trace_id="t1"),
        TaskNode("g1", C, leaf_cost, parent_task_id="c1", root_task_id="r", trace_id="t1"),
    ]


def test_a_tree_rolls_up_to_its_root() -> None:
    (tree,) = build_trees(tree_nodes())
    assert tree.root.task_id == "r"
    assert tree.rolled == {"g1": D("0.30"), "c1": D("0.80"), "c2": D("0.20"), "r": D("2.00")}


def test_one_unknown_cost_is_unknown_at_every_level_above_it() -> None:
    (tree,) = build_trees(tree_nodes(UNKNOWN))
    assert tree.rolled["g1"] is UNKNOWN
    assert tree.rolled["c1"] is UNKNOWN
    assert tree.rolled["r"] is UNKNOWN
    assert tree.rolled["c2"] == D("0.20")  # a sibling branch is still known
    assert as_json(tree.cost) == {"amount": None, "unknown": True}
    assert "unknown" in money(as_json(tree.cost)) and "0.00" not in money(as_json(tree.cost))
    for mode in ("caller-pays", "proportional", "task-pool"):
        assert all(c is UNKNOWN for c in attribute(tree, mode).values()), mode  # type: ignore[arg-type]


def test_caller_pays_puts_the_whole_tree_on_the_root_agent() -> None:
    (tree,) = build_trees(tree_nodes())
    assert attribute(tree, "caller-pays") == {f"agent:{A}": D("2.00")}


def test_proportional_shares_by_spans_per_agent_in_the_trace() -> None:
    (tree,) = build_trees(tree_nodes())
    shares = attribute(tree, "proportional")
    # 4 spans: A 1, B 2, C 1 -> 0.50, 1.00, 0.50 of 2.00
    assert shares == {f"agent:{A}": D("0.5"), f"agent:{B}": D("1.0"), f"agent:{C}": D("0.5")}


def test_proportional_shares_sum_to_the_total_when_they_do_not_divide() -> None:
    nodes = [
        TaskNode("r", A, D("1.00")),
        TaskNode("x", B, D("0"), parent_task_id="r"),
        TaskNode("y", C, D("0"), parent_task_id="r"),
    ]
    (tree,) = build_trees(nodes)
    shares = attribute(tree, "proportional")
    assert sum(shares.values(), D(0)) == D("1.00")
    assert sorted(shares.values()) == [D("0.333333"), D("0.333333"), D("0.333334")]


def test_task_pool_charges_the_roots_pool_else_the_caller() -> None:
    (tree,) = build_trees(tree_nodes())
    assert attribute(tree, "task-pool") == {"pool:research-pool": D("2.00")}
    (own,) = build_trees([TaskNode("solo", B, D("0.10"), payer_kind="agent", payer_id=B)])
    assert attribute(own, "task-pool") == {f"agent:{B}": D("0.10")}


def test_mode_follows_the_callers_segment() -> None:
    trees = build_trees([*tree_nodes(), TaskNode("w", B, D("0.40"))])
    out = attribute_all(trees, {"research": "proportional"}, "caller-pays", {})
    # research tree shared by spans; the writer's own task is caller-pays
    assert out == {f"agent:{A}": D("0.5"), f"agent:{B}": D("1.40"), f"agent:{C}": D("0.5")}


def test_segment_is_the_id_prefix() -> None:
    assert segment_of(A) == "research"
    assert segment_of("support-tier1-0042-deadbeef") == "support-tier1"
    assert segment_of("outsider") == "outsider"
    assert segment_of("x", {"x": "known"}) == "known"


def test_a_cycle_in_bad_data_does_not_hang() -> None:
    nodes = [TaskNode("a", A, D(1), parent_task_id="b"), TaskNode("b", B, D(1), parent_task_id="a")]
    trees = build_trees(nodes)
    # The cycle is cut at its first task: both costs counted, once.
    assert [t.root.task_id for t in trees] == ["a"]
    assert trees[0].cost == D(2)


def test_submission_parent_task_id_is_validated() -> None:
    base = {
        "type": "t",
        "estimated_tokens": 10,
        "payer": {"kind": "agent", "id": "a"},
        "idempotency_key": "k",
    }
    ok = parse_submission({**base, "parent_task_id": "ab" * 16})
    assert ok.parent_task_id == "ab" * 16
    with pytest.raises(SubmissionError) as exc:
        parse_submission({**base, "parent_task_id": "not-a-task"})
    assert "parent_task_id" in str(exc.value)


def test_a_sub_task_needs_its_parent_in_the_same_trace() -> None:
    from types import SimpleNamespace
    from typing import cast

    from fleet.work.service import WorkDeps, _check_parent, _Task

    parent, child_of_child = "ab" * 16, "cd" * 16
    known = {
        parent: {"task_id": parent, "trace_id": "1" * 32, "root_task_id": None},
        child_of_child: {"task_id": child_of_child, "trace_id": "1" * 32, "root_task_id": parent},
    }
    deps = cast(WorkDeps, SimpleNamespace(task_lookup=lambda t: known.get(t, {})))
    base: dict[str, Any] = {
        "type": "t",
        "estimated_tokens": 10,
        "payer": {"kind": "agent", "id": "a"},
        "idempotency_key": "k",
    }

    def run(parent_id: str, trace: str) -> _Task:
        t = _Task(parse_submission({**base, "parent_task_id": parent_id}), "ef" * 16, trace)
        _check_parent(deps, t)
        return t

    ok = run(parent, "1" * 32)
    assert ok.state == "" and ok.root_task_id == parent
    deeper = run(child_of_child, "1" * 32)
    assert deeper.root_task_id == parent  # the root is inherited, not the parent
    missing = run("00" * 16, "1" * 32)
    assert missing.state == "refused" and "parent_task_id: no task" in str(missing.reason)
    other = run(parent, "2" * 32)
    assert other.state == "refused" and "is in trace" in str(other.reason)


def test_policy_refuses_an_unknown_attribution_mode_by_name(tmp_path: Any) -> None:
    from pathlib import Path

    from config.errors import ConfigError
    from config.policy import load_policy

    defaults = Path(__file__).resolve().parents[2] / "config" / "defaults" / "policy.yaml"
    bad = tmp_path / "policy.yaml"
    bad.write_text(f"extends: {defaults}\nfinops:\n  attribution: {{research: split}}\n")
    with pytest.raises(ConfigError, match=r"finops\.attribution\.research"):
        load_policy(bad)
    assert load_policy(defaults).finops.flag_over == 1.10
