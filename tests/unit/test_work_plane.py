"""The work plane's pure parts: submissions, model routing, agent picking, A2A outcomes,
the tasks API (fakeredis, httpx.MockTransport)."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import re
import warnings
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import fakeredis
import httpx
import orjson
import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from config.policy import ModelRoutingPolicy, RoutingPolicy
from fleet.routing import Candidate
from fleet.work import store
from fleet.work.a2a import A2ADelivery
from fleet.work.model_choice import choose_model
from fleet.work.selection import Listed, Picker
from fleet.work.submission import SubmissionError, parse_submission
from tests.conftest import RecordingRuntime

GOOD: dict[str, Any] = {
    "type": "summarise",
    "capabilities": ["support"],
    "estimated_tokens": 500,
    "payer": {"kind": "pool", "id": "p1"},
    "idempotency_key": "k-1",
}


def test_a_submission_names_every_problem_by_path() -> None:
    bad = {
        **GOOD,
        "estimated_tokens": -1,
        "payer": {"kind": "someone", "id": "x"},
        "trace": {"traceparent": "nope"},
        "extra": 1,
    }
    del bad["idempotency_key"]
    with pytest.raises(SubmissionError) as caught:
        parse_submission(bad)
    paths = {p.split(":")[0] for p in caught.value.problems}
    assert paths == {
        "estimated_tokens",
        "payer.kind",
        "trace.traceparent",
        "idempotency_key",
        "extra",
    }, caught.value.problems


def test_a_valid_submission_keeps_the_callers_trace_context() -> None:
    parent = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    sub = parse_submission({**GOOD, "trace": {"traceparent": parent, "tracestate": "a=b"}})
    assert sub.trace is not None and sub.trace.carrier() == {
        "traceparent": parent,
        "tracestate": "a=b",
    }


def test_model_routing_small_then_frontier_then_mid_tier_with_the_reason() -> None:
    p = ModelRoutingPolicy(frontier_min_budget_left=Decimal("200.00"))
    small = choose_model(p, 99, Decimal("1000"))
    assert small.model == p.small and "99 estimated tokens < 100" in small.reason
    assert choose_model(p, 100, Decimal("200.01")).model == p.frontier
    mid = choose_model(p, 100, Decimal("200.00"))
    assert mid.model == p.mid and "200.00 <= 200.00" in mid.reason
    assert choose_model(p, 5000, None).model == p.frontier


def _pool(*specs: tuple[str, str, frozenset[str], bool | None]) -> list[tuple[Listed, Candidate]]:
    return [
        (
            Listed(a, "f", Decimal(w), caps, None),
            Candidate(a, Decimal(w), reputation=0.5, sla_compliant=ok),
        )
        for a, w, caps, ok in specs
    ]


def test_the_picker_honours_capabilities_exclusions_breaches_and_weights() -> None:
    caps = frozenset({"support"})
    pool = _pool(
        ("a", "1", caps, True),
        ("b", "0.5", caps, True),
        ("c", "1", frozenset({"billing"}), True),
        ("d", "1", caps, False),  # in breach
    )
    picker = Picker(
        pool, RoutingPolicy(idleness_weight=0), exclude_breached=True, rng=random.Random(1)
    )
    got: dict[str, int] = {}
    for _ in range(3000):
        chosen = picker.pick(["support"])
        assert chosen is not None
        got[chosen.agent_id] = got.get(chosen.agent_id, 0) + 1
    assert set(got) == {"a", "b"}  # c lacks the capability, d is in breach
    assert 0.4 < got["b"] / got["a"] < 0.6
    assert picker.pick(["support"], exclude={"a", "b"}) is None
    assert picker.pick(["billing", "support"]) is None


def _card(base: str) -> dict[str, Any]:
    return {
        "name": "x",
        "description": "x",
        "url": f"{base}/rpc",
        "version": "1",
        "protocolVersion": "0.3.0",
        "preferredTransport": "JSONRPC",
        "capabilities": {"streaming": False},
        "defaultInputModes": ["text/plain"],
        "defaultOutputModes": ["text/plain"],
        "skills": [],
    }


def _task(state: str, **meta: Any) -> dict[str, Any]:
    return {
        "kind": "task",
        "id": "t1",
        "contextId": "c1",
        "status": {"state": state},
        "metadata": meta,
    }


def _deliver(answers: list[dict[str, Any]], seen: list[dict[str, Any]]) -> Any:
    base = "http://agent.test"

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("agent-card.json"):
            return httpx.Response(200, json=_card(base))
        body = orjson.loads(request.content)
        seen.append({"method": body["method"], "headers": dict(request.headers)})
        return httpx.Response(
            200, json={"jsonrpc": "2.0", "id": body["id"], "result": answers.pop(0)}
        )

    async def run() -> Any:
        d = A2ADelivery(transport=httpx.MockTransport(handle), poll_interval_s=0.001)
        try:
            return await d.deliver(
                base,
                text="hi",
                metadata={"estimated_tokens": 10},
                headers={"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"},
                timeout_s=5,
            )
        finally:
            await d.aclose()

    return asyncio.run(run())


def test_a2a_follows_a_task_to_completion_with_message_send_then_tasks_get() -> None:
    seen: list[dict[str, Any]] = []
    done = _task(
        "completed", spent=True, cost="0.02", usage={"input_tokens": 5, "output_tokens": 7}
    )
    out = _deliver([_task("submitted"), _task("working"), done], seen)
    assert [s["method"] for s in seen] == ["message/send", "tasks/get", "tasks/get"]
    assert seen[0]["headers"]["traceparent"].startswith("00-aaaa")
    assert out.ok and out.spent and out.cost == Decimal("0.02")
    assert (out.input_tokens, out.output_tokens) == (5, 7)


def test_a2a_failure_before_spend_may_be_rerouted_one_after_spend_never() -> None:
    before = _deliver([_task("failed", spent=False)], [])
    assert before.state == "failed" and not before.spent
    after = _deliver([_task("failed", spent=True, cost="0.01")], [])
    assert after.state == "failed" and after.spent
    unknown = _deliver([_task("failed")], [])
    assert unknown.spent  # not said: taken as spent, never run again


@pytest.fixture
def api(runtime: RecordingRuntime, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from tasks import routing
    from web.app import create_api

    runtime.redis = fakeredis.FakeRedis(decode_responses=True)
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(routing.submit_task, "apply_async", lambda **kw: sent.append(kw))
    with TestClient(create_api(lambda: runtime)) as client:
        yield client, runtime, sent


def test_the_tasks_api_needs_the_scope_and_refuses_bad_input_by_path(api: Any) -> None:
    client, rt, sent = api
    reader, _ = rt.identities.add_token("reader-svc", ["tasks:read"])
    submitter, _ = rt.identities.add_token("submit-svc", ["tasks:submit"])
    assert (
        client.post(
            "/api/v1/tasks", json=GOOD, headers={"Authorization": f"Bearer {reader}"}
        ).status_code
        == 403
    )
    auth = {"Authorization": f"Bearer {submitter}"}
    bad = client.post("/api/v1/tasks", json={**GOOD, "estimated_tokens": "many"}, headers=auth)
    assert bad.status_code == 422
    assert any(p.startswith("estimated_tokens") for p in bad.json()["problems"])
    parent = "00-" + "c" * 32 + "-" + "d" * 16 + "-01"
    ok = client.post("/api/v1/tasks", json=GOOD, headers={**auth, "traceparent": parent})
    assert ok.status_code == 202, ok.text
    assert sent[0]["task_id"] == ok.json()["task_id"]
    assert sent[0]["kwargs"]["task"]["trace"]["traceparent"] == parent
    # Once the key is claimed, the same key answers with the first task's id.
    rt.redis.set(store.idem_key(GOOD["idempotency_key"]), ok.json()["task_id"])
    again = client.post("/api/v1/tasks", json=GOOD, headers=auth)
    assert again.status_code == 200 and again.json() == {
        "task_id": ok.json()["task_id"],
        "duplicate": True,
    }
    assert len(sent) == 1


def test_sla_samples_prefer_measured_figures_once_enough_tasks_were_seen() -> None:
    from datetime import UTC, datetime

    from fleet.monitoring.snapshot import Health, Snapshot
    from fleet.sla.compliance import MEASURED_MIN_TASKS, Verdict, decide

    now = datetime.now(UTC)
    terms = {"p99_latency_ms": 500, "max_error_rate": 0.05}
    reported_fine = Snapshot(
        "a", now.timestamp(), Health.HEALTHY, latency_p99=100.0, error_rate=0.0
    )
    measured = dataclasses.replace(
        reported_fine,
        measured_latency_p99=900.0,
        measured_error_rate=0.01,
        measured_tasks=MEASURED_MIN_TASKS,
        measured_at=now.timestamp(),
    )
    sample = decide("a", now, measured, terms, 300)
    assert sample.verdict is Verdict.BREACH and sample.source == "measured"
    assert sample.breached_terms == ("p99_latency_ms",)
    too_few = dataclasses.replace(measured, measured_tasks=MEASURED_MIN_TASKS - 1)
    assert decide("a", now, too_few, terms, 300).source == "snapshot"
    stale = dataclasses.replace(measured, measured_at=now.timestamp() - 301)
    assert decide("a", now, stale, terms, 300).verdict is Verdict.COMPLIANT


def test_an_all_zero_trace_context_is_ignored_as_w3c_says_not_refused() -> None:
    zero = "00-" + "0" * 32 + "-" + "b" * 16 + "-01"
    sub = parse_submission({**GOOD, "trace": {"traceparent": zero}})
    assert sub.trace is not None and sub.trace.carrier() == {}


def test_a_queued_tasks_id_is_32_hex_and_the_same_on_redelivery() -> None:
    from fleet.work.service import task_id_for

    message = "2d1ef538-2c90-4e5e-a3a8-352e9144d093"
    assert task_id_for(message) == message.replace("-", "")
    first = task_id_for(message, 0)
    assert re.fullmatch(r"[0-9a-f]{32}", first) and first == task_id_for(message, 0)
    assert first != task_id_for(message, 1) and first != task_id_for(message)
    # A message id that is not a UUID (another producer's) still gives a task id.
    assert re.fullmatch(r"[0-9a-f]{32}", task_id_for("job-7"))
