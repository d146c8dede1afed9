"""SLA contracts: terms from the policy's templates, and the contracts recorded at provisioning.

Templates are validated when the policy is loaded (``config.policy.SlaTerms``),
and a manifest naming an unknown template is refused at validation; a contract
is created at provisioning from its template and kept in ``sla_contracts``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from config.policy import Policy
from fleet.storage.records import SlaContract


class UnknownTemplate(KeyError):
    pass


@dataclass(frozen=True)
class Contract:
    sla_id: str | None  # None: no contract recorded; the template's terms stand in
    template: str
    terms: Mapping[str, Any]


def template_terms(policy: Policy, template: str) -> dict[str, Any]:
    """A template's terms as create_sla takes them (money and percentages as strings)."""
    try:
        return policy.sla_templates[template].model_dump(mode="json")
    except KeyError:
        raise UnknownTemplate(
            f"unknown SLA template {template!r} (expected one of {', '.join(policy.sla_templates)})"
        ) from None


def templates(policy: Policy) -> dict[str, dict[str, Any]]:
    return {name: template_terms(policy, name) for name in policy.sla_templates}


def active_contracts(session: Session, agent_ids: Iterable[str]) -> dict[str, Contract]:
    """Each agent's current contract (the newest one not ended)."""
    ids = list(agent_ids)
    out: dict[str, Contract] = {}
    for start in range(0, len(ids), 500):
        rows = session.scalars(
            select(SlaContract)
            .where(
                SlaContract.agent_id.in_(ids[start : start + 500]), SlaContract.ended_at.is_(None)
            )
            .order_by(SlaContract.created_at)
        ).all()
        for row in rows:  # newest last, so it wins
            out[row.agent_id] = Contract(row.sla_id, row.template, dict(row.terms or {}))
    return out


def contract_for(policy: Policy, template: str, recorded: Contract | None) -> Contract:
    if recorded is not None:
        return recorded
    try:
        return Contract(None, template, template_terms(policy, template))
    except UnknownTemplate:
        return Contract(None, template, {})
