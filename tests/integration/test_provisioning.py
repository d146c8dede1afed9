"""Provisioning with real parts: Redis, SQLite, the sandbox over HTTP, worker processes."""

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
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.common import bench_manifest
from config.settings import ApiSettings, FlowerSettings, ScheduleSettings
from fleet.approvals import DuplicateVote
from fleet.provisioning.pipeline import JobProgress, job_progress
from fleet.storage.db import engine_for, session_factory
from stack.local import Stack, local_stack
from stack.parts import wait_until
from stack.processes import api_argv, flower_argv, flower_env, free_port, port_open

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("provisioning")
    with local_stack(
        base,
        api=ApiSettings(port=free_port(), token="test-token"),
        flower=FlowerSettings(port=free_port(), password="test-flower"),
        schedule=ScheduleSettings(provisioning_stall_s=2, provisioning_lock_ttl_s=3),
        # Short, so a test can wait out a breaker opened by an injected outage.
        gateway={"breaker_reset_s": 1.0},
    ) as st:
        st.start_worker(["provisioning"], concurrency=16, pool="threads", name="provisioning")
        st.start_worker(["audit"], concurrency=1, name="audit")
        yield st


def sessions(stack: Stack) -> Any:
    return session_factory(engine_for(stack.settings.sqlalchemy_url))


def submit(stack: Stack, manifest: dict[str, Any], job_id: str | None = None) -> str:
    job_id = job_id or uuid.uuid4().hex
    stack.celery().send_task(
        "provisioning.provision_fleet", kwargs={"manifest": manifest, "job_id": job_id}
    )
    return job_id


def wait_done(stack: Stack, job_id: str, timeout_s: float = 60) -> JobProgress:
    def finished() -> JobProgress | None:
        p = job_progress(sessions(stack), job_id)
        return p if p is not None and p.state in ("done", "invalid", "refused") else None

    return wait_until(finished, timeout_s=timeout_s)  # type: ignore[return-value]


def test_manifest_provisions_every_agent_and_a_rerun_registers_nothing(stack: Stack) -> None:
    sandbox = stack.sandbox()
    manifest = bench_manifest(24, fleet="rerun")
    sandbox.reset_counters()
    first = wait_done(stack, submit(stack, manifest))
    assert (first.done, first.failed, first.total) == (24, 0, 24)
    assert all(a.steps_done[-1] == "health" and len(a.steps_done) == 8 for a in first.agents)
    assert sandbox.counters()["tools"]["register_agent"] == 24

    sandbox.reset_counters()
    second = wait_done(stack, submit(stack, manifest))
    assert (second.done, second.failed) == (24, 0)
    assert sandbox.counters()["tools"].get("register_agent", 0) == 0
    assert sandbox.counters()["tools"].get("create_wallet", 0) == 0


def test_ten_percent_of_wallets_failing_leaves_no_orphans(stack: Stack) -> None:
    sandbox = stack.sandbox()
    sandbox.set_faults(tools={"create_wallet": {"error_rate": 0.10}})
    try:
        progress = wait_done(stack, submit(stack, bench_manifest(60, fleet="flaky-wallets")))
    finally:
        sandbox.set_faults(tools={"create_wallet": None})
    assert progress.done + progress.failed == 60
    state = sandbox.state()
    assert state["orphans"]["count"] == 0, state["orphans"]
    assert state["identities_without_wallet"]["count"] == 0, state["identities_without_wallet"]


def test_a_step_that_keeps_failing_is_compensated(stack: Stack) -> None:
    """Claim chains are down: every agent already has an identity and a funded
    wallet, so each must be frozen, drained to the treasury and deregistered."""
    sandbox = stack.sandbox()
    before = sandbox.state()
    sandbox.set_faults(tools={"build_claim_chain": {"error_rate": 1.0, "error_status": 503}})
    try:
        progress = wait_done(stack, submit(stack, bench_manifest(8, fleet="no-claims")))
    finally:
        sandbox.set_faults(tools={"build_claim_chain": None})
    assert (progress.done, progress.failed) == (0, 8)
    assert all("step claims failed" in (a.failure_reason or "") for a in progress.agents)
    after = sandbox.state()
    assert after["orphans"]["count"] == 0
    assert after["agents"]["live"] == before["agents"]["live"]
    assert after["agents"]["deregistered"] - before["agents"]["deregistered"] == 8
    # Every dollar that went into those wallets went back to the treasury.
    moved = float(after["wallets"]["treasury_balance"]) - float(
        before["wallets"]["treasury_balance"]
    )
    assert moved == pytest.approx(8 * 25.0, abs=0.01)

    # Later runs, with the gateway healthy again, provision them afresh. The
    # breaker lets exactly one trial call through once its reset period is
    # over, so calls racing that trial still fail fast: a second run may be
    # needed for the agents that lost the race, and none may stay failed.
    for _ in range(3):
        time.sleep(1.2)
        again = wait_done(stack, submit(stack, bench_manifest(8, fleet="no-claims")))
        if again.failed == 0:
            break
    assert (again.done, again.failed) == (8, 0), {
        a.agent_id: a.failure_reason for a in again.agents
    }
    assert sandbox.state()["orphans"]["count"] == 0


def test_invalid_manifest_sent_as_a_message_is_recorded_with_its_problems(stack: Stack) -> None:
    sandbox = stack.sandbox()
    sandbox.reset_counters()
    bad = bench_manifest(4, fleet="bad")
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
        assert bad.status_code == 422
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
    stack: Stack, tmp_path: Path
) -> None:
    sandbox = stack.sandbox()
    registrations_before = sandbox.state()["agents"]["registrations"]
    slow = {"latency_ms": 40, "latency_jitter_ms": 0}
    sandbox.set_faults(**slow)
    # A second provisioning worker that we kill: stop the module's one first so
    # the victim takes the work.
    regular = next(c for c in stack.sup.children if c.name == "provisioning")
    stack.sup.remove(regular)
    victim = stack.start_worker(["provisioning"], concurrency=8, pool="threads", name="victim")
    try:
        job_id = submit(stack, bench_manifest(40, fleet="killed"))
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
    stack.celery().send_task("provisioning.resume_stalled", kwargs={"stall_s": 2})
    progress = wait_done(stack, job_id)
    assert (progress.done, progress.failed) == (40, 0)
    state = sandbox.state()
    # "No duplicate agent": the gateway created exactly one identity per agent.
    # (An agent registered just before the kill, its key not yet stored, is
    # found by the 409 on re-registration and given a fresh key instead.)
    assert state["agents"]["registrations"] - registrations_before == 40
    assert state["orphans"]["count"] == 0
    for agent in progress.agents:
        assert sandbox.agent(agent.agent_id)["status"] == "active"


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
    manifest_file.write_text(json.dumps(bench_manifest(5, fleet="outsider")))
    script = tmp_path / "outsider.py"
    script.write_text(OUTSIDER)
    # A clean interpreter that cannot import our packages: -I ignores the
    # environment and user site, and the working directory is elsewhere.
    out = subprocess.run(
        [sys.executable, "-I", str(script), stack.settings.redis_url, str(manifest_file)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    job_id = out.stdout.strip()
    progress = wait_done(stack, job_id)
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

    seen = wait_until(flower_sees_everything, timeout_s=30)
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
    progress = wait_done(stack, submit(stack, bench_manifest(2, fleet="retiring")))
    agent_id = progress.agents[0].agent_id
    sandbox = stack.sandbox()
    treasury_before = float(sandbox.state()["wallets"]["treasury_balance"])
    audit_events: list[Any] = []
    approvals = _approvals(stack, audit_events)
    gate = approvals.request(
        "retire_agent",
        agent_id,
        "alice",
        reason="segment shrinks",
        irreversible=True,
        task="provisioning.retire_agent",
        task_kwargs={"agent_id": agent_id, "reason": "segment shrinks"},
    )
    assert not gate.may_run and gate.request.required == 2

    # Sent straight to the worker without a granted approval, it is refused.
    stack.celery().send_task(
        "provisioning.retire_agent", kwargs={"agent_id": agent_id, "approval_id": gate.request_id}
    )
    approvals.approve(gate.request_id, "bob")
    with pytest.raises(DuplicateVote):
        approvals.approve(gate.request_id, "bob")  # the same person twice counts once
    time.sleep(1.0)
    assert _agent_row(stack, agent_id).status == "active"

    approvals.approve(gate.request_id, "carol")
    stack.celery().send_task(
        "audit.approvals_sweep"
    )  # what beat does: send approved requests' tasks
    wait_until(lambda: _agent_row(stack, agent_id).status == "retired", timeout_s=30)
    row = _agent_row(stack, agent_id)
    assert row.api_key_encrypted is None and row.traffic_weight == "0"
    assert row.extra["retire_stages"] == [
        "stop_routing",
        "drain",
        "settle_sla",
        "withdraw",
        "final_snapshot",
        "deregister",
    ]
    assert "final_snapshot" in row.extra["retirement"]
    assert sandbox.agent(agent_id)["status"] == "deregistered"
    withdrawn = float(row.extra["retirement"]["withdrawn"])
    assert withdrawn > 0
    assert float(sandbox.state()["wallets"]["treasury_balance"]) - treasury_before == pytest.approx(
        withdrawn, abs=0.01
    )
    assert approvals.get(gate.request_id).status.value == "executed"
    recorded = [e.action for e in audit_events]
    assert recorded[0] == "approval_requested" and "approval_granted" in recorded


def test_key_rotation_replaces_the_key_and_the_old_one_overlaps(stack: Stack) -> None:
    from datetime import UTC, datetime, timedelta

    from fleet.secrets import KeyVault
    from fleet.storage.db import write_session
    from fleet.storage.records import Agent

    progress = wait_done(stack, submit(stack, bench_manifest(1, fleet="rotating")))
    agent_id = progress.agents[0].agent_id
    vault = KeyVault(stack.settings.secrets_key.get_secret_value())
    old_key = vault.decrypt(_agent_row(stack, agent_id).api_key_encrypted)
    with write_session(sessions(stack)) as s:
        s.get(Agent, agent_id).key_rotated_at = datetime.now(UTC) - timedelta(days=91)
    stack.celery().send_task("provisioning.rotate_due_keys")
    wait_until(
        lambda: (
            _agent_row(stack, agent_id).key_rotated_at.replace(tzinfo=UTC)
            > datetime.now(UTC) - timedelta(minutes=1)
        )
    )
    new_key = vault.decrypt(_agent_row(stack, agent_id).api_key_encrypted)
    assert new_key != old_key
    sandbox = stack.sandbox()
    # Both keys work during the overlap window.
    assert sandbox.call("get_balance", new_key, agent_id=agent_id).status_code == 200
    assert sandbox.call("get_balance", old_key, agent_id=agent_id).status_code == 200
    # A redelivered rotation finds the key fresh and does nothing.
    sandbox.reset_counters()
    stack.celery().send_task("provisioning.rotate_key", args=(agent_id,))
    time.sleep(1.0)
    assert sandbox.counters()["tools"].get("register_agent", 0) == 0


def test_tier_upgrade_over_the_increase_waits_for_approval(stack: Stack) -> None:
    progress = wait_done(stack, submit(stack, bench_manifest(1, fleet="upgrading")))
    agent_id = progress.agents[0].agent_id
    app = stack.celery()
    app.send_task(
        "provisioning.upgrade_tier",
        kwargs={
            "agent_id": agent_id,
            "new_tier": "enterprise",
            "projected_volume": 1_000_000,
            "requested_by": "alice",
        },
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
    assert float(request.details["increase_pct"]) > 200
    assert stack.sandbox().agent(agent_id)["tier"] == "starter"  # nothing changed yet
    approvals.approve(request.request_id, "bob")
    app.send_task("audit.approvals_sweep")
    wait_until(lambda: stack.sandbox().agent(agent_id)["tier"] == "enterprise", timeout_s=30)
    assert _agent_row(stack, agent_id).tier == "enterprise"
