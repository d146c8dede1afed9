"""Fleet manifests: every problem found before any gateway call, named by path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from config.settings import load_settings
from fleet.provisioning.manifest import (
    ManifestError,
    agent_id,
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
        "tier": "standard",
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
