"""The simulated agents' own runtimes: each publishes its signed heartbeat on the sandbox's bus.

A real agent measures itself and publishes ``fleet.agent.heartbeat`` with its
own key, signed with its Ed25519 identity key (:mod:`fleet.monitoring.heartbeats`).
Here the measurements come from the agent's behaviour profile at the sandbox's
clock: healthy, flaky, degrading and cost_runaway report what they do; a dead
agent is silent, as a dead process is.

Who can sign: the sandbox holds the private key of every identity it created
itself (derived from the seed, as :func:`sandbox.state.public_key_for`), and of
identities whose key was handed to it (``PUT /_sandbox/agents/{id}/identity-key``,
standing for deploying the key to that agent's runtime). An identity whose key
was replaced by one the sandbox was never given cannot be signed for: that
agent goes silent.

Who heartbeats: seeded (simulated) agents and agents whose key was handed over;
an agent that was only registered has no runtime. Beats are spread over the
interval by the agent's hash, so 10,000 agents at 60 s make a steady ~167/s.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleet.monitoring.heartbeats import (
    EVENT_TYPE,
    Heartbeat,
    HeartbeatMetrics,
    load_private_key,
    public_key_hex,
    sign_heartbeat,
)
from sandbox.behaviour import DEAD, metrics_at, unit
from sandbox.state import Agent, State


def derived_identity_key(seed: int, agent_id: str) -> Ed25519PrivateKey:
    """The private half of :func:`sandbox.state.public_key_for`."""
    return Ed25519PrivateKey.from_private_bytes(
        hashlib.sha256(f"{seed}:{agent_id}".encode()).digest()
    )


def heartbeat_metrics(agent: Agent, now: float, interval_s: float) -> HeartbeatMetrics:
    """What the agent's profile measured over the interval ending ``now``."""
    m = metrics_at(agent.profile, agent.hash, agent.params(), now, agent.origin)
    share = interval_s / 3600.0
    # Whole calls between two marks of a running count: a rate of a few calls an hour
    # still shows over the hour, where rounding each short interval would make it 0.
    per_s = m.calls_per_hour / 3600.0
    tool_calls = math.floor(per_s * now) - math.floor(per_s * (now - interval_s))
    tasks = m.tasks_per_hour * share
    return HeartbeatMetrics(
        latency_p50_ms=round(m.latency_p50, 1),
        latency_p99_ms=round(m.latency_p99, 1),
        error_rate=round(m.error_rate, 4),
        tool_calls=tool_calls,
        task_completion_rate=round(m.task_completion_rate, 4),
        retries=round(tool_calls * m.error_rate),
        escalations=round(tasks * (1.0 - m.task_completion_rate)),
    )


@dataclass(frozen=True, slots=True)
class Burst:
    published: int
    agents: int
    first_id: int | None
    last_id: int | None


class AgentRuntimes:
    """Signing keys, seq counters and the cadence of every heartbeating agent."""

    def __init__(self, state: State, interval_s: float) -> None:
        self.state = state
        self.interval_s = interval_s
        # agent id -> (the public key it was derived or handed for, the signer)
        self._signers: dict[str, tuple[str, Ed25519PrivateKey | None]] = {}
        self._last_seq: dict[str, int] = {}
        self._last_run: float | None = None
        self.sent = 0

    # --- keys ------------------------------------------------------------------------

    def hand_key(self, agent_id: str, private_key: str) -> str:
        """Hold ``agent_id``'s identity key (the agent's runtime now has it); its public key.

        ValueError unless it is an Ed25519 key whose public half is the one on record.
        """
        agent = self.state.agents.get(agent_id)
        if agent is None:
            raise LookupError(f"no agent {agent_id!r}")
        key = load_private_key(private_key)
        public = public_key_hex(key)
        if public != agent.public_key.removeprefix("ed25519:"):
            raise ValueError(
                f"that key's public half {public[:16]}… is not {agent_id}'s identity key on record"
            )
        self.state.identity_keys[agent_id] = private_key.strip()
        self.state.touch("identity_keys", agent_id)
        self._signers.pop(agent_id, None)
        return public

    def signer(self, agent: Agent) -> Ed25519PrivateKey | None:
        cached = self._signers.get(agent.agent_id)
        if cached is not None and cached[0] == agent.public_key:
            return cached[1]
        key: Ed25519PrivateKey | None = None
        handed = self.state.identity_keys.get(agent.agent_id)
        candidates = [load_private_key(handed)] if handed else []
        candidates.append(derived_identity_key(self.state.seed, agent.agent_id))
        for candidate in candidates:
            if public_key_hex(candidate) == agent.public_key.removeprefix("ed25519:"):
                key = candidate
                break
        self._signers[agent.agent_id] = (agent.public_key, key)
        return key

    def has_runtime(self, agent: Agent) -> bool:
        """Seeded, or given its key, and alive (whether it can sign is :meth:`signer`'s)."""
        return agent.profile != DEAD and (
            agent.simulated or agent.agent_id in self.state.identity_keys
        )

    def heartbeating(self, agents: Iterable[Agent] | None = None) -> Iterable[Agent]:
        """Agents with a runtime that can sign (of ``agents``, default all)."""
        for agent in self.state.agents.values() if agents is None else agents:
            if self.has_runtime(agent) and self.signer(agent) is not None:
                yield agent

    # --- heartbeats ------------------------------------------------------------------

    def signed_payload(self, agent: Agent, now: float) -> dict[str, Any]:
        key = self.signer(agent)
        assert key is not None, "heartbeating() yields only agents that can sign"
        seq = max(self._last_seq.get(agent.agent_id, -1) + 1, int(now * 1000))
        self._last_seq[agent.agent_id] = seq
        heartbeat = Heartbeat(
            agent_id=agent.agent_id,
            seq=seq,
            sent_at=round(now, 3),
            interval_s=self.interval_s or 60.0,
            metrics=heartbeat_metrics(agent, now, self.interval_s or 60.0),
        )
        return sign_heartbeat(heartbeat, key)

    def publish(self, agent: Agent, now: float) -> dict[str, Any]:
        event = self.state.publish(EVENT_TYPE, agent.agent_id, self.signed_payload(agent, now), now)
        self.sent += 1
        return event

    def phase(self, agent: Agent) -> float:
        return unit(agent.hash, 30) * self.interval_s

    def due(self, now: float) -> list[Agent]:
        """Agents whose slot in the interval passed since the previous call."""
        last, self._last_run = self._last_run, now
        if self.interval_s <= 0 or last is None:
            return []
        interval = self.interval_s
        out = []
        # The slot first: a key is derived (~0.1-0.5 ms) only when its agent beats, so a
        # big fleet's keys are made over the first interval, not in one stall.
        for agent in self.state.agents.values():
            if not self.has_runtime(agent):
                continue
            phase = self.phase(agent)
            if math.floor((now - phase) / interval) > math.floor((last - phase) / interval):
                if self.signer(agent) is not None:
                    out.append(agent)
        return out

    def beat_due(self, now: float) -> int:
        agents = self.due(now)
        for agent in agents:
            self.publish(agent, now)
        return len(agents)

    def beat_all(self, now: float) -> int:
        """Every heartbeating agent publishes one now (the control API's tick)."""
        agents = list(self.heartbeating())
        for agent in agents:
            self.publish(agent, now)
        return len(agents)

    def sign_burst(
        self, rounds: int, agents: list[Agent], now: float
    ) -> list[tuple[str, dict[str, Any]]]:
        """``rounds`` signed heartbeats of each agent, ready to publish (the slow part)."""
        return [
            (agent.agent_id, self.signed_payload(agent, now))
            for _ in range(rounds)
            for agent in agents
        ]

    def publish_burst(self, signed: list[tuple[str, dict[str, Any]]], now: float) -> Burst:
        first = last = None
        for agent_id, payload in signed:
            event = self.state.publish(EVENT_TYPE, agent_id, payload, now)
            first = first or event["id"]
            last = event["id"]
        self.sent += len(signed)
        return Burst(len(signed), len({a for a, _ in signed}), first, last)

    def pick(self, agents: list[str] | int | None, among: list[Agent]) -> list[Agent]:
        """Named agents (each must be able to sign), or the first N of ``among`` that
        heartbeat (a snapshot of the agents, so this may run off the loop)."""
        if isinstance(agents, list):
            by_id = {a.agent_id: a for a in among}
            picked = []
            for agent_id in agents:
                agent = by_id.get(agent_id)
                if agent is None:
                    raise LookupError(f"no agent {agent_id!r}")
                if self.signer(agent) is None:
                    raise ValueError(f"the sandbox holds no identity key of {agent_id}")
                picked.append(agent)
            return picked
        out: list[Agent] = []
        for agent in self.heartbeating(among):
            if agents is not None and len(out) >= agents:
                break
            out.append(agent)
        return out
