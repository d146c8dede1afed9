"""The compliance report: our own evidence and findings per article, as JSON and HTML."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from sqlalchemy.orm import Session

from config.settings import DEFAULT_POLICY_FILE, load_settings
from fleet.approvals import Approvals
from fleet.audit.compliance import (
    EVIDENCE_SOURCE,
    build_report,
    parse_period,
    previous_month,
    render_html,
    write_report,
)
from fleet.audit.events import ApprovalState, Article, AuditEvent, build_event
from fleet.audit.log import AuditFiles, AuditLog
from fleet.audit.verify import verify_log
from fleet.clock import ManualClock
from fleet.storage.db import create_db_engine, migrate, session_factory
from fleet.storage.records import Agent, AgentStatus
from tests.support.trust import pinned_key

SETTINGS = load_settings()


def test_periods() -> None:
    now = datetime(2026, 3, 15, tzinfo=UTC)
    may = parse_period("2026-12", now)
    assert (may.start, may.end) == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    recent = parse_period("30d", now)
    assert (recent.end - recent.start).days == 30 and recent.label == "30d"
    assert (
        previous_month(now) == "2026-02"
        and previous_month(datetime(2026, 1, 1, tzinfo=UTC)) == "2025-12"
    )
    with pytest.raises(ValueError, match="expected a month"):
        parse_period("last month", now)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[AuditLog, Approvals, ManualClock]]:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    migrate(engine)
    clock = ManualClock(datetime(2026, 4, 10, tzinfo=UTC))
    with Session(engine) as session, session.begin():
        for i, caps in enumerate((["support"], [], ["support"])):
            session.add(
                Agent(
                    agent_id=f"seg0-{i:04d}-aaaaaaaa",
                    fleet="demo",
                    environment="test",
                    id_prefix="seg0",
                    tier="standard",
                    capabilities=caps,
                    sla_template="standard-support",
                    status=AgentStatus.ACTIVE,
                    steps_done=[],
                    extra={},
                    created_at=clock.now(),
                    updated_at=clock.now(),
                )
            )
    log = AuditLog(
        engine,
        AuditFiles(tmp_path / "k.pem", tmp_path / "c.jsonl", tmp_path / "a", tmp_path / "reports"),
        clock=clock,
        public_key=pinned_key(tmp_path / "k.pem"),
    )

    def record(events: Sequence[AuditEvent]) -> None:
        log.append(events)

    approvals = Approvals(
        session_factory(engine), SETTINGS.policy.approvals, clock=clock, emit=record
    )
    yield log, approvals, clock
    engine.dispose()


def test_report_covers_every_article_with_our_evidence_and_findings(
    world: tuple[AuditLog, Approvals, ManualClock],
) -> None:
    log, approvals, clock = world
    log.append(
        [
            build_event(
                actor="p",
                action="provision_agent",
                subject="seg0-0000-aaaaaaaa",
                fleet="demo",
                clock=clock,
            ),
            build_event(
                actor="e", action="transfer_funds", subject="seg0-0000-aaaaaaaa", clock=clock
            ),  # HIGH, not approved
            build_event(
                actor="m",
                action="send_message",
                subject="seg0-0001-aaaaaaaa",
                clock=clock,
                details={"ai_disclosure": True},
            ),
            build_event(
                actor="m",
                action="send_message",
                subject="seg0-0001-aaaaaaaa",
                clock=clock,
                details={},
            ),
            build_event(
                actor="x", action="restart_agent", subject="other-0001-aaaaaaaa", clock=clock
            ),  # another fleet
            build_event(
                actor="e",
                action="freeze_agent",
                subject="seg0-0001-aaaaaaaa",
                clock=clock,
                article=Article.HUMAN_OVERSIGHT,
                approval=ApprovalState.NONE,
            ),
        ]
    )
    rid = approvals.request("change_sla", "seg0-0000-aaaaaaaa", "alice", fleet="demo").request_id
    clock.advance(90)
    approvals.approve(rid, "bob")  # type: ignore[arg-type]
    approvals.request("retire_agent", "seg0-0001-aaaaaaaa", "alice", fleet="demo")
    clock.advance(2 * 86400)
    approvals.expire_due()

    period = parse_period("2026-04", clock.now())
    report = build_report(
        log=log,
        approvals=approvals,
        policy=SETTINGS.policy,
        policy_file=DEFAULT_POLICY_FILE,
        fleet="demo",
        period=period,
        integrity=verify_log(log),
        mirror_pending=0,
    )
    articles = report["articles"]
    assert sorted(articles, key=int) == ["9", "11", "12", "13", "14", "15"]
    assert report["evidence_source"] == EVIDENCE_SOURCE
    assert all(
        set(a) == {"article", "title", "status", "evidence", "findings"} for a in articles.values()
    )
    assert "gateway" not in report, "the source is stated once, as evidence_source"
    assert articles["9"]["findings"] == ["1 HIGH/CRITICAL actions recorded without an approval"]
    assert articles["11"]["findings"] == ["1 agents without declared capabilities"]
    art12 = articles["12"]["evidence"]
    assert art12["chain"]["ok"] and art12["agents_audited"] == 2
    # Five of the fleet's own; request, vote, grant, request, expiry.
    assert art12["entries_in_period"] == 5 + 5
    assert "1 agents without an audit entry in the period" in articles["12"]["findings"]
    assert articles["13"]["evidence"]["messages_with_ai_disclosure"] == 1
    assert articles["13"]["findings"] == ["1 messages without an AI disclosure"]
    assert articles["13"]["status"] == "findings" and articles["15"]["status"] == "compliant"
    art14 = articles["14"]["evidence"]
    assert (art14["requests"], art14["approved"], art14["expired"]) == (2, 1, 1)
    assert art14["decision_latency"] == {
        "count": "1",
        "median_s": "90.0",
        "p95_s": "90.0",
        "max_s": "90.0",
    }
    assert art14["distinct_approvers"] == ["bob"] and art14["freezes"] == 1
    assert report["compliant"] is False
    assert b"." not in orjson.dumps(art14["decision_latency"]).replace(b".0", b""), (
        "figures are strings, not floats"
    )


def test_html_states_the_source_once_escapes_values_and_both_files_are_written(
    world: tuple[AuditLog, Approvals, ManualClock], tmp_path: Path
) -> None:
    log, approvals, clock = world
    report = build_report(
        log=log,
        approvals=approvals,
        policy=SETTINGS.policy,
        policy_file=DEFAULT_POLICY_FILE,
        fleet="demo",
        period=parse_period("30d", clock.now()),
        integrity=verify_log(log),
        mirror_pending=3,
    )
    assert report["articles"]["12"]["evidence"]["mirror_pending"] == 3
    page = render_html({**report, "fleet": "<script>alert(1)</script>"})
    assert "<script>alert" not in page and "&lt;script&gt;" in page
    assert page.count("offers no compliance report") == 1
    assert "Art. 12" in page and "3 agents without an audit entry in the period" in page
    json_path, html_path = write_report(report, tmp_path / "out")
    written = orjson.loads(json_path.read_bytes())
    assert written["fleet"] == "demo" and written["evidence_source"] == EVIDENCE_SOURCE
    assert html_path.read_text().startswith("<!doctype html>")
