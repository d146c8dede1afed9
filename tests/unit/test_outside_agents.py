"""Outside agents (marketplace services) as routing candidates: the policy, filtering,
the discovery cache and the picker's rules for them (fakeredis)."""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from config.policy import ConfigError, OutsideAgentsPolicy, RoutingPolicy, load_policy
from fleet.hotstate import inflight_key
from fleet.routing import Candidate
from fleet.work.outside import (
    DiscoveryCache,
    OutsideDirectory,
    eligible_services,
    trust_reputation,
)
from fleet.work.selection import Listed, Picker, outside_candidates

DEFAULT = Path(__file__).resolve().parents[2] / "config" / "defaults" / "policy.yaml"


def _svc(sid: str, **over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": sid,
        "provider_id": f"ext-{sid}",
        "endpoint": f"http://outside.example/a2a/{sid}",
        "tags": ["translate"],
        "tools": [],
        "pricing": {"model": "per_call", "cost": "0.05"},
        "trust_score": 0.9,
    }
    return {**base, **over}


def test_outside_agents_are_off_by_default_and_bad_settings_are_refused(tmp_path: Path) -> None:
    policy = load_policy(DEFAULT).routing.outside
    assert policy.allowed is False and policy.discovery == "search_services"
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        f"extends: {DEFAULT}\nrouting:\n  outside:\n    discovery: ask_around\n"
        "    min_trust_score: 3\n    cache_ttl_s: 0\n"
    )
    with pytest.raises(ConfigError) as err:
        load_policy(bad)
    text = str(err.value)
    assert "discovery" in text and "min_trust_score" in text and "cache_ttl_s" in text


def test_only_services_covering_the_capabilities_not_ours_with_an_endpoint_qualify() -> None:
    policy = OutsideAgentsPolicy(allowed=True, min_trust_score=0.5, max_cost_per_call="0.50")
    services = [
        _svc("ok"),
        _svc("by-tool", tags=[], tools=[{"name": "translate"}, "summarise"]),
        _svc("partial", tags=["translate"]),  # lacks "legal" when both are needed
        _svc("ours", provider_id="own-1"),
        _svc("no-endpoint", endpoint=""),
        _svc("not-http", endpoint="ftp://x"),
        _svc("untrusted", trust_score=0.2),
        _svc("no-trust", trust_score=None),
        _svc("dear", pricing={"cost": "2.00"}),
        _svc("inactive", status="inactive"),
        {"name": "no id"},
    ]
    got = eligible_services(services, ["translate"], policy, own_agents={"own-1"})
    assert sorted(s.service_id for s in got) == ["by-tool", "ok", "partial"]
    both = eligible_services(
        [_svc("both", tags=["translate", "legal"]), _svc("one")],
        ["translate", "legal"],
        policy,
        own_agents=(),
    )
    assert [s.service_id for s in both] == ["both"]
    assert both[0].agent_id == "ext-both" and both[0].cost == Decimal("0.05")


def test_trust_scores_map_to_reputation_on_either_scale() -> None:
    assert trust_reputation(0.8) == 0.8
    assert trust_reputation(80) == 0.8
    assert trust_reputation(None) is None
    assert trust_reputation(-1) == 0.0


def test_discovery_is_cached_per_capability_set_until_its_ttl() -> None:
    r = fakeredis.FakeRedis(decode_responses=True)
    policy = OutsideAgentsPolicy(allowed=True, cache_ttl_s=60)
    calls: list[list[str]] = []

    def discover(caps: Collection[str]) -> list[Mapping[str, Any]]:
        calls.append(sorted(caps))
        return [_svc("a", tags=["translate", "legal"])]

    directory = OutsideDirectory(DiscoveryCache(r, policy), discover, policy)
    first, called = directory.services({"translate"}, ())
    assert called and [s.service_id for s in first] == ["a"]
    again, called = directory.services(["translate"], ())
    assert not called and again == first
    _, called = directory.services({"translate", "legal"}, ())
    assert called and calls == [["translate"], ["legal", "translate"]]
    # One of our own agents by now: served from the cache, but not as an outside agent.
    mine, called = directory.services({"translate"}, {"ext-a"})
    assert not called and mine == []
    # The TTL is set in Redis (shared by every worker), then the next call discovers again.
    keys = r.keys("fleet:outside:discovery:*")
    assert len(keys) == 2 and all(0 < r.pttl(k) <= 60_000 for k in keys)
    r.flushall()
    _, called = directory.services({"translate"}, ())
    assert called and len(calls) == 3


def test_an_unreadable_cache_entry_means_discovering_again() -> None:
    r = fakeredis.FakeRedis(decode_responses=True)
    policy = OutsideAgentsPolicy(allowed=True)
    cache = DiscoveryCache(r, policy)
    cache.put({"x"}, [])
    (key,) = r.keys("*")
    r.set(key, "not json")
    assert cache.get({"x"}) is None


def _own(agent_id: str, caps: frozenset[str]) -> tuple[Listed, Candidate]:
    return (
        Listed(agent_id, "f", Decimal(1), caps, None),
        Candidate(agent_id, Decimal(1), reputation=0.9, in_flight=0, sla_compliant=True),
    )


def test_outside_candidates_score_without_headroom_or_sla_and_obey_the_inflight_cap() -> None:
    r = fakeredis.FakeRedis(decode_responses=True)
    policy = OutsideAgentsPolicy(allowed=True, max_inflight_per_agent=2)
    (svc,) = eligible_services([_svc("s1")], ["translate"], policy, ())
    r.set(inflight_key("ext-s1"), 1)
    ((listed, cand),) = outside_candidates([svc], "f", r)
    assert listed.outside and listed.service_id == "s1" and listed.a2a_url == svc.endpoint
    assert cand.balance is None and cand.sla_margin_pct == 0.0 and cand.in_flight == 1
    assert cand.reputation == 0.9
    routing = RoutingPolicy(outside=policy)
    picker = Picker([], routing, exclude_breached=True, rng=random.Random(1))
    picker.add_outside([(listed, cand)])
    assert picker.pick(["translate"]) == listed  # in flight 1 -> 2
    assert picker.pick(["translate"]) is None  # at the cap of 2


def test_an_outside_agent_never_outscores_an_equal_own_agent() -> None:
    r = fakeredis.FakeRedis(decode_responses=True)
    policy = OutsideAgentsPolicy(allowed=True, max_inflight_per_agent=10_000)
    routing = RoutingPolicy(outside=policy)
    (svc,) = eligible_services([_svc("s1")], ["translate"], policy, ())
    own = _own("own-1", frozenset({"translate"}))
    picker = Picker([own], routing, exclude_breached=True, rng=random.Random(7))
    picker.add_outside(outside_candidates([svc], "f", r))
    # The same id as one of ours is ours.
    picker.add_outside([(Listed("own-1", "f", Decimal(1), frozenset(), "http://x"), own[1])])
    assert picker.own_agents == {"own-1"}
    counts = {"own-1": 0, "ext-s1": 0}
    for _ in range(2000):
        chosen = picker.pick(["translate"])
        assert chosen is not None
        counts[chosen.agent_id] += 1
    assert counts["ext-s1"] < counts["own-1"]
