"""Outside agents: marketplace services (not our own agents) as routing candidates.

When ``routing.outside.allowed`` is on, the marketplace is asked (``search_services``,
free, or ``best_match``, 0.10 per call) for services covering a task's capabilities;
the answer is cached in Redis per capability set for ``cache_ttl_s``, so discovery is
not a gateway call per task. A service is a candidate when its tags and tools cover the
capabilities, its provider is not one of our agents, it names an ``endpoint``, its trust
score is at least ``min_trust_score`` and its price per call at most
``max_cost_per_call``. It is scored like our own agents: reputation from the trust
score, no budget headroom, idleness from its in-flight counter, no SLA margin unless
known; it gets nothing once ``max_inflight_per_agent`` of its tasks are in flight.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import redis

from config.policy import OutsideAgentsPolicy

CACHE_PREFIX = "fleet:outside:discovery:"


@dataclass(frozen=True)
class OutsideService:
    """One marketplace service usable as an outside agent."""

    service_id: str
    agent_id: str  # the provider, else the service id
    endpoint: str
    capabilities: frozenset[str]
    trust_score: float | None
    cost: Decimal | None

    def to_json(self) -> dict[str, Any]:
        return {
            "service_id": self.service_id,
            "agent_id": self.agent_id,
            "endpoint": self.endpoint,
            "capabilities": sorted(self.capabilities),
            "trust_score": self.trust_score,
            "cost": str(self.cost) if self.cost is not None else None,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> OutsideService:
        cost = raw.get("cost")
        return cls(
            str(raw["service_id"]),
            str(raw["agent_id"]),
            str(raw["endpoint"]),
            frozenset(str(c) for c in raw.get("capabilities") or ()),
            float(raw["trust_score"]) if raw.get("trust_score") is not None else None,
            Decimal(str(cost)) if cost is not None else None,
        )


def _strings(value: Any) -> list[str]:
    if not isinstance(value, list):
        return []
    return [v for v in value if isinstance(v, str)]


def _tool_names(value: Any) -> list[str]:
    """Tools as the marketplace lists them: names, or objects with a ``name``."""
    if not isinstance(value, list):
        return []
    out = []
    for v in value:
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, dict) and isinstance(v.get("name"), str):
            out.append(v["name"])
    return out


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if number == number and abs(number) != float("inf") else None


def _cost(pricing: Any) -> Decimal | None:
    if not isinstance(pricing, dict) or pricing.get("cost") is None:
        return None
    try:
        cost = Decimal(str(pricing["cost"]))
    except InvalidOperation:
        return None
    return cost if cost.is_finite() else None


def trust_reputation(trust_score: float | None) -> float | None:
    """The routing score's reputation (0..1) from a marketplace trust score (0..1, or a
    percentage when above 1)."""
    if trust_score is None:
        return None
    value = trust_score / 100.0 if trust_score > 1 else trust_score
    return min(max(value, 0.0), 1.0)


def eligible_services(
    services: Iterable[Mapping[str, Any]],
    capabilities: Collection[str],
    policy: OutsideAgentsPolicy,
    own_agents: Collection[str],
) -> list[OutsideService]:
    """The services of a discovery answer that may take a task needing ``capabilities``."""
    need = frozenset(capabilities)
    own = frozenset(own_agents)
    out: dict[str, OutsideService] = {}
    for s in services:
        service_id = s.get("id")
        endpoint = s.get("endpoint")
        if not isinstance(service_id, str) or not service_id:
            continue
        if not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://")):
            continue
        if s.get("status") not in (None, "active"):
            continue
        provider = s.get("provider_id")
        agent_id = provider if isinstance(provider, str) and provider else service_id
        if agent_id in own or service_id in own:
            continue
        covers = frozenset(_strings(s.get("tags"))) | frozenset(_tool_names(s.get("tools")))
        if not need <= covers:
            continue
        trust = _number(s.get("trust_score"))
        reputation = trust_reputation(trust)
        if (reputation or 0.0) < policy.min_trust_score:
            continue
        cost = _cost(s.get("pricing"))
        if cost is not None and cost > policy.max_cost_per_call:
            continue
        out.setdefault(
            service_id, OutsideService(service_id, agent_id, endpoint, covers, trust, cost)
        )
    return list(out.values())


def cache_key(capabilities: Collection[str], policy: OutsideAgentsPolicy) -> str:
    """Per capability set, and per the settings that filtered the answer (a changed policy
    does not reuse an answer filtered under the old one)."""
    caps = ",".join(sorted(frozenset(capabilities)))
    how = f"{policy.discovery}|{policy.min_trust_score}|{policy.max_cost_per_call}"
    digest = hashlib.sha256(f"{how}|{caps}".encode()).hexdigest()[:32]
    return CACHE_PREFIX + digest


class DiscoveryCache:
    """Discovery answers per capability set, in Redis with a TTL (shared by all workers)."""

    def __init__(self, r: redis.Redis, policy: OutsideAgentsPolicy) -> None:
        self._redis = r
        self._policy = policy

    def get(self, capabilities: Collection[str]) -> list[OutsideService] | None:
        raw = self._redis.get(cache_key(capabilities, self._policy))
        if raw is None:
            return None
        try:
            items = json.loads(raw)
            return [OutsideService.from_json(x) for x in items]
        except (ValueError, KeyError, TypeError):
            return None  # unreadable: discover again

    def put(self, capabilities: Collection[str], services: Iterable[OutsideService]) -> None:
        body = json.dumps([s.to_json() for s in services], separators=(",", ":"))
        ttl_ms = max(int(self._policy.cache_ttl_s * 1000), 1)
        self._redis.set(cache_key(capabilities, self._policy), body, px=ttl_ms)


# Asks the marketplace for services matching capabilities (the gateway call); returns the
# raw service objects.
Discover = Callable[[Collection[str]], list[Mapping[str, Any]]]


class OutsideDirectory:
    """Outside candidates for a capability set: from the cache, else one discovery call."""

    def __init__(
        self, cache: DiscoveryCache, discover: Discover, policy: OutsideAgentsPolicy
    ) -> None:
        self._cache = cache
        self._discover = discover
        self._policy = policy

    def services(
        self, capabilities: Collection[str], own_agents: Collection[str]
    ) -> tuple[list[OutsideService], bool]:
        """The eligible services, and whether a discovery call was made for them."""
        cached = self._cache.get(capabilities)
        if cached is not None:
            own = frozenset(own_agents)
            return [s for s in cached if s.agent_id not in own], False
        found = eligible_services(
            self._discover(capabilities), capabilities, self._policy, own_agents
        )
        self._cache.put(capabilities, found)
        return found, True
