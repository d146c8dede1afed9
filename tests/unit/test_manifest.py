"""Fleet manifests: every problem found before any gateway call, named by path."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest

from config.settings import load_settings
from fleet.provisioning.manifest import (
    AGENT_ID_PATTERN,
    ManifestError,
    TrustClaim,
    agent_id,
    load_manifest_yaml,
    manifest_digest,
    manifest_json_schema,
    parse_manifest_text,
    plan_agents,
    validate_manifest,
)

ROOT = Path(__file__).resolve().parents[2]
POLICY = load_settings().policy


def group(**overrides: object) -> dict[str, object]:
    base = {
        "id_prefix": "support",
        "count": 2,
        "tier": "starter",
        "initial_balance": "50.00",
        "capabilities": ["support"],
        "sla_template": "standard-support",
    }
    return {**base, **overrides}


def manifest(*groups: dict[str, object]) -> dict[str, object]:
    return {"fleet": "acme", "environment": "staging", "agents": list(groups) or [group()]}


def problems(data: object) -> list[str]:
    with pytest.raises(ManifestError) as info:
        validate_manifest(data, POLICY)
    return info.value.problems


def test_demo_manifest_is_valid() -> None:
    m = parse_manifest_text((ROOT / "config/manifests/demo.yaml").read_text(), POLICY)
    assert m.total_agents == 10


def test_unknown_template_is_named_by_path() -> None:
    assert problems(manifest(group(), group(id_prefix="b", sla_template="gold")))[0].startswith(
        "agents[1].sla_template: unknown template 'gold'"
    )


def test_every_problem_is_listed_at_once() -> None:
    found = problems(
        manifest(
            group(initial_balance="-5.00"),
            group(count=0),
            group(sla_template="gold"),
        )
    )
    joined = "\n".join(found)
    assert "agents[0].initial_balance" in joined
    assert "agents[1].count" in joined
    assert "agents[2].sla_template: unknown template 'gold'" in joined
    assert "agents[1].id_prefix: duplicate prefix 'support'" in joined


def test_unknown_tier_is_refused() -> None:
    assert problems(manifest(group(tier="platinum")))[0].startswith(
        "agents[0].tier: unknown tier 'platinum'"
    )


def test_float_money_is_refused() -> None:
    assert any("not a float" in p for p in problems(manifest(group(initial_balance=50.5))))


def test_count_over_ceiling() -> None:
    ceiling = POLICY.provisioning.max_agents_per_manifest
    found = problems(manifest(group(count=ceiling), group(id_prefix="b", count=1)))
    assert found == [
        f"agents: {ceiling + 1} agents in all, over the ceiling of {ceiling} per manifest"
    ]


def test_not_yaml_and_not_a_mapping() -> None:
    with pytest.raises(ManifestError, match="not valid YAML at line"):
        parse_manifest_text("fleet: [unclosed\n", POLICY)
    with pytest.raises(ManifestError, match="expected a mapping"):
        parse_manifest_text("- just\n- a list\n", POLICY)


def test_unknown_field_is_refused() -> None:
    assert any(p.startswith("agents[0].colour") for p in problems(manifest(group(colour="blue"))))


def test_agent_ids_are_derived_and_stable() -> None:
    m = validate_manifest(manifest(group(count=3)), POLICY)
    ids = [p.agent_id for p in plan_agents(m)]
    assert ids == [p.agent_id for p in plan_agents(m)]
    assert ids[0] == agent_id("acme", "staging", "support", 1)
    assert ids[2].startswith("support-0003-") and len(ids[2].split("-")[-1]) == 8
    assert len(set(ids)) == 3
    other_env = validate_manifest({**manifest(group(count=3)), "environment": "production"}, POLICY)
    assert not set(ids) & {p.agent_id for p in plan_agents(other_env)}


def test_published_schema_is_current() -> None:
    published = json.loads((ROOT / "docs/manifest.schema.json").read_text())
    assert published == manifest_json_schema(), (
        "regenerate with: fleet manifest-schema > docs/manifest.schema.json"
    )


PLAYBOOK = ROOT / "config/manifests/playbook.yaml"


def nested(*groups: dict[str, object], **fleet: object) -> dict[str, object]:
    section = {"name": "acme", "environment": "staging", "agents": list(groups) or [group()]}
    return {"fleet": {**section, **fleet}}


def test_playbook_manifest_as_printed_is_valid() -> None:
    m = parse_manifest_text(PLAYBOOK.read_text(), POLICY)
    assert (m.fleet, m.environment, m.total_agents) == ("customer-support-fleet", "production", 13)
    triage, escalation = m.agents
    # The YAML numbers keep their text: 50.00, not 50.0.
    assert str(triage.initial_balance) == "50.00"
    assert str(escalation.initial_balance) == "200.00"
    assert triage.trust_claims == [
        TrustClaim(type="claim", value="response-time-p99-under-2s"),
        TrustClaim(type="claim", value="accuracy-above-95"),
    ]
    assert all(AGENT_ID_PATTERN.fullmatch(p.agent_id) for p in plan_agents(m))


def test_fleet_validate_accepts_the_playbook_manifest() -> None:
    fleet = Path(sys.executable).parent / "fleet"
    proc = subprocess.run(
        [str(fleet), "validate", str(PLAYBOOK)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "valid — fleet 'customer-support-fleet' (production), 13 agents in 2 groups" in (
        proc.stdout
    )


def test_yaml_numbers_are_exact_decimals_from_their_text() -> None:
    data = load_manifest_yaml(
        "a: 0.1\nb: 50.00\nc: 1_000.50\nd: 0.1000000000000000055511151231257827\ne: 7\n"
    )
    assert data == {
        "a": Decimal("0.1"),
        "b": Decimal("50.00"),
        "c": Decimal("1000.50"),
        # A float would have rounded this to 0.1.
        "d": Decimal("0.1000000000000000055511151231257827"),
        "e": 7,
    }
    assert all(isinstance(data[k], Decimal) for k in "abcd")
    assert str(data["b"]) == "50.00"


def test_a_yaml_number_that_is_no_decimal_is_refused_with_its_line() -> None:
    with pytest.raises(ManifestError, match=r"line 2, column 4: '\.nan' is not a finite decimal"):
        load_manifest_yaml("a: 1.5\nb: .nan\n")
    with pytest.raises(ManifestError, match="'190:20:30.15' is not a finite decimal"):
        load_manifest_yaml("a: 190:20:30.15\n")


def test_yaml_number_money_in_a_flat_manifest() -> None:
    text = textwrap.dedent("""\
        fleet: acme
        environment: staging
        agents:
          - {id_prefix: a, count: 1, tier: free, initial_balance: 0.1, capabilities: [x],
             sla_template: standard-support, pricing: {per_task: 0.02}}
    """)
    m = parse_manifest_text(text, POLICY)
    assert m.agents[0].initial_balance == Decimal("0.1")
    assert str(m.agents[0].pricing["per_task"]) == "0.02"


def test_nested_and_flat_forms_are_the_same_manifest() -> None:
    flat = validate_manifest(manifest(group(), group(id_prefix="b")), POLICY)
    deep = validate_manifest(nested(group(), group(id_prefix="b")), POLICY)
    assert deep == flat
    assert manifest_digest(deep) == manifest_digest(flat)


def test_nested_problems_are_named_by_their_path_in_the_nested_form() -> None:
    found = problems(
        nested(
            group(tier="platinum"),
            group(id_prefix="b", sla_template="gold"),
            name="Bad Name",
            owner="ops",
        )
    )
    joined = "\n".join(found)
    assert "fleet.agents[0].tier: unknown tier 'platinum'" in joined
    assert "fleet.agents[1].sla_template: unknown template 'gold'" in joined
    assert "fleet.name: must be lowercase letters" in joined
    assert "fleet.owner: Extra inputs are not permitted" in joined


def test_trust_claims_may_be_strings_or_mappings() -> None:
    m = validate_manifest(
        manifest(group(trust_claims=["pii-compliant", {"type": "operator", "value": "acme"}])),
        POLICY,
    )
    assert m.agents[0].trust_claims == [
        TrustClaim(type="claim", value="pii-compliant"),
        TrustClaim(type="operator", value="acme"),
    ]
    found = problems(manifest(group(trust_claims=["", {"type": "operator"}, 5])))
    assert [p.split(":")[0] for p in found] == [
        "agents[0].trust_claims[0]",
        "agents[0].trust_claims[1].value",
        "agents[0].trust_claims[2]",
    ]


def test_tier_must_be_one_of_the_gateways_tiers() -> None:
    assert problems(manifest(group(tier="standard"))) == [
        "agents[0].tier: unknown tier 'standard' (the gateway's tiers: free, starter, pro, "
        "enterprise)"
    ]
    for tier in ("free", "starter", "pro", "enterprise"):
        assert validate_manifest(manifest(group(tier=tier)), POLICY).agents[0].tier == tier


def test_policy_may_allow_fewer_tiers_than_the_gateway() -> None:
    narrow = POLICY.model_copy(
        update={"provisioning": POLICY.provisioning.model_copy(update={"tiers": ["free"]})}
    )
    with pytest.raises(ManifestError) as info:
        validate_manifest(manifest(group(tier="pro")), narrow)
    assert info.value.problems == ["agents[0].tier: tier 'pro' is not allowed by policy (free)"]


def test_id_prefix_takes_the_gateways_characters() -> None:
    m = validate_manifest(manifest(group(id_prefix="CS.triage_v2")), POLICY)
    assert all(AGENT_ID_PATTERN.fullmatch(p.agent_id) for p in plan_agents(m))
    for bad in ("cs triage", "-cs", "cs/triage", "cs-é"):
        assert problems(manifest(group(id_prefix=bad)))[0].startswith(
            "agents[0].id_prefix: must be letters, digits, '.', '_' and '-'"
        ), bad


def test_id_prefix_too_long_for_the_derived_ids_is_refused() -> None:
    # prefix + "-NNNN-" + 8 hex: 114 characters fit 128 while the index has four digits.
    prefix = "p" * 114
    m = validate_manifest(manifest(group(id_prefix=prefix, count=9999)), POLICY)
    assert max(len(p.agent_id) for p in plan_agents(m)) == 128
    found = problems(manifest(group(id_prefix=prefix, count=10000)))
    assert len(found) == 1
    assert found[0].startswith("agents[0].id_prefix: too long: the agent ids made from it (129")
    assert problems(nested(group(id_prefix="q" * 120)))[0].startswith(
        "fleet.agents[0].id_prefix: too long"
    )
