"""Fleet rows for integration tests: agents the sandbox seeded, as provisioning leaves them.

The sandbox seeds agents over its control API; these put the matching agent rows and SLA
contracts into the stack's database in bulk, so the sweep, the SLA checks and escalation
find a fleet without running the provisioning pipeline for each agent.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session, sessionmaker

from config.policy import Policy
from fleet.storage.db import engine_for, session_factory, write_connection
from fleet.storage.records import Agent, SlaContract


def sessions_for(database_url: str) -> sessionmaker[Session]:
    return session_factory(engine_for(database_url))


def seeded_ids(seeded: dict[str, Any]) -> list[str]:
    """The agent ids of a ``SandboxControl.seed`` answer."""
    return [str(agent["agent_id"]) for agent in seeded["agents"]]


def insert_agents(
    sessions: sessionmaker[Session],
    agent_ids: Sequence[str],
    *,
    fleet: str,
    policy: Policy,
    template: str = "standard-support",
    status: str = "active",
) -> None:
    """Agent rows and their contracts, in chunks of a thousand."""
    now = datetime.now(UTC)
    terms = policy.sla_templates[template].model_dump(mode="json")
    with write_connection(sessions) as conn:
        for start in range(0, len(agent_ids), 1000):
            chunk = agent_ids[start : start + 1000]
            conn.execute(
                insert(Agent),
                [
                    {
                        "agent_id": a,
                        "fleet": fleet,
                        "environment": "test",
                        "id_prefix": a.split("-")[0],
                        "tier": "starter",
                        "capabilities": ["support"],
                        "sla_template": template,
                        "status": status,
                        "steps_done": [],
                        "traffic_weight": "1",
                        "extra": {},
                        "created_at": now,
                        "updated_at": now,
                    }
                    for a in chunk
                ],
            )
            conn.execute(
                insert(SlaContract),
                [
                    {
                        "sla_id": f"sla-{a}",
                        "agent_id": a,
                        "template": template,
                        "terms": terms,
                        "created_at": now,
                    }
                    for a in chunk
                ],
            )
