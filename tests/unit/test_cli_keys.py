"""`fleet keys import` / `fleet keys waiting`, the treasury and operator agents `fleet up`
registers, and the demo's operator: against the sandbox, the gateway's double."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cli.commands.keys import import_key
from cli.main import main
from fleet.gateway import Auth
from fleet.gateway import operations as ops
from fleet.monitoring.heartbeats import (
    EVENT_TYPE,
    private_key_hex,
    public_key_hex,
    verify_heartbeat,
)
from fleet.provisioning import identity
from fleet.storage.db import write_session
from fleet.storage.records import Agent, AgentStatus
from stack.bootstrap import DemoOperator, ensure_system_agents
from tests.conftest import RecordingRuntime, SandboxProcess
from workers.queues import TaskName

WAITING_REASON = "metric claims needs a pro key; the agent holds a free key"


@pytest.fixture
def on_sandbox(sandbox: SandboxProcess, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Listed before `runtime`, so the runtime's gateway client is the sandbox's.
    monkeypatch.setenv("FLEET_GATEWAY__BASE_URL", sandbox.url)
    yield


def _registered_agent(
    rt: RecordingRuntime, status: AgentStatus = AgentStatus.AWAITING_KEY, tier: str = "pro"
) -> str:
    """An agent registered at the sandbox, held by us with its free key, as provisioning leaves
    it when a step needs a better key."""
    agent_id = f"t-keys-{uuid.uuid4().hex[:10]}"
    result = rt.gateway.run(ops.register(agent_id))
    now = datetime.now(UTC)
    with write_session(rt.sessions) as s:
        s.add(
            Agent(
                agent_id=agent_id,
                fleet="keys-test",
                environment="test",
                id_prefix="t-keys",
                tier=tier,
                capabilities=[],
                sla_template="standard-support",
                status=status,
                steps_done=["register", "identity", "funding", "budget"],
                failure_reason=WAITING_REASON if status == AgentStatus.AWAITING_KEY else None,
                api_key_encrypted=rt.vault.encrypt(result.api_key.get_secret_value()),
                extra={"key": {"tier": "free", "source": "register"}},
                created_at=now,
                updated_at=now,
            )
        )
    return agent_id


def _agent(rt: RecordingRuntime, agent_id: str) -> Agent:
    with rt.sessions() as s:
        agent = s.get(Agent, agent_id)
        assert agent is not None
        return agent


def _provision_messages(rt: RecordingRuntime) -> list[str]:
    return [kw["agent_id"] for name, kw in rt.sent if name == TaskName.PROVISION_AGENT]


def test_import_from_a_file_stores_the_key_and_sends_the_waiting_agent_back(
    on_sandbox: None, runtime: RecordingRuntime, sandbox: SandboxProcess, tmp_path: Path
) -> None:
    agent_id = _registered_agent(runtime)
    key = sandbox.mint_key(agent_id, "pro")
    key_file = tmp_path / "pro.key"
    key_file.write_text(key + "\n")

    result = CliRunner().invoke(main, ["keys", "import", agent_id, f"@{key_file}", "--by", "alice"])

    assert result.exit_code == 0, result.output
    assert f"{agent_id}: pro key imported; provisioning resumes" in result.output
    assert key not in result.output
    agent = _agent(runtime, agent_id)
    assert agent.status == AgentStatus.PROVISIONING
    assert runtime.vault.decrypt(agent.api_key_encrypted or "") == key
    assert agent.extra["key"]["tier"] == "pro" and agent.extra["key"]["by"] == "alice"
    assert _provision_messages(runtime) == [agent_id]
    assert all(key not in event.model_dump_json() for event in runtime.events)


def test_a_key_of_another_agent_is_refused_and_nothing_is_sent(
    on_sandbox: None, runtime: RecordingRuntime, sandbox: SandboxProcess
) -> None:
    agent_id = _registered_agent(runtime)
    other = _registered_agent(runtime)
    key = sandbox.mint_key(other, "pro")

    result = CliRunner().invoke(main, ["keys", "import", agent_id, key, "--by", "alice"])

    assert result.exit_code == 1
    assert agent_id in result.output and key not in result.output
    assert _agent(runtime, agent_id).status == AgentStatus.AWAITING_KEY
    assert _provision_messages(runtime) == []


def test_importing_for_an_agent_that_does_not_wait_sends_nothing(
    on_sandbox: None, runtime: RecordingRuntime, sandbox: SandboxProcess
) -> None:
    agent_id = _registered_agent(runtime, AgentStatus.ACTIVE)

    result = import_key(runtime, agent_id, sandbox.mint_key(agent_id, "pro"), "alice")

    assert (result.tier, result.redispatch) == ("pro", False)
    assert _agent(runtime, agent_id).status == AgentStatus.ACTIVE
    assert _provision_messages(runtime) == []


def test_import_needs_who_imports(runtime: RecordingRuntime) -> None:
    result = CliRunner().invoke(main, ["keys", "import", "some-agent", "a2a_pro_x"])
    assert result.exit_code == 2 and "--by" in result.output


def test_waiting_lists_agents_with_their_reason(
    on_sandbox: None, runtime: RecordingRuntime
) -> None:
    waiting = _registered_agent(runtime)
    active = _registered_agent(runtime, AgentStatus.ACTIVE)

    result = CliRunner().invoke(main, ["keys", "waiting"])

    assert result.exit_code == 0, result.output
    assert f"{waiting}\t{WAITING_REASON}" in result.output
    assert active not in result.output


def test_system_agents_are_registered_once_and_their_keys_kept(
    on_sandbox: None, runtime: RecordingRuntime, sandbox: SandboxProcess
) -> None:
    sandbox.reset()  # the treasury and operator ids are the settings' own

    first = ensure_system_agents(runtime)
    again = ensure_system_agents(runtime)

    treasury = runtime.settings.policy.provisioning.treasury_wallet
    operator = runtime.settings.gateway.operator_agent_id
    assert [(a.agent_id, a.outcome) for a in first] == [
        (treasury, "registered"),
        (operator, "registered"),
    ]
    assert [a.outcome for a in again] == ["exists (key held)", "exists (key held)"]
    for agent_id in (treasury, operator):
        row = _agent(runtime, agent_id)
        assert row.status == AgentStatus.SYSTEM
        # The stored key is the agent's own: the gateway answers its wallet read.
        assert sandbox.agent(agent_id)["agent_id"] == agent_id
        assert runtime.gateway.run(ops.get_balance(agent_id, auth=Auth.own(agent_id)))
    assert {e.subject for e in runtime.events if e.action == "register_system_agent"} == {
        treasury,
        operator,
    }


def test_demo_operator_gives_each_waiting_agent_a_key_of_its_groups_tier(
    on_sandbox: None, runtime: RecordingRuntime, sandbox: SandboxProcess
) -> None:
    pro = _registered_agent(runtime, tier="pro")
    starter = _registered_agent(runtime, tier="starter")
    operator = DemoOperator(
        runtime, sandbox.mint_key, lambda a, k, by: import_key(runtime, a, k, by)
    )

    done = operator.step()

    assert {(d.agent_id, d.tier, d.redispatched) for d in done} == {
        (pro, "pro", True),
        (starter, "starter", True),
    }
    assert sorted(_provision_messages(runtime)) == sorted([pro, starter])
    assert operator.step() == []  # nobody waits any more


def test_identity_exports_the_agents_identity_key_audited_and_only_to_a_new_private_file(
    runtime: RecordingRuntime, tmp_path: Path
) -> None:
    key = Ed25519PrivateKey.generate()
    agent_id = f"t-idk-{uuid.uuid4().hex[:10]}"
    now = datetime.now(UTC)
    with write_session(runtime.sessions) as s:
        s.add(
            Agent(
                agent_id=agent_id,
                fleet="keys-test",
                environment="test",
                id_prefix="t-idk",
                tier="free",
                capabilities=[],
                sla_template="standard-support",
                status=AgentStatus.ACTIVE,
                steps_done=[],
                extra={
                    "public_key": public_key_hex(key),
                    identity.ENCRYPTED: runtime.vault.encrypt(private_key_hex(key)),
                },
                created_at=now,
                updated_at=now,
            )
        )
    out = tmp_path / "identity.key"
    result = CliRunner().invoke(
        main, ["keys", "identity", agent_id, "--by", "deployer", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert out.read_text().strip() == private_key_hex(key)
    assert out.stat().st_mode & 0o777 == 0o600
    assert private_key_hex(key) not in result.output
    (event,) = [e for e in runtime.events if e.action == "export_identity_key"]
    assert event.subject == agent_id and private_key_hex(key) not in event.model_dump_json()

    again = CliRunner().invoke(
        main, ["keys", "identity", agent_id, "--by", "deployer", "--out", str(out)]
    )
    assert again.exit_code == 1 and "cannot create" in again.output  # never overwritten
    printed = CliRunner().invoke(main, ["keys", "identity", agent_id, "--by", "deployer"])
    assert printed.output.strip() == private_key_hex(key)
    unknown = CliRunner().invoke(main, ["keys", "identity", "nobody-here", "--by", "deployer"])
    assert unknown.exit_code == 1 and "nobody-here" in unknown.output


def test_demo_operator_hands_each_provisioned_agents_identity_key_to_its_sandbox_runtime(
    on_sandbox: None, runtime: RecordingRuntime, sandbox: SandboxProcess
) -> None:
    agent_id = _registered_agent(runtime, AgentStatus.ACTIVE)
    key = Ed25519PrivateKey.generate()
    runtime.gateway.run(ops.set_identity_key(agent_id, public_key_hex(key), auth=Auth.ADMIN))
    with write_session(runtime.sessions) as s:
        row = s.get(Agent, agent_id)
        assert row is not None
        row.extra = {
            **row.extra,
            "public_key": public_key_hex(key),
            identity.ENCRYPTED: runtime.vault.encrypt(private_key_hex(key)),
        }
    not_yet = _registered_agent(runtime, AgentStatus.PROVISIONING)  # before its identity step
    sandbox.set_profile(agent_id, "healthy")
    operator = DemoOperator(
        runtime,
        sandbox.mint_key,
        lambda a, k, by: import_key(runtime, a, k, by),
        hand_identity_key=sandbox.hand_identity_key,
    )

    done = operator.deploy_identities()

    assert [(d.agent_id, d.refused) for d in done if d.agent_id in (agent_id, not_yet)] == [
        (agent_id, None)
    ]
    assert operator.deploy_identities() == []  # once per agent
    assert any(e.action == "export_identity_key" and e.subject == agent_id for e in runtime.events)
    sandbox.tick()
    events = runtime.gateway.run(ops.get_events(EVENT_TYPE, limit=1000)).events
    (mine,) = [e for e in events if e.source == agent_id]
    verify_heartbeat(agent_id, mine.payload, key.public_key())
