"""Provisioning with real parts: Redis, SQLite, the sandbox over HTTP, worker processes.

What the gateway holds is checked with the sandbox's own reads (its REST routes
and its control API), never with our records of it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import select

from config.settings import ApiSettings, FlowerSettings, ScheduleSettings
from fleet.approvals import DuplicateVote
from fleet.monitoring.heartbeats import (
    EVENT_TYPE,
    load_private_key,
    load_public_key,
    public_key_hex,
    verify_heartbeat,
)
from fleet.provisioning import pipeline
from fleet.provisioning.lifecycle import RETIRE_STAGES
from fleet.provisioning.pipeline import STEPS, JobProgress, job_progress
from fleet.runtime import Runtime
from fleet.storage.db import engine_for, session_factory
from fleet.storage.records import Agent
from sandbox.control import SandboxControl, SandboxError
from stack.local import Stack, local_stack
from stack.parts import wait_until
from stack.processes import api_argv, flower_argv, flower_env, free_port, port_open
from tests.support.workload import fleet_manifest
from workers.queues import TaskName
from workers.runtime import celery_runtime

pytestmark = pytest.mark.integration

TREASURY = "fleet-treasury"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("provisioning")
    with local_stack(
        base,
        api=ApiSettings(port=free_port(), token=SecretStr("test-token")),
        flower=FlowerSettings(port=free_port(), password=SecretStr("test-flower")),
        schedule=ScheduleSettings(provisioning_stall_s=2, provisioning_lock_ttl_s=3),
        # Short, so a test can wait out a breaker opened by an injected outage.
        gateway={"breaker_reset_s": 1.0},
    ) as st:
        # The operator registers the treasury agent once; sweeps deposit into its wallet.
        assert st.settings.policy.provisioning.treasury_wallet == TREASURY
        made = httpx.post(f"{st.sandbox().url}/v1/register", json={"agent_id": TREASURY})
        assert made.status_code == 201, made.text
        st.start_worker(["provisioning"], concurrency=16, pool="threads", name="provisioning")
        st.start_worker(["audit"], concurrency=1, name="audit")
        try:
            yield st
        finally:
            app = _PRODUCERS.pop(id(st), None)
            if app is not None:
                app.close()


@pytest.fixture(scope="module")
def operator(stack: Stack) -> Iterator[Runtime]:
    """This process's runtime on the stack, as `fleet keys import` builds it."""
    rt = celery_runtime(producer(stack), stack.settings)
    rt.install_audit_sink()  # the import is audited through the audit queue
    try:
        yield rt
    finally:
        rt.close()


_PRODUCERS: dict[int, Any] = {}


def producer(stack: Stack) -> Any:
    """One producer app per stack, closed with the module's stack."""
    if id(stack) not in _PRODUCERS:
        _PRODUCERS[id(stack)] = stack.celery()
    return _PRODUCERS[id(stack)]


def sessions(stack: Stack) -> Any:
    return session_factory(engine_for(stack.settings.sqlalchemy_url))


def submit(stack: Stack, manifest: dict[str, Any], job_id: str | None = None) -> str:
    job_id = job_id or uuid.uuid4().hex
    producer(stack).send_task(
        TaskName.PROVISION_FLEET, kwargs={"manifest": manifest, "job_id": job_id}
    )
    return job_id


def wait_done(stack: Stack, job_id: str, timeout_s: float = 60) -> JobProgress:
    def finished() -> JobProgress | None:
        p = job_progress(sessions(stack), job_id)
        return p if p is not None and p.state in ("done", "invalid", "refused") else None

    return wait_until(finished, timeout_s=timeout_s)  # type: ignore[return-value]


def wait_settled(stack: Stack, job_id: str, timeout_s: float = 60) -> JobProgress:
    """Every agent of the job active, failed or waiting for a key only an operator can give."""

    def settled() -> JobProgress | None:
        p = job_progress(sessions(stack), job_id)
        still = ("provisioning", "compensating")
        if p is None or not p.total or len(p.agents) < p.total:
            return None
        return None if any(a.status in still for a in p.agents) else p

    return wait_until(settled, timeout_s=timeout_s)  # type: ignore[return-value]


def calls(sandbox: SandboxControl, tool: str, status: str | None = None) -> int:
    counters = sandbox.counters(agents=False)
    if status is None:
        return int(counters["tools"].get(tool, 0))
    return int(counters["statuses"].get(tool, {}).get(status, 0))


def wallet(sandbox: SandboxControl, agent_id: str) -> dict[str, Any] | None:
    try:
        view: dict[str, Any] | None = sandbox.agent(agent_id)["wallet"]
    except SandboxError as exc:
        if exc.status == 404:
            return None
        raise
    return view


def treasury(sandbox: SandboxControl) -> Decimal:
    view = wallet(sandbox, TREASURY)
    assert view is not None
    return Decimal(view["balance"])


def orphans(stack: Stack, progress: JobProgress) -> dict[str, dict[str, Any]]:
    """Funded, unfrozen wallets at the gateway whose agent did not finish provisioning."""
    sandbox = stack.sandbox()
    out = {}
    for agent in progress.agents:
        view = wallet(sandbox, agent.agent_id)
        if view is None or agent.status == "active":
            continue
        if Decimal(view["balance"]) > 0 and not view["frozen"]:
            out[agent.agent_id] = view
    return out


def admin_get(stack: Stack, path: str) -> dict[str, Any]:
    sandbox = stack.sandbox()
    answer = httpx.get(
        sandbox.url + path, headers={"Authorization": f"Bearer {sandbox.admin_key}"}, timeout=10
    )
    assert answer.status_code == 200, f"{path}: {answer.status_code} {answer.text}"
    body: dict[str, Any] = answer.json()
    return body


def test_manifest_provisions_every_agent_and_a_rerun_registers_nothing(stack: Stack) -> None:
    sandbox = stack.sandbox()
    manifest = fleet_manifest(24, fleet="rerun")
    sandbox.reset_counters()
    first = wait_done(stack, submit(stack, manifest))
    assert (first.done, first.failed, first.total) == (24, 0, 24)
    assert all(a.steps_done == list(STEPS) for a in first.agents)
    assert calls(sandbox, "register", "201") == 24
    for agent in first.agents:
        view = wallet(sandbox, agent.agent_id)
        assert view is not None and Decimal(view["balance"]) == Decimal("25.00")
        assert not view["frozen"] and Decimal(view["daily_cap"]) > 0
        # A starter group skips the pro steps, and says so.
        skipped = _agent_row(stack, agent.agent_id).extra["skipped"]
        assert set(skipped) == {"metrics", "claims", "listing"}

    sandbox.reset_counters()
    second = wait_done(stack, submit(stack, manifest))
    assert (second.done, second.failed) == (24, 0)
    for tool in ("register", "register_agent", "deposit", "withdraw", "set_budget_cap"):
        assert calls(sandbox, tool) == 0, tool


def _public_keys(stack: Stack, agent_ids: set[str]) -> dict[str, str]:
    with sessions(stack)() as s:
        rows = s.scalars(select(Agent).where(Agent.agent_id.in_(agent_ids)))
        return {a.agent_id: a.extra["public_key"] for a in rows}


def test_every_agent_gets_an_identity_key_we_hold_and_its_heartbeats_verify(
    stack: Stack, operator: Runtime
) -> None:
    sandbox = stack.sandbox()
    job = wait_done(stack, submit(stack, fleet_manifest(3, fleet="ident", groups=1)))
    assert (job.done, job.failed) == (3, 0)
    ids = {a.agent_id for a in job.agents}
    recorded = _public_keys(stack, ids)
    for agent_id in ids:
        private = pipeline.export_identity_key(operator.provisioning, agent_id, "integration")
        at_gateway = admin_get(stack, f"/v1/identity/agents/{agent_id}")["public_key"]
        assert public_key_hex(load_private_key(private)) == at_gateway == recorded[agent_id]
        # Deployed to the agent's runtime (the sandbox's, here), the key signs its heartbeats.
        sandbox.set_profile(agent_id, "healthy")
        sandbox.hand_identity_key(agent_id, private)
    sandbox.tick()
    events = admin_get(stack, f"/v1/infra/events?event_type={EVENT_TYPE}&limit=1000")["events"]
    mine = [e for e in events if e["source"] in ids]
    assert {e["source"] for e in mine} == ids
    for event in mine:
        verify_heartbeat(
            event["source"], event["payload"], load_public_key(recorded[event["source"]])
        )
    # A rerun of the manifest keeps every key.
    wait_done(stack, submit(stack, fleet_manifest(3, fleet="ident", groups=1)))
    assert _public_keys(stack, ids) == recorded


def test_a_tenth_of_agents_failing_a_step_leaves_no_orphans(stack: Stack) -> None:
    """The budget step fails for about one agent in ten even after the client's
    three attempts (0.46³ ≈ 0.1), and a tenth of withdrawals lose their answer after
    the money moved: every failed agent is swept and frozen, every other one holds
    exactly its manifest balance."""
    sandbox = stack.sandbox()
    before = treasury(sandbox)
    sandbox.set_faults(
        tools={
            "set_budget_cap": {"error_rate": 0.46, "error_status": 503},
            "withdraw": {"drop_after_commit_rate": 0.10},
        }
    )
    try:
        progress = wait_done(stack, submit(stack, fleet_manifest(60, fleet="flaky-budget")))
    finally:
        sandbox.set_faults(tools={"set_budget_cap": None, "withdraw": None})
    assert progress.done + progress.failed == 60
    assert progress.failed > 0 and progress.done > 0, "the faults did not split the fleet"
    assert orphans(stack, progress) == {}
    for agent in progress.agents:
        view = wallet(sandbox, agent.agent_id)
        assert view is not None
        if agent.status == "active":
            assert (Decimal(view["balance"]), view["frozen"]) == (Decimal("25.00"), False)
        else:
            assert "step budget failed" in (agent.failure_reason or "")
            assert (Decimal(view["balance"]), view["frozen"]) == (Decimal("0.00"), True)
    assert treasury(sandbox) - before == Decimal("25.00") * progress.failed


def test_a_step_that_keeps_failing_is_compensated(stack: Stack) -> None:
    """The budget route is down: every agent already has an identity and a funded
    wallet, so each must be drained to the treasury and frozen at the gateway."""
    sandbox = stack.sandbox()
    before = treasury(sandbox)
    agents_before = sandbox.state()["agents"]
    sandbox.set_faults(tools={"set_budget_cap": {"error_rate": 1.0, "error_status": 503}})
    try:
        progress = wait_done(stack, submit(stack, fleet_manifest(8, fleet="no-budget")))
    finally:
        sandbox.set_faults(tools={"set_budget_cap": None})
    assert (progress.done, progress.failed) == (0, 8)
    assert all("step budget failed" in (a.failure_reason or "") for a in progress.agents)
    assert orphans(stack, progress) == {}
    for agent in progress.agents:
        view = wallet(sandbox, agent.agent_id)
        assert view is not None and view["frozen"] and Decimal(view["balance"]) == 0
        assert _agent_row(stack, agent.agent_id).extra["compensation"]["wallet_frozen"]
    # Every credit left in those wallets went to the treasury; the identities remain.
    assert treasury(sandbox) - before == Decimal("25.00") * 8
    assert sandbox.state()["agents"] - agents_before == 8

    # Later runs, with the gateway healthy again, provision them afresh on the
    # same identities. The breaker lets exactly one trial call through once its
    # reset period is over, so calls racing that trial still fail fast: a second
    # run may be needed for the agents that lost the race, and none may stay failed.
    sandbox.reset_counters()
    for _ in range(3):
        time.sleep(1.2)
        again = wait_done(stack, submit(stack, fleet_manifest(8, fleet="no-budget")))
        if again.failed == 0:
            break
    assert (again.done, again.failed) == (8, 0), {
        a.agent_id: a.failure_reason for a in again.agents
    }
    assert calls(sandbox, "register", "201") == 0
    assert sandbox.state()["agents"] - agents_before == 8
    for agent in again.agents:
        view = wallet(sandbox, agent.agent_id)
        assert view is not None and not view["frozen"]
        assert Decimal(view["balance"]) == Decimal("25.00")


def test_a_pro_group_waits_for_an_imported_key_then_finishes(
    stack: Stack, operator: Runtime
) -> None:
    sandbox = stack.sandbox()
    job_id = submit(stack, fleet_manifest(2, fleet="pro-wait", groups=1, tier="pro"))
    waiting = wait_until(
        lambda: (
            (p := job_progress(sessions(stack), job_id))
            and p.total == 2
            and all(a.status == "awaiting_key" for a in p.agents)
            and p
        ),
        timeout_s=60,
    )
    assert isinstance(waiting, JobProgress)
    # It went as far as a free key goes, and stopped at the first pro step.
    for agent in waiting.agents:
        assert agent.steps_done == ["register", "identity", "funding", "budget"]
        assert "metric claims needs a pro key" in (agent.failure_reason or "")
        assert f"fleet keys import {agent.agent_id}" in (agent.failure_reason or "")
        assert admin_get(stack, f"/v1/identity/agents/{agent.agent_id}/claim-chains") == {
            "chains": []
        }
    assert len(waiting.problems) == 2
    assert pipeline.awaiting_key(sessions(stack)) == sorted(a.agent_id for a in waiting.agents)
    time.sleep(1.0)  # a waiting agent stays waiting: nothing retries it behind our back
    assert all(a.status == "awaiting_key" for a in job_progress(sessions(stack), job_id).agents)  # type: ignore[union-attr]

    # The operator mints a pro key outside the API and imports it.
    for agent in waiting.agents:
        key = sandbox.mint_key(agent.agent_id, "pro")
        imported = pipeline.import_agent_key(operator.provisioning, agent.agent_id, key, "alice")
        assert (imported.tier, imported.redispatch) == ("pro", True)
        # What `fleet keys import` does next for an agent that was waiting.
        producer(stack).send_task(TaskName.PROVISION_AGENT, args=(job_id, agent.agent_id))
    progress = wait_done(stack, job_id)
    assert (progress.done, progress.failed) == (2, 0)
    for agent in progress.agents:
        row = _agent_row(stack, agent.agent_id)
        assert agent.steps_done == list(STEPS) and "skipped" not in row.extra
        assert row.extra["key"]["tier"] == "pro" and row.extra["key"]["source"] == "import"
        chains = admin_get(stack, f"/v1/identity/agents/{agent.agent_id}/claim-chains")["chains"]
        assert [str(c["id"]) for c in chains] == [row.claim_chain_id]
        claims = admin_get(stack, f"/v1/identity/agents/{agent.agent_id}/claims")
        assert claims, "the metric claims are at the gateway"
        listing = admin_get(stack, f"/v1/marketplace/services/{row.service_id}")
        assert listing["status"] == "active" and agent.agent_id in listing["tags"]


def test_invalid_manifest_sent_as_a_message_is_recorded_with_its_problems(stack: Stack) -> None:
    sandbox = stack.sandbox()
    sandbox.reset_counters()
    bad = fleet_manifest(4, fleet="bad")
    bad["agents"][0]["sla_template"] = "gold"
    progress = wait_done(stack, submit(stack, bad))
    assert progress.state == "invalid"
    assert any(
        p.startswith("agents[0].sla_template: unknown template 'gold'") for p in progress.problems
    )
    # Refused before any gateway call (the audit mirror, catching up on earlier
    # entries in the background, is the only caller).
    assert set(sandbox.counters()["tools"]) <= {"create_audit_trail"}


def test_http_api_accepts_yaml_and_reports_progress(stack: Stack) -> None:
    api = stack.settings.api
    stack.sup.start(
        "api", api_argv(stack.settings), env=stack.env, ready=lambda: port_open(api.host, api.port)
    )
    base = f"http://{api.host}:{api.port}"
    auth = {"Authorization": "Bearer test-token"}
    manifest_yaml = textwrap.dedent("""\
        fleet: via-http
        environment: test
        agents:
          - id_prefix: web
            count: 3
            tier: starter
            initial_balance: "10.00"
            capabilities: [search]
            sla_template: premium-support
    """)
    with httpx.Client(base_url=base, timeout=10) as client:
        assert client.post("/api/v1/provisioning-jobs", content=manifest_yaml).status_code == 401
        bad = client.post(
            "/api/v1/provisioning-jobs",
            content=manifest_yaml.replace("premium-support", "gold"),
            headers={**auth, "Content-Type": "application/yaml"},
        )
        assert bad.status_code == 409  # well-formed, but not a template of this policy
        assert "agents[0].sla_template: unknown template 'gold'" in bad.text
        accepted = client.post(
            "/api/v1/provisioning-jobs",
            content=manifest_yaml,
            headers={**auth, "Content-Type": "application/yaml"},
        )
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["job_id"]

        def done() -> dict[str, Any] | None:
            body = client.get(f"/api/v1/provisioning-jobs/{job_id}", headers=auth).json()
            return body if body["state"] == "done" else None

        body = wait_until(done, timeout_s=60)
        assert body["done"] == 3 and body["failed"] == 0, json.dumps(body)  # type: ignore[index]
        assert "api_key" not in json.dumps(body) and "a2a_" not in json.dumps(body)
        assert client.get("/api/v1/provisioning-jobs/nope", headers=auth).status_code == 404
        assert "/api/v1/provisioning-jobs" in client.get("/openapi.json").json()["paths"]


def test_worker_killed_mid_job_resumes_without_duplicate_agents(
    stack: Stack, operator: Runtime
) -> None:
    sandbox = stack.sandbox()
    agents_before = sandbox.state()["agents"]
    sandbox.reset_counters()
    sandbox.set_faults(latency_ms=40, latency_jitter_ms=0)
    # A second provisioning worker that we kill: stop the module's one first so
    # the victim takes the work.
    regular = next(c for c in stack.sup.children if c.name == "provisioning")
    stack.sup.remove(regular)
    victim = stack.start_worker(["provisioning"], concurrency=8, pool="threads", name="victim")
    manifest = fleet_manifest(40, fleet="killed")
    try:
        job_id = submit(stack, manifest)
        wait_until(
            lambda: (p := job_progress(sessions(stack), job_id, with_agents=False)) and p.done >= 5,
            timeout_s=60,
        )
        os.killpg(victim.process.pid, signal.SIGKILL)
        stack.sup.remove(victim)
        interrupted = job_progress(sessions(stack), job_id, with_agents=False)
        assert interrupted is not None and interrupted.pending > 0, (
            "the kill came too late to interrupt anything"
        )
    finally:
        sandbox.set_faults(latency_ms=0, latency_jitter_ms=0)
    stack.start_worker(["provisioning"], concurrency=16, pool="threads", name="provisioning")
    # Past the dead worker's locks (3 s here) and the stall threshold (2 s).
    time.sleep(3.5)
    # What beat does every minute: re-dispatch agents whose provisioning stopped moving.
    producer(stack).send_task(TaskName.RESUME_STALLED, kwargs={"stall_s": 2})
    progress = wait_settled(stack, job_id)
    assert progress.failed == 0, progress.agents
    # An agent killed between its registration and storing the key cannot get that
    # key back (the gateway shows a key once): it waits for a key saying so, and nothing
    # else was made for it. The operator mints a key for it and the manifest runs again.
    lost = [a for a in progress.agents if a.status == "awaiting_key"]
    for agent in lost:
        assert "its answer, which alone carries the key, was lost" in (agent.failure_reason or "")
        view = sandbox.agent(agent.agent_id)
        assert [k["tier"] for k in view["keys"]] == ["free"]
        assert Decimal(view["wallet"]["balance"]) == Decimal("500.00")
        key = sandbox.mint_key(agent.agent_id, "free")
        pipeline.import_agent_key(operator.provisioning, agent.agent_id, key, "alice")
    if lost:
        progress = wait_done(stack, submit(stack, manifest))
    assert (progress.done, progress.failed) == (40, 0)
    # "No duplicate agent": the gateway made exactly one identity per agent, and
    # each wallet was funded once.
    assert sandbox.state()["agents"] - agents_before == 40
    assert calls(sandbox, "register", "201") == 40
    assert orphans(stack, progress) == {}
    for agent in progress.agents:
        view = wallet(sandbox, agent.agent_id)
        assert view is not None and Decimal(view["balance"]) == Decimal("25.00")


OUTSIDER = r"""
import json, sys, uuid, base64
import redis  # only the Redis client: nothing of Fleet Commander's

url, manifest_file = sys.argv[1], sys.argv[2]
task_id = str(uuid.uuid4())
kwargs = {"manifest": json.load(open(manifest_file)), "job_id": task_id}
embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
body = json.dumps([[], kwargs, embed])
message = {
    "body": base64.b64encode(body.encode()).decode(),
    "content-encoding": "utf-8",
    "content-type": "application/json",
    "headers": {"lang": "py", "task": "provisioning.provision_fleet", "id": task_id,
                "root_id": task_id, "parent_id": None, "group": None, "retries": 0, "eta": None,
                "expires": None,
                "argsrepr": "()", "kwargsrepr": "{'manifest': ...}", "origin": "outsider"},
    "properties": {"correlation_id": task_id, "reply_to": "", "delivery_mode": 2,
                   "delivery_info": {"exchange": "fleet", "routing_key": "provisioning"},
                   "priority": 0, "body_encoding": "base64", "delivery_tag": str(uuid.uuid4())},
}
redis.Redis.from_url(url).lpush("provisioning", json.dumps(message))
print(task_id)
"""


def test_raw_message_from_a_foreign_script_runs_and_shows_in_flower(
    stack: Stack, tmp_path: Path
) -> None:
    fl = stack.settings.flower
    stack.sup.start(
        "flower",
        flower_argv(stack.settings),
        env={**stack.env, **flower_env(stack.settings)},
        ready=lambda: port_open(fl.host, fl.port),
        timeout_s=60,
    )
    manifest_file = tmp_path / "manifest.json"
    manifest_file.write_text(json.dumps(fleet_manifest(5, fleet="outsider")))
    script = tmp_path / "outsider.py"
    script.write_text(OUTSIDER)
    # A clean interpreter that cannot import our packages: -I ignores the
    # environment and user site, and the working directory is elsewhere.
    out = subprocess.run(
        [sys.executable, "-I", str(script), stack.settings.redis_url, str(manifest_file)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    )
    job_id = out.stdout.strip()
    progress = wait_done(stack, job_id, timeout_s=120)
    assert (progress.done, progress.failed) == (5, 0)

    auth = (fl.user, "test-flower")
    base = f"http://{fl.host}:{fl.port}"

    def flower_sees_everything() -> dict[str, Any] | None:
        tasks = httpx.get(f"{base}/api/tasks", params={"limit": 2000}, auth=auth, timeout=10).json()
        job = tasks.get(job_id)
        agents = [
            t
            for t in tasks.values()
            if t["name"] == "provisioning.provision_agent" and job_id in (t.get("args") or "")
        ]
        if (
            job
            and job["state"] == "SUCCESS"
            and len(agents) == 5
            and all(t["state"] == "SUCCESS" for t in agents)
        ):
            return {"job": job, "agents": agents}
        return None

    seen = wait_until(flower_sees_everything, timeout_s=90)
    assert seen["job"]["name"] == "provisioning.provision_fleet"  # type: ignore[index]
    for task in seen["agents"]:  # type: ignore[index]
        assert any(
            a.agent_id in task["args"] for a in progress.agents
        )  # the agent id is in the arguments
    assert httpx.get(f"{base}/api/tasks", auth=("admin", "wrong"), timeout=10).status_code == 401


def _approvals(stack: Stack, audit_events: list[Any] | None = None) -> Any:
    """The approvals service as an operator's CLI would use it; its audit
    entries are collected here instead of going to a queue."""
    from fleet.approvals import Approvals
    from fleet.clock import SystemClock

    events = audit_events if audit_events is not None else []
    return Approvals(
        sessions(stack), stack.settings.policy.approvals, clock=SystemClock(), emit=events.extend
    )


def _agent_row(stack: Stack, agent_id: str) -> Any:
    from fleet.storage.records import Agent

    with sessions(stack)() as s:
        return s.get(Agent, agent_id)


def test_retirement_runs_only_after_two_distinct_approvals(stack: Stack) -> None:
    progress = wait_done(stack, submit(stack, fleet_manifest(2, fleet="retiring")))
    agent_id = progress.agents[0].agent_id
    sandbox = stack.sandbox()
    treasury_before = treasury(sandbox)
    audit_events: list[Any] = []
    approvals = _approvals(stack, audit_events)
    gate = approvals.request(
        "retire_agent",
        agent_id,
        "alice",
        reason="segment shrinks",
        irreversible=True,
        task=TaskName.RETIRE_AGENT,
        task_kwargs={"agent_id": agent_id, "reason": "segment shrinks"},
    )
    assert not gate.may_run and gate.request.required == 2

    # Sent straight to the worker without a granted approval, it is refused.
    producer(stack).send_task(
        TaskName.RETIRE_AGENT, kwargs={"agent_id": agent_id, "approval_id": gate.request_id}
    )
    approvals.approve(gate.request_id, "bob")
    with pytest.raises(DuplicateVote):
        approvals.approve(gate.request_id, "bob")  # the same person twice counts once
    time.sleep(1.0)
    assert _agent_row(stack, agent_id).status == "active"
    assert not sandbox.agent(agent_id)["wallet"]["frozen"]

    approvals.approve(gate.request_id, "carol")
    # What beat does: send approved requests' tasks.
    producer(stack).send_task(TaskName.AUDIT_APPROVALS_SWEEP)
    wait_until(lambda: _agent_row(stack, agent_id).status == "retired", timeout_s=30)
    # The approval is marked used just after the work is done (run_approved's order).
    wait_until(lambda: approvals.get(gate.request_id).status.value == "executed", timeout_s=10)
    row = _agent_row(stack, agent_id)
    assert row.api_key_encrypted is None and row.traffic_weight == "0"
    assert row.extra["retire_stages"] == list(RETIRE_STAGES)
    assert "final_snapshot" in row.extra["retirement"]
    withdrawn = Decimal(row.extra["retirement"]["withdrawn"])
    assert withdrawn == Decimal("25.00")
    # At the gateway: the wallet is empty and frozen, the funds are in the treasury.
    view = sandbox.agent(agent_id)["wallet"]
    assert view["frozen"] and Decimal(view["balance"]) == 0
    assert treasury(sandbox) - treasury_before == withdrawn
    assert approvals.get(gate.request_id).status.value == "executed"
    recorded = [e.action for e in audit_events]
    assert recorded[0] == "approval_requested" and "approval_granted" in recorded


def _balance_with(stack: Stack, key: str, agent_id: str) -> int:
    answer = httpx.get(
        f"{stack.sandbox().url}/v1/billing/wallets/{agent_id}/balance",
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    return answer.status_code


def test_key_rotation_replaces_the_key_and_the_old_one_overlaps(stack: Stack) -> None:
    from datetime import UTC, datetime, timedelta

    from fleet.secrets import KeyVault
    from fleet.storage.db import write_session
    from fleet.storage.records import Agent

    progress = wait_done(stack, submit(stack, fleet_manifest(1, fleet="rotating")))
    agent_id = progress.agents[0].agent_id
    vault = KeyVault(stack.settings.secrets_key.get_secret_value())
    old_key = vault.decrypt(_agent_row(stack, agent_id).api_key_encrypted)
    with write_session(sessions(stack)) as s:
        row = s.get(Agent, agent_id)
        assert row is not None
        row.key_rotated_at = datetime.now(UTC) - timedelta(days=91)
    producer(stack).send_task(TaskName.ROTATE_DUE_KEYS)
    wait_until(
        lambda: (
            _agent_row(stack, agent_id).key_rotated_at.replace(tzinfo=UTC)
            > datetime.now(UTC) - timedelta(minutes=1)
        )
    )
    new_key = vault.decrypt(_agent_row(stack, agent_id).api_key_encrypted)
    assert new_key != old_key
    # Both keys work during the gateway's grace window.
    assert _balance_with(stack, new_key, agent_id) == 200
    assert _balance_with(stack, old_key, agent_id) == 200
    # A redelivered rotation finds the key fresh and does nothing.
    sandbox = stack.sandbox()
    sandbox.reset_counters()
    producer(stack).send_task(TaskName.ROTATE_KEY, args=(agent_id,))
    time.sleep(1.0)
    assert calls(sandbox, "rotate_key") == 0
    assert vault.decrypt(_agent_row(stack, agent_id).api_key_encrypted) == new_key


def test_tier_upgrade_over_the_increase_waits_for_approval_then_is_recorded(
    stack: Stack,
) -> None:
    progress = wait_done(stack, submit(stack, fleet_manifest(1, fleet="upgrading")))
    agent_id = progress.agents[0].agent_id
    sandbox = stack.sandbox()
    keys_before = sandbox.agent(agent_id)["keys"]
    producer(stack).send_task(
        TaskName.UPGRADE_TIER,
        kwargs={"agent_id": agent_id, "new_tier": "enterprise", "requested_by": "alice"},
    )
    approvals = _approvals(stack)
    pending = wait_until(
        lambda: [
            r
            for r in approvals.list_requests()
            if r.subject == agent_id and r.action == "upgrade_tier"
        ]
    )
    request = pending[0]  # type: ignore[index]
    assert Decimal(str(request.details["increase_pct"])) > 200
    assert "tier_request" not in _agent_row(stack, agent_id).extra  # nothing recorded yet
    approvals.approve(request.request_id, "bob")
    producer(stack).send_task(TaskName.AUDIT_APPROVALS_SWEEP)
    wait_until(lambda: "tier_request" in _agent_row(stack, agent_id).extra, timeout_s=30)
    recorded = _agent_row(stack, agent_id).extra["tier_request"]
    assert recorded["approved_by"] == ["bob"] and recorded["status"] == "awaiting imported key"
    # The gateway's API grants no tier: the agent's keys there are what they were.
    assert sandbox.agent(agent_id)["keys"] == keys_before
    assert _agent_row(stack, agent_id).extra["key"]["tier"] == "free"
