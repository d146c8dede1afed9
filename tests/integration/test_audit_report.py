"""The compliance report for a fleet whose agents exist at the sandbox.

The gateway (1.4.8) has no compliance report to merge (real-gateway.md: none;
its admin audit log is empty), so the report is ours alone and says the
gateway was not asked.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy.orm import Session

from config.settings import load_settings
from fleet.approvals import Approvals
from fleet.audit.compliance import produce_report
from fleet.audit.events import AuditEvent, build_event
from fleet.audit.log import AuditLog
from fleet.storage.db import create_db_engine, migrate, session_factory
from fleet.storage.records import Agent, AgentStatus

pytestmark = pytest.mark.integration


def test_report_gives_our_evidence_per_article_for_agents_at_the_gateway(
    sandbox: Any, tmp_path: Path
) -> None:
    prefix = f"r{uuid.uuid4().hex[:6]}"
    agent_ids = [a["agent_id"] for a in sandbox.seed(2, prefix=prefix)["agents"]]
    assert all(sandbox.agent(a)["wallet"] is not None for a in agent_ids)
    settings = load_settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'fleet.db'}")
    engine = create_db_engine(settings.sqlalchemy_url)
    migrate(engine)
    now = datetime.now(UTC)
    with Session(engine) as session, session.begin():
        for agent_id in agent_ids:
            session.add(
                Agent(
                    agent_id=agent_id,
                    fleet="reported",
                    environment="test",
                    id_prefix=prefix,
                    tier="starter",
                    capabilities=["support"],
                    sla_template="standard-support",
                    status=AgentStatus.ACTIVE,
                    steps_done=[],
                    extra={},
                    created_at=now,
                    updated_at=now,
                )
            )
    log = AuditLog.from_settings(settings, engine=engine)
    log.append(
        [
            build_event(actor="t", action="provision_agent", subject=a, fleet="reported")
            for a in agent_ids
        ]
    )
    # A signed checkpoint over them, not yet published to the gateway's event bus.
    assert log.checkpoint() is not None

    def emit(events: Sequence[AuditEvent]) -> None:
        log.append(events)

    approvals = Approvals(
        session_factory(engine), settings.policy.approvals, clock=log.clock, emit=emit
    )
    try:
        report, json_path, html_path = produce_report(
            settings, log, approvals, "reported", "30d", None
        )
    finally:
        engine.dispose()
    assert report["gateway"] == {"error": "not asked"}
    assert sorted(report["articles"]) == ["11", "12", "13", "14", "15", "9"]
    for section in report["articles"].values():
        assert section["gateway"] == {} and "evidence" in section["ours"]
    assert report["articles"]["12"]["ours"]["evidence"]["agents_audited"] == 2
    assert report["articles"]["12"]["ours"]["evidence"]["mirror_pending"] == 1
    assert orjson.loads(json_path.read_bytes())["fleet"] == "reported"
    assert "Art. 12" in html_path.read_text()
