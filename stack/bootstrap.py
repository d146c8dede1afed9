"""What `fleet up` does at the gateway before the first manifest, and the demo's operator.

- :func:`ensure_system_agents`: the treasury agent (``provisioning.treasury_wallet``,
  swept funds are deposited into its wallet) and the operator's agent
  (``gateway.operator_agent_id``, tier 3 and 4 notices go to its inbox) must exist at
  the gateway. Registered when missing, their free keys kept encrypted in the
  agents table (status ``system``: never swept, checked, routed or provisioned).
- :class:`DemoOperator`: in `fleet up --demo` on the sandbox only, the sandbox's
  control API plays the operator's key-minting tooling: each agent waiting for a
  key gets one of its group's tier, imported as `fleet keys import` imports it.
  It also plays the agents' deployment: each agent past its identity step has its
  identity key exported (as `fleet keys identity` does, audited) and handed to the
  sandbox's runtime for it, so the demo's agents publish signed heartbeats.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from fleet import audit
from fleet.gateway import operations as ops
from fleet.gateway.errors import AlreadyExists, GatewayError
from fleet.provisioning import identity, pipeline
from fleet.runtime import Runtime
from fleet.storage.db import write_session
from fleet.storage.records import Agent, AgentStatus
from sandbox.control import SandboxError

# Agents whose runtime the demo deploys (their identity step is done once they have a key).
DEPLOYABLE = (AgentStatus.PROVISIONING, AgentStatus.AWAITING_KEY, AgentStatus.ACTIVE)
# The agents table's other columns describe a fleet member; for these they say what they are.
SYSTEM_PREFIX = "system"
ACTOR = "fleet-commander/up"


@dataclass(frozen=True)
class SystemAgent:
    agent_id: str
    role: str  # "treasury" or "operator"
    outcome: str  # "registered", "exists (key held)", "exists (no key held)"


def system_agent_ids(rt: Runtime) -> dict[str, str]:
    return {
        "treasury": rt.settings.policy.provisioning.treasury_wallet,
        "operator": rt.settings.gateway.operator_agent_id,
    }


def ensure_system_agents(rt: Runtime) -> list[SystemAgent]:
    """Register the treasury and the operator's agent where the gateway has no such id.

    Registration is the existence check: a 409 says the id is taken, by us (a
    key in our store) or by whoever set the gateway up (their key stays theirs:
    deposits to the treasury and notices to the operator need only the admin key).
    """
    done: list[SystemAgent] = []
    for role, agent_id in system_agent_ids(rt).items():
        try:
            result = rt.gateway.run(ops.register(agent_id))
        except AlreadyExists:
            held = rt.keys.agent_key(agent_id) is not None
            done.append(
                SystemAgent(agent_id, role, "exists (key held)" if held else "exists (no key held)")
            )
            continue
        _store(rt, agent_id, role, result.api_key.get_secret_value(), result.tier)
        audit.record(
            actor=ACTOR,
            action="register_system_agent",
            subject=agent_id,
            details={"role": role, "tier": result.tier},
        )
        done.append(SystemAgent(agent_id, role, "registered"))
    return done


def _store(rt: Runtime, agent_id: str, role: str, api_key: str, tier: str) -> None:
    now = rt.clock.now()
    token = rt.vault.encrypt(api_key)
    extra: dict[str, Any] = {
        "system": role,
        "key": {"tier": tier, "source": "register", "since": now.isoformat()},
    }
    with write_session(rt.sessions) as s:
        row = s.get(Agent, agent_id)
        if row is None:
            s.add(
                Agent(
                    agent_id=agent_id,
                    fleet=rt.settings.fleet_name,
                    environment=rt.settings.environment,
                    id_prefix=SYSTEM_PREFIX,
                    tier=tier,
                    capabilities=[],
                    sla_template="",
                    status=AgentStatus.SYSTEM,
                    steps_done=[],
                    api_key_encrypted=token,
                    key_rotated_at=now,
                    extra=extra,
                    created_at=now,
                    updated_at=now,
                )
            )
        else:
            # The gateway had no such agent (a sandbox started afresh): the key we held
            # belonged to an identity that no longer exists.
            row.api_key_encrypted, row.key_rotated_at, row.updated_at = token, now, now
            row.extra = {**row.extra, **extra}


KeyImporter = Callable[[str, str, str], pipeline.KeyImport]


@dataclass(frozen=True)
class DemoKey:
    agent_id: str
    tier: str
    refused: str | None = None  # why the key could not be minted or imported
    redispatched: bool = False


@dataclass(frozen=True)
class DemoDeployment:
    agent_id: str
    refused: str | None = None  # why the key could not be exported or handed over


@dataclass
class DemoOperator:
    """Mints a key of the group's tier for each agent waiting for one, and imports it.

    ``mint(agent_id, tier)`` is the sandbox control API's ``POST /_sandbox/keys``;
    ``import_key(agent_id, key, by)`` is what `fleet keys import` runs. An agent
    whose key was refused is not tried again: the refusal is for the operator to read.
    """

    rt: Runtime
    mint: Callable[[str, str], str]
    import_key: KeyImporter
    by: str = "demo-operator"
    refused: set[str] = field(default_factory=set)
    # ``hand(agent_id, private_key_hex)``: the control API's PUT .../identity-key.
    hand_identity_key: Callable[[str, str], object] | None = None
    deployed: set[str] = field(default_factory=set)

    def deploy_identities(self) -> list[DemoDeployment]:
        """Hand each agent's identity key to its runtime once it has one (once per agent)."""
        if self.hand_identity_key is None:
            return []
        with self.rt.sessions() as s:
            rows = s.execute(
                select(Agent.agent_id, Agent.extra).where(Agent.status.in_(DEPLOYABLE))
            ).all()
        ready = [
            agent_id
            for agent_id, extra in rows
            if agent_id not in self.deployed
            and extra.get("public_key")
            and extra.get(identity.ENCRYPTED)
        ]
        done = []
        for agent_id in ready:
            self.deployed.add(agent_id)
            try:
                key = pipeline.export_identity_key(self.rt.provisioning, agent_id, self.by)
                self.hand_identity_key(agent_id, key)
            except (LookupError, SandboxError, ValueError) as exc:
                done.append(DemoDeployment(agent_id, refused=str(exc)))
                continue
            done.append(DemoDeployment(agent_id))
        return done

    def step(self) -> list[DemoKey]:
        done = []
        waiting = [a for a in pipeline.awaiting_key(self.rt.sessions) if a not in self.refused]
        for agent_id in waiting:
            with self.rt.sessions() as s:
                agent = s.get(Agent, agent_id)
            if agent is None:
                continue
            try:
                result = self.import_key(agent_id, self.mint(agent_id, agent.tier), self.by)
            except (GatewayError, SandboxError, ValueError) as exc:
                self.refused.add(agent_id)
                done.append(DemoKey(agent_id, agent.tier, refused=str(exc)))
                continue
            done.append(DemoKey(agent_id, result.tier, redispatched=result.redispatch))
        return done
