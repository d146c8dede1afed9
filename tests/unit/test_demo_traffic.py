"""The demo's callers: valid submissions for each manifest group, sub-tasks only under a
parent that has run and in its trace, nothing before an agent is active."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fakeredis

from config.policy import load_policy
from fleet.provisioning.manifest import parse_manifest_text
from fleet.work import store
from fleet.work.submission import parse_submission
from stack.demo_traffic import ROOT_TOKENS, DemoTraffic, callers_of
from workers.queues import TaskName

ROOT = Path(__file__).resolve().parents[2]


def demo_manifest() -> Any:
    policy = load_policy(ROOT / "config" / "defaults" / "policy.yaml")
    text = (ROOT / "config" / "manifests" / "demo.yaml").read_text(encoding="utf-8")
    return parse_manifest_text(text, policy)


class Sent:
    def __init__(self) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, messages: Any) -> None:
        self.messages.extend(messages)

    def tasks(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for name, kwargs in self.messages:
            assert name == TaskName.SUBMIT_TASKS.value
            out.extend(kwargs["tasks"])
        return out


def test_each_group_gets_tasks_for_its_capability_once_an_agent_is_active() -> None:
    manifest = demo_manifest()
    callers = callers_of(manifest)
    assert [(c.segment, c.capability, c.sub_capability) for c in callers] == [
        ("support", "customer-support", "ticket-triage"),
        ("research", "web-research", "summarisation"),
    ]
    sent, active = Sent(), [False]
    traffic = DemoTraffic(sent, fakeredis.FakeRedis(decode_responses=True), "demo", callers,
                          ready=lambda: active[0])  # fmt: skip
    assert traffic.step() == 0 and sent.messages == []
    active[0] = True
    for _ in range(len(ROOT_TOKENS)):
        assert traffic.step() == 2
    tasks = sent.tasks()
    for t in tasks:
        sub = parse_submission(t)  # what the routing queue accepts
        assert sub.fleet == "demo" and sub.payer.kind == "segment"
        assert sub.payer.id == (
            "support" if sub.capabilities == ["customer-support"] else "research"
        )
    assert len({t["idempotency_key"] for t in tasks}) == len(tasks)
    # Tokens rotate, so the routing policy's small model and the larger ones are all used.
    assert {t["estimated_tokens"] for t in tasks} == set(ROOT_TOKENS)


def test_a_sub_task_follows_its_parent_once_it_has_run_in_the_same_trace() -> None:
    hot = fakeredis.FakeRedis(decode_responses=True)
    sent = Sent()
    traffic = DemoTraffic(sent, hot, "demo", callers_of(demo_manifest()), ready=lambda: True)
    while not any("trace" in t for t in sent.tasks()):
        traffic.step()
    parents = [t for t in sent.tasks() if "trace" in t]
    assert all(t["estimated_tokens"] >= 800 for t in parents)
    # Claimed but not run: no sub-task yet.
    parent_id = "ab" * 16
    hot.set(store.idem_key(parents[0]["idempotency_key"]), parent_id)
    hot.hset(store.task_key(parent_id), "phase", "dispatched")
    before = len(sent.tasks())
    traffic.step()
    assert not any(t.get("parent_task_id") for t in sent.tasks()[before:])
    hot.hset(store.task_key(parent_id), "phase", "done")
    before = len(sent.tasks())
    traffic.step()
    subs = [t for t in sent.tasks()[before:] if t.get("parent_task_id")]
    assert len(subs) == 1
    child = parse_submission(subs[0])
    spawned = {"support": "ticket-triage", "research": "summarisation"}
    assert child.parent_task_id == parent_id
    assert child.capabilities == [spawned[parents[0]["payer"]["id"]]]
    assert child.trace is not None
    assert child.trace.traceparent[3:35] == parents[0]["trace"]["traceparent"][3:35]
    # Once only.
    before = len(sent.tasks())
    traffic.step()
    assert not any(t.get("parent_task_id") == parent_id for t in sent.tasks()[before:])


def test_a_capability_no_task_can_ask_for_is_passed_over() -> None:
    manifest = demo_manifest()
    support, research = manifest.agents
    odd = support.model_copy(update={"capabilities": ["ticket triage", "triage"]})
    none_usable = research.model_copy(update={"capabilities": ["web research"]})
    callers = callers_of(manifest.model_copy(update={"agents": [odd, none_usable]}))
    assert [(c.segment, c.capability, c.sub_capability) for c in callers] == [
        ("support", "triage", None)
    ]
