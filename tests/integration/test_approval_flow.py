"""Human oversight end to end: the real CLI, a real audit worker, the sandbox holding a frozen
wallet."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import yaml
from sqlalchemy.orm import Session

from config.settings import DEFAULT_POLICY_FILE
from fleet.audit.log import AuditFiles, AuditLog
from fleet.audit.verify import verify_log
from fleet.storage.db import create_db_engine, migrate
from fleet.storage.records import Agent, AgentStatus
from stack.parts import celery_worker, producer_app, redis_server, wait_until
from stack.processes import Supervisor, free_port, port_open
from tests.support.trust import trust_env
from workers.queues import FleetQueue

pytestmark = pytest.mark.integration


class World:
    def __init__(
        self,
        env: dict[str, str],
        engine: sa.Engine,
        log: AuditLog,
        agent_id: str,
        sandbox: Any,
        log_file: Path,
    ) -> None:
        self.env, self.engine, self.log, self.agent_id, self.sandbox, self.log_file = (
            env,
            engine,
            log,
            agent_id,
            sandbox,
            log_file,
        )

    def fleet(
        self, *args: str, as_user: str | None = None, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`fleet ARGS`; as_user: signed in as that person (their own credentials file)."""
        env = {**os.environ, **self.env}
        if as_user is not None:
            env["FLEET_CREDENTIALS_FILE"] = str(self.log_file.parent / f"{as_user}.credentials")
        return subprocess.run(
            [sys.executable, "-c", "from cli.main import main; main()", *args],
            env=env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def sign_up(self, *names: str) -> None:
        """Approver accounts for each name, each signed in with `fleet login`."""
        for name in names:
            added = self.fleet(
                "users",
                "add",
                name,
                "--role",
                "approver",
                "--password-stdin",
                stdin=f"{name}-password-long-enough\n",
            )
            assert added.returncode == 0, added.stderr
            login = self.fleet(
                "login",
                "--username",
                name,
                "--password-stdin",
                as_user=name,
                stdin=f"{name}-password-long-enough\n",
            )
            assert login.returncode == 0 and f"user:{name}" in login.stdout, login.stderr

    def status(self) -> str:
        with Session(self.engine) as session:
            agent = session.get(Agent, self.agent_id)
            assert agent is not None
            return str(agent.status)

    def frozen(self) -> bool:
        return bool(self.sandbox.agent(self.agent_id)["wallet"]["frozen"])

    def audited(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(
                conn.execute(sa.text("SELECT action FROM audit_entries ORDER BY seq")).scalars()
            )


@pytest.fixture
def world(sandbox: Any, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[World]:
    policy = yaml.safe_load(DEFAULT_POLICY_FILE.read_text())
    # This deployment rates releasing a frozen agent as CRITICAL: two distinct approvers.
    policy["approvals"]["matrix"]["release_agent"] = "CRITICAL"
    policy["approvals"]["request_expiry_s"] = getattr(request, "param", 3600)
    policy["audit"]["mirror_enabled"] = False
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(policy))
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    engine = create_db_engine(url)
    migrate(engine)

    agent_id = sandbox.seed(1, prefix=f"a{uuid.uuid4().hex[:6]}")["agents"][0]["agent_id"]
    # What tier 4 did: the admin key froze the agent's wallet at the gateway.
    frozen = httpx.post(
        f"{sandbox.url}/v1/billing/wallets/{agent_id}/freeze",
        headers={"Authorization": f"Bearer {sandbox.admin_key}"},
        timeout=10,
    )
    assert frozen.status_code == 200, frozen.text
    assert sandbox.agent(agent_id)["wallet"]["frozen"]
    now = datetime.now(UTC)
    with Session(engine) as session, session.begin():
        session.add(
            Agent(
                agent_id=agent_id,
                fleet="demo",
                environment="test",
                id_prefix=agent_id.split("-")[0],
                tier="starter",
                capabilities=["support"],
                sla_template="standard-support",
                status=AgentStatus.PAUSED,
                steps_done=[],
                extra={},
                created_at=now,
                updated_at=now,
            )
        )

    trust = trust_env(tmp_path)
    log = AuditLog(
        engine,
        AuditFiles(
            tmp_path / "audit/signing-key.pem",
            tmp_path / "audit/checkpoints.jsonl",
            tmp_path / "audit/archive",
            tmp_path / "reports",
        ),
        public_key=trust["FLEET_AUDIT__PUBLIC_KEY"],
    )
    with redis_server(tmp_path / "redis") as redis_url:
        env = {
            "FLEET_REDIS__URL": redis_url,
            "FLEET_DATABASE_URL": url,
            "FLEET_DATA_DIR": str(tmp_path),
            "FLEET_POLICY_FILE": str(policy_file),
            "FLEET_GATEWAY__BASE_URL": sandbox.url,
            **trust,
        }
        api_port = free_port()
        env["FLEET_API__PORT"] = str(api_port)
        env["FLEET_API_URL"] = f"http://127.0.0.1:{api_port}"
        with (
            celery_worker(env, [FleetQueue.AUDIT], tmp_path, concurrency=2, name="audit") as (
                _,
                log_file,
            ),
            Supervisor(log_dir=tmp_path / "api-logs") as sup,
        ):
            # Decisions go through the API, as whoever runs the command.
            sup.start(
                "api",
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "web.app:app",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(api_port),
                    "--log-level",
                    "warning",
                ],
                env=env,
                ready=lambda: port_open("127.0.0.1", api_port),
                timeout_s=60,
            )
            world = World(env, engine, log, agent_id, sandbox, log_file)
            world.sign_up("alice", "bob", "carol")
            yield world
    engine.dispose()


def _request_id(output: str) -> str:
    return output.split()[0]


def test_a_critical_action_approved_twice_by_the_same_person_does_not_run(world: World) -> None:
    opened = world.fleet(
        "approvals", "release", world.agent_id, "--reason", "root cause fixed", as_user="alice"
    )
    assert opened.returncode == 0, opened.stderr
    rid = _request_id(opened.stdout)
    assert "CRITICAL pending" in opened.stdout and "0/2 approvals" in opened.stdout
    assert "by user:alice" in opened.stdout

    first = world.fleet("approvals", "approve", rid, as_user="bob")
    assert first.returncode == 0 and "1/2 approvals" in first.stdout, first.stdout + first.stderr
    again = world.fleet("approvals", "approve", rid, as_user="bob")
    assert again.returncode == 1 and "already voted" in again.stderr
    own = world.fleet("approvals", "approve", rid, as_user="alice")
    assert own.returncode == 1 and "cannot vote" in own.stderr
    nobody = world.fleet("approvals", "approve", rid)
    assert nobody.returncode == 2 and "fleet login" in nobody.stderr

    # Even a message that reaches the worker directly does not run it.
    app = producer_app(world.env["FLEET_REDIS__URL"])
    app.send_task("audit.release_agent", kwargs={"agent_id": world.agent_id, "approval_id": rid})
    wait_until(lambda: "not releasing" in world.log_file.read_text(), timeout_s=90)
    assert world.frozen() and world.status() == AgentStatus.PAUSED

    listed = world.fleet("approvals", "list")
    assert rid in listed.stdout and "pending" in listed.stdout

    second = world.fleet(
        "approvals", "approve", rid, "--comment", "checked with bob", as_user="carol"
    )
    assert (
        second.returncode == 0
        and "approved" in second.stdout
        and "the API sends audit.release_agent" in second.stdout
    ), second.stdout + second.stderr
    wait_until(lambda: not world.frozen() and world.status() == AgentStatus.ACTIVE, timeout_s=90)

    expected = [
        "approval_requested",
        "approval_vote",
        "approval_vote_refused",
        "approval_vote_refused",
        "approval_vote",
        "approval_granted",
        "approval_executed",
        "release_agent",
    ]
    wait_until(lambda: sorted(world.audited()) == sorted(expected), timeout_s=90)
    report = verify_log(world.log)
    assert report.ok, report.summary()


@pytest.mark.parametrize("world", [1], indirect=True)
def test_an_expired_request_is_denied_audited_and_never_runs(world: World) -> None:
    rid = _request_id(
        world.fleet("approvals", "release", world.agent_id, "--reason", "x", as_user="alice").stdout
    )
    time.sleep(1.2)
    app = producer_app(world.env["FLEET_REDIS__URL"])
    app.send_task("audit.approvals_sweep")  # what beat sends every approvals.sweep_s
    wait_until(lambda: "approval_expired" in world.audited(), timeout_s=90)
    late = world.fleet("approvals", "approve", rid, as_user="bob")
    assert late.returncode == 1 and "denied, not pending" in late.stderr
    shown = world.fleet("approvals", "list", "--status", "denied", "--json")
    assert '"outcome": "expired"' in shown.stdout
    assert world.frozen() and world.status() == AgentStatus.PAUSED
