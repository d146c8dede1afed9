"""Fleet manifests: the declarative, version-controlled description of a fleet.

A manifest is validated completely before any gateway call. Every problem is
reported with its path (``agents[1].sla_template: unknown template 'gold'``),
all of them at once, so a user fixes a manifest in one pass.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

from config.policy import Policy

Money = Annotated[Decimal, Field(ge=0, max_digits=14, decimal_places=2)]
Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,47}$")]


class ManifestError(ValueError):
    """A manifest is invalid; ``problems`` lists every problem with its path."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class TrustClaim(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    value: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    issuer: str | None = None


class AgentGroup(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id_prefix: Slug
    count: Annotated[int, Field(ge=1)]
    tier: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]
    initial_balance: Money
    capabilities: Annotated[
        list[Annotated[str, StringConstraints(min_length=1, max_length=64)]], Field(min_length=1)
    ]
    trust_claims: list[TrustClaim] = []
    sla_template: str
    # Marketplace pricing, e.g. {"per_task": "0.02"}; amounts are decimal strings.
    pricing: dict[str, Money] = {}
    seed_reputation: bool = True

    @field_validator("initial_balance", mode="before")
    @classmethod
    def _money_not_float(cls, value: Any) -> Any:
        if isinstance(value, float):
            raise ValueError('money must be a decimal string like "50.00", not a float')
        return value

    @field_validator("pricing", mode="before")
    @classmethod
    def _prices_not_float(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for name, amount in value.items():
                if isinstance(amount, float):
                    raise ValueError(f"{name}: money must be a decimal string, not a float")
        return value


class FleetManifest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={"title": "Fleet Commander fleet manifest"},
    )

    fleet: Slug
    environment: Literal["development", "staging", "production", "demo", "test"]
    agents: Annotated[list[AgentGroup], Field(min_length=1)]

    @property
    def total_agents(self) -> int:
        return sum(group.count for group in self.agents)


@dataclass(frozen=True, slots=True)
class PlannedAgent:
    agent_id: str
    index: int
    group: AgentGroup


def agent_id(fleet: str, environment: str, prefix: str, index: int) -> str:
    """`{prefix}-{index:04d}-{8 hex}`, derived, so a re-run finds the agents it made."""
    digest = hashlib.sha256(f"{fleet}/{environment}/{prefix}/{index}".encode()).hexdigest()[:8]
    return f"{prefix}-{index:04d}-{digest}"


def plan_agents(manifest: FleetManifest) -> Iterator[PlannedAgent]:
    for group in manifest.agents:
        for index in range(1, group.count + 1):
            yield PlannedAgent(
                agent_id(manifest.fleet, manifest.environment, group.id_prefix, index), index, group
            )


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out or "(manifest)"


def _schema_problems(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors(include_url=False):
        msg = err["msg"]
        msg = re.sub(r"^Value error, ", "", msg)
        if err["type"] == "string_pattern_mismatch" and err["loc"][-1] in ("id_prefix", "fleet"):
            msg = "must be lowercase letters, digits and '-' (at most 48), starting with a letter or digit"
        problems.append(f"{_path(err['loc'])}: {msg}")
    return problems


def validate_manifest(data: Any, policy: Policy) -> FleetManifest:
    """Validate a parsed manifest against the schema and the policy, or raise ManifestError."""
    if not isinstance(data, dict):
        raise ManifestError(
            [
                f"(manifest): expected a mapping with fleet, environment and agents, got {type(data).__name__}"
            ]
        )
    manifest, problems = None, []
    try:
        manifest = FleetManifest.model_validate(data)
    except ValidationError as exc:
        problems = _schema_problems(exc)
    # Policy checks read the raw data, so they run even where the schema failed.
    problems += _policy_problems(data, policy)
    if problems or manifest is None:
        raise ManifestError(problems)
    return manifest


def _policy_problems(data: dict[str, Any], policy: Policy) -> list[str]:
    groups = data.get("agents")
    if not isinstance(groups, list):
        return []
    problems = []
    seen: dict[str, int] = {}
    total = 0
    for i, group in enumerate(groups):
        if not isinstance(group, dict):
            continue
        template = group.get("sla_template")
        if isinstance(template, str) and template not in policy.sla_templates:
            known = ", ".join(sorted(policy.sla_templates))
            problems.append(
                f"agents[{i}].sla_template: unknown template '{template}' (known: {known})"
            )
        tier = group.get("tier")
        if isinstance(tier, str) and tier not in policy.provisioning.tiers:
            problems.append(
                f"agents[{i}].tier: unknown tier '{tier}' (known: {', '.join(policy.provisioning.tiers)})"
            )
        prefix = group.get("id_prefix")
        if isinstance(prefix, str):
            if prefix in seen:
                problems.append(
                    f"agents[{i}].id_prefix: duplicate prefix '{prefix}' (also agents[{seen[prefix]}])"
                )
            seen.setdefault(prefix, i)
        count = group.get("count")
        if isinstance(count, int) and count > 0:
            total += count
    ceiling = policy.provisioning.max_agents_per_manifest
    if total > ceiling:
        problems.append(
            f"agents: {total} agents in all, over the ceiling of {ceiling} per manifest"
        )
    return problems


def parse_manifest_text(text: str, policy: Policy) -> FleetManifest:
    """Parse YAML (JSON is YAML too) and validate."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ManifestError(
            [f"(manifest): not valid YAML{where}: {getattr(exc, 'problem', None) or exc}"]
        ) from None
    return validate_manifest(data, policy)


def manifest_digest(manifest: FleetManifest) -> str:
    return hashlib.sha256(manifest.model_dump_json().encode()).hexdigest()


def manifest_json_schema() -> dict[str, Any]:
    return FleetManifest.model_json_schema()
