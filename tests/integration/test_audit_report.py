"""The compliance report end to end: a signed audit log and the agents table in SQLite, the
report produced from them alone, written as JSON and HTML."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from config.settings import Settings, load_settings
from fleet.approvals import Approvals
from fleet.audit.compliance import EVIDENCE_SOURCE, produce_report
from fleet.audit.events import AuditEvent, build_event
from fleet.audit.log import AuditLog
from fleet.storage.db import create_db_engine, migrate, session_factory
from fleet.storage.records import Agent, AgentStatus
from tests.support.trust import trusted

pytestmark = pytest.mark.integration

AUDITED = ["rpt0-0000-aaaaaaaa", "rpt0-0001-aaaaaaaa"]
SILENT = "rpt0-0002-aaaaaaaa"  # in the fleet, but nothing recorded about it
ELSEWHERE = "oth0-0000-aaaaaaaa"  # another fleet's agent


@pytest.fixture
def stored(tmp_path: Path) -> Iterator[tuple[Settings, Engine]]:
    settings = trusted(
        load_settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'fleet.db'}")
    )
    engine = create_db_engine(settings.sqlalchemy_url)
    migrate(engine)
    now = datetime.now(UTC)
    with Session(engine) as session, session.begin():
        for agent_id, fleet, tier in (
            (AUDITED[0], "reported", "starter"),
            (AUDITED[1], "reported", "pro"),
            (SILENT, "reported", "starter"),
            (ELSEWHERE, "other", "starter"),
        ):
            session.add(
                Agent(
                    agent_id=agent_id,
                    fleet=fleet,
                    environment="test",
                    id_prefix=agent_id[:4],
                    tier=tier,
                    capabilities=["support"],
                    sla_template="standard-support",
                    status=AgentStatus.ACTIVE,
                    steps_done=[],
                    extra={},
                    created_at=now,
                    updated_at=now,
                )
            )
    yield settings, engine
    engine.dispose()


def test_report_is_built_from_our_audit_log_and_agents_and_written_as_json_and_html(
    stored: tuple[Settings, Engine],
) -> None:
    settings, engine = stored
    log = AuditLog.from_settings(settings, engine=engine)

    def record(events: Sequence[AuditEvent]) -> None:
        log.append(events)

    approvals = Approvals(
        session_factory(engine), settings.policy.approvals, clock=log.clock, emit=record
    )
    log.append(
        [
            *(
                build_event(actor="t", action="provision_agent", subject=a, fleet="reported")
                for a in AUDITED
            ),
            # HIGH in the risk matrix, recorded without an approval.
            build_event(actor="t", action="transfer_funds", subject=AUDITED[0]),
            build_event(actor="t", action="send_message", subject=AUDITED[1], details={}),
            build_event(actor="t", action="restart_agent", subject=ELSEWHERE, fleet="other"),
        ]
    )
    log.checkpoint()
    rid = approvals.request("change_sla", AUDITED[1], "alice", fleet="reported").request_id
    assert rid is not None
    approvals.approve(rid, "bob")
    log.checkpoint()

    report, json_path, html_path = produce_report(settings, log, approvals, "reported", "30d")

    assert report["fleet"] == "reported" and report["period"] == "30d"
    assert report["evidence_source"] == EVIDENCE_SOURCE
    assert "gateway" not in report
    articles = report["articles"]
    assert sorted(articles, key=int) == ["9", "11", "12", "13", "14", "15"]
    for section in articles.values():
        assert set(section) == {"article", "title", "status", "evidence", "findings"}
        assert section["status"] == ("findings" if section["findings"] else "compliant")

    assert articles["9"]["findings"] == ["1 HIGH/CRITICAL actions recorded without an approval"]
    art11 = articles["11"]["evidence"]
    assert art11["agents"] == 3 and art11["agents_by_tier"] == {"starter": 2, "pro": 1}
    assert art11["policy_sha256"] is not None
    art12 = articles["12"]["evidence"]
    assert art12["chain"]["ok"] and art12["chain"]["entries"] >= 5
    assert art12["agents_audited"] == 2
    assert articles["12"]["findings"] == ["1 agents without an audit entry in the period"]
    # Four of the fleet's own entries (the other fleet's restart is left out), then the
    # request, the vote and the grant the approval recorded.
    assert art12["entries_in_period"] == 4 + 3
    assert "restart_agent" not in art12["actions"]
    assert art12["mirror_pending"] == 2, "both signed checkpoints still wait for the bus"
    assert articles["13"]["evidence"]["messages_recorded"] == 1
    assert articles["13"]["findings"] == ["1 messages without an AI disclosure"]
    art14 = articles["14"]["evidence"]
    assert (art14["requests"], art14["approved"], art14["expired"]) == (1, 1, 0)
    assert art14["distinct_approvers"] == ["bob"]
    assert articles["14"]["status"] == "compliant" and articles["15"]["status"] == "compliant"
    assert report["compliant"] is False

    assert json_path.parent == html_path.parent == log.files.report_dir
    assert json_path.name == "compliance-reported-30d.json"
    assert orjson.loads(json_path.read_bytes()) == report
    page = html_path.read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>")
    assert all(f"Art. {n} " in page for n in (9, 11, 12, 13, 14, 15))
    assert page.count("offers no compliance report") == 1
    assert "1 messages without an AI disclosure" in page
