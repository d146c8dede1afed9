"""Fleet manifests: the declarative, version-controlled description of a fleet.

A manifest is validated completely before any gateway call. Every problem is
reported with its path (``agents[1].sla_template: unknown template 'gold'``),
all of them at once, so a user fixes a manifest in one pass.

Two shapes are accepted: the flat one (``fleet: <name>``, ``environment``,
``agents``) and the playbook's nested one (``fleet: {name, environment,
agents}``). Both become the same :class:`FleetManifest`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    field_validator,
)

from config.policy import Policy

# Published as decimal text: a JSON number is accepted too, but a float's binary value
# is not the amount it was written as (see _refuse_float).
MONEY_PATTERN = r"^\d{1,12}(\.\d{1,2})?$"
Money = Annotated[
    Decimal,
    Field(ge=0, max_digits=14, decimal_places=2),
    WithJsonSchema({"type": "string", "pattern": MONEY_PATTERN, "examples": ["50.00"]}),
]
Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,47}$")]
Environment = Literal["development", "staging", "production", "demo", "test"]

# The gateway's key tiers (real gateway 1.4.8); no other tier exists there.
GATEWAY_TIERS = ("free", "starter", "pro", "enterprise")
GatewayTier = Literal["free", "starter", "pro", "enterprise"]

# The gateway's agent-id pattern; path routes and wallet models refuse any other id.
AGENT_ID_PATTERN = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,127}$")
ID_PREFIX_PATTERN = r"^[a-zA-Z0-9][a-zA-Z0-9._-]*$"
IdPrefix = Annotated[str, StringConstraints(pattern=ID_PREFIX_PATTERN)]


# Every list in a manifest is bounded: a manifest is a few groups, not a payload.
MAX_GROUPS = 200
MAX_LIST_ITEMS = 100
# YAML nodes one manifest may hold (aliases are refused, so this bounds its expansion too).
MAX_YAML_NODES = 100_000


class ManifestError(ValueError):
    """A manifest is invalid; ``problems`` lists every problem with its path."""

    def __init__(self, problems: list[str], *, conflicts_with_policy: bool = False) -> None:
        self.problems = problems
        # Well-formed (the schema holds) but not acceptable here: an unknown SLA
        # template, a tier the policy forbids, a duplicate prefix, over the ceiling.
        self.conflicts_with_policy = conflicts_with_policy
        super().__init__("; ".join(problems))


class TrustClaim(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    value: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    issuer: str | None = None


ClaimName = Annotated[str, StringConstraints(min_length=1, max_length=256)]
# A claim written as a plain string (the playbook's form) is a claim of type "claim".
NAMED_CLAIM_TYPE = "claim"


def _claim_from_name(value: Any) -> Any:
    if isinstance(value, str):
        if not value or len(value) > 256:
            raise ValueError("a claim written as a string must have 1 to 256 characters")
        return {"type": NAMED_CLAIM_TYPE, "value": value}
    if not isinstance(value, dict):
        raise ValueError("a claim is a string or a mapping with type, value and issuer")
    return value


ClaimEntry = Annotated[
    TrustClaim, BeforeValidator(_claim_from_name, json_schema_input_type=ClaimName | TrustClaim)
]


def _refuse_float(value: Any, what: str) -> None:
    # A float has already lost the amount's text; only its decimal text is exact.
    if isinstance(value, float):
        raise ValueError(
            f'{what}must be a decimal string like "50.00" or a YAML number, not a float'
        )


class AgentGroup(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id_prefix: IdPrefix
    count: Annotated[int, Field(ge=1)]
    tier: GatewayTier
    initial_balance: Money
    capabilities: Annotated[
        list[Annotated[str, StringConstraints(min_length=1, max_length=64)]],
        Field(min_length=1, max_length=MAX_LIST_ITEMS),
    ]
    trust_claims: Annotated[list[ClaimEntry], Field(max_length=MAX_LIST_ITEMS)] = []
    sla_template: str
    # Marketplace pricing, e.g. {"per_task": "0.02"}.
    pricing: Annotated[dict[str, Money], Field(max_length=MAX_LIST_ITEMS)] = {}
    seed_reputation: bool = True

    @field_validator("initial_balance", mode="before")
    @classmethod
    def _money_not_float(cls, value: Any) -> Any:
        _refuse_float(value, "")
        return value

    @field_validator("pricing", mode="before")
    @classmethod
    def _prices_not_float(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for name, amount in value.items():
                _refuse_float(amount, f"{name}: ")
        return value


Groups = Annotated[list[AgentGroup], Field(min_length=1, max_length=MAX_GROUPS)]


class FleetManifest(BaseModel):
    """The flat shape, and the one every other module works with."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={"title": "Fleet manifest (flat form)"},
    )

    fleet: Slug
    environment: Environment
    agents: Groups

    @property
    def total_agents(self) -> int:
        return sum(group.count for group in self.agents)


class FleetSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Slug
    environment: Environment
    agents: Groups


class PlaybookManifest(BaseModel):
    """The playbook's nested shape: ``fleet: {name, environment, agents}``."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={"title": "Fleet manifest (nested form)"},
    )

    fleet: FleetSection

    def flat(self) -> FleetManifest:
        return FleetManifest(
            fleet=self.fleet.name, environment=self.fleet.environment, agents=self.fleet.agents
        )


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


_PATTERN_MESSAGES = {
    "id_prefix": "must be letters, digits, '.', '_' and '-', starting with a letter or digit "
    "(the gateway's agent-id pattern)",
    "fleet": "must be lowercase letters, digits and '-' (at most 48), "
    "starting with a letter or digit",
}
_PATTERN_MESSAGES["name"] = _PATTERN_MESSAGES["fleet"]


def _schema_problems(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors(include_url=False):
        msg = err["msg"]
        msg = re.sub(r"^Value error, ", "", msg)
        loc = err["loc"]
        if err["type"] == "string_pattern_mismatch" and loc[-1] in _PATTERN_MESSAGES:
            msg = _PATTERN_MESSAGES[str(loc[-1])]
        if err["type"] == "literal_error" and loc[-1] == "tier":
            msg = f"unknown tier {err['input']!r} (the gateway's tiers: {', '.join(GATEWAY_TIERS)})"
        problems.append(f"{_path(loc)}: {msg}")
    return problems


def validate_manifest(data: Any, policy: Policy) -> FleetManifest:
    """Validate a parsed manifest (flat or nested) against the schema and the policy.

    Raises ManifestError listing every problem, each with its path in the shape given.
    """
    if not isinstance(data, dict):
        raise ManifestError(
            [
                "(manifest): expected a mapping with fleet, environment and agents, "
                f"got {type(data).__name__}"
            ]
        )
    nested = isinstance(data.get("fleet"), dict)
    model: type[FleetManifest] | type[PlaybookManifest] = (
        PlaybookManifest if nested else FleetManifest
    )
    manifest, problems = None, []
    try:
        manifest = model.model_validate(data)
    except ValidationError as exc:
        problems = _schema_problems(exc)
    # Policy checks read the raw data, so they run even where the schema failed.
    if nested:
        problems += _group_problems(data["fleet"].get("agents"), "fleet.agents", policy)
    else:
        problems += _group_problems(data.get("agents"), "agents", policy)
    if problems or manifest is None:
        raise ManifestError(problems, conflicts_with_policy=manifest is not None)
    return manifest.flat() if isinstance(manifest, PlaybookManifest) else manifest


def _longest_agent_id(prefix: str, count: int) -> str:
    # The index grows past four digits for big groups; the digest is always 8 hex.
    return agent_id("", "", prefix, count)


def _group_problems(groups: Any, where: str, policy: Policy) -> list[str]:
    if not isinstance(groups, list):
        return []
    problems = []
    seen: dict[str, int] = {}
    total = 0
    for i, group in enumerate(groups):
        if not isinstance(group, dict):
            continue
        at = f"{where}[{i}]"
        template = group.get("sla_template")
        if isinstance(template, str) and template not in policy.sla_templates:
            known = ", ".join(sorted(policy.sla_templates))
            problems.append(f"{at}.sla_template: unknown template '{template}' (known: {known})")
        tier = group.get("tier")
        if tier in GATEWAY_TIERS and tier not in policy.provisioning.tiers:
            allowed = ", ".join(policy.provisioning.tiers)
            problems.append(f"{at}.tier: tier '{tier}' is not allowed by policy ({allowed})")
        prefix = group.get("id_prefix")
        count = group.get("count")
        if isinstance(prefix, str):
            if prefix in seen:
                problems.append(
                    f"{at}.id_prefix: duplicate prefix '{prefix}' (also {where}[{seen[prefix]}])"
                )
            seen.setdefault(prefix, i)
            longest = _longest_agent_id(prefix, count if isinstance(count, int) else 1)
            if re.fullmatch(ID_PREFIX_PATTERN, prefix) and not (
                AGENT_ID_PATTERN.fullmatch(longest)
            ):
                problems.append(
                    f"{at}.id_prefix: too long: the agent ids made from it "
                    f"({len(longest)} characters, e.g. '{longest}') exceed the gateway's "
                    "128-character limit"
                )
        if isinstance(count, int) and count > 0:
            total += count
    ceiling = policy.provisioning.max_agents_per_manifest
    if total > ceiling:
        problems.append(
            f"{where}: {total} agents in all, over the ceiling of {ceiling} per manifest"
        )
    return problems


class _ExactLoader(yaml.SafeLoader):
    """A safe loader whose YAML floats are Decimals read from the scalar's own text.

    Aliases are refused: ``*name`` repeats a node without repeating its text,
    so a few kilobytes of anchors expand into megabytes ("billion laughs").
    Anchors alone are harmless and accepted.
    """

    _nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.events.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not accepted in a manifest", event.start_mark
            )
        self._nodes += 1
        if self._nodes > MAX_YAML_NODES:
            raise yaml.composer.ComposerError(
                None,
                None,
                f"more than {MAX_YAML_NODES} YAML nodes",
                self.peek_event().start_mark,  # type: ignore[no-untyped-call]
            )
        return super().compose_node(parent, index)


def _exact_decimal(loader: yaml.SafeLoader, node: yaml.Node) -> Decimal:
    assert isinstance(node, yaml.ScalarNode)
    text = loader.construct_scalar(node).replace("_", "")
    try:
        value = Decimal(text)
    except InvalidOperation:
        value = None
    if value is None or not value.is_finite():
        raise yaml.constructor.ConstructorError(
            None, None, f"{node.value!r} is not a finite decimal number", node.start_mark
        )
    return value


_ExactLoader.add_constructor("tag:yaml.org,2002:float", _exact_decimal)


def load_manifest_yaml(text: str) -> Any:
    """Parse YAML (JSON is YAML too); every float comes back as an exact Decimal.

    Raises ManifestError naming the line and column of a syntax error.
    """
    try:
        return yaml.load(text, Loader=_ExactLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ManifestError(
            [f"(manifest): not valid YAML{where}: {getattr(exc, 'problem', None) or exc}"]
        ) from None


def parse_manifest_text(text: str, policy: Policy) -> FleetManifest:
    """Parse YAML and validate."""
    return validate_manifest(load_manifest_yaml(text), policy)


def manifest_digest(manifest: FleetManifest) -> str:
    return hashlib.sha256(manifest.model_dump_json().encode()).hexdigest()


def manifest_json_schema() -> dict[str, Any]:
    """The JSON Schema of both shapes (published as docs/manifest.schema.json)."""
    schema = TypeAdapter(FleetManifest | PlaybookManifest).json_schema()
    return {"title": "Fleet Commander fleet manifest", **schema}
