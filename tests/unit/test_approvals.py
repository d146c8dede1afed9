"""Risk-based approvals: classification, quorum of distinct people, expiry, review, audit of every
decision."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from config.policy import ApprovalPolicy, Risk
from config.settings import load_settings
from fleet.approvals import (
    Approvals,
    DuplicateVote,
    NotAnApprover,
    NotApproved,
    NotPending,
    RequestExpired,
    RequestStatus,
    SelfApproval,
    classify,
    has_ai_disclosure,
    with_ai_disclosure,
)
from fleet.audit.events import ApprovalState, Article, AuditEvent
from fleet.clock import ManualClock
from fleet.storage.db import create_db_engine, migrate, session_factory

POLICY = load_settings().policy.approvals


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2026, 2, 1, 9, 0, tzinfo=UTC))


@pytest.fixture
def audited() -> list[AuditEvent]:
    return []


@pytest.fixture
def approvals(tmp_path: Path, clock: ManualClock, audited: list[AuditEvent]) -> Iterator[Approvals]:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    migrate(engine)
    yield Approvals(session_factory(engine), POLICY, clock=clock, emit=audited.extend)
    engine.dispose()


@pytest.mark.parametrize(
    ("action", "kwargs", "risk"),
    [
        ("read_metrics", {}, Risk.LOW),
        ("restart_agent", {}, Risk.MEDIUM),
        ("something_new", {}, Risk.MEDIUM),  # the default risk
        ("change_sla", {}, Risk.HIGH),
        ("retire_agent", {}, Risk.CRITICAL),
        ("restart_agent", {"amount": Decimal("9.99")}, Risk.MEDIUM),
        ("restart_agent", {"amount": Decimal("10.00")}, Risk.HIGH),  # not "under $10"
        ("read_metrics", {"amount": Decimal("1.00")}, Risk.MEDIUM),  # moving money is not read-only
        ("open_dispute", {"amount": Decimal("100.01")}, Risk.HIGH),
        ("notify_operator", {"pii": True}, Risk.HIGH),
        ("restart_agent", {"irreversible": True}, Risk.CRITICAL),
        ("retire_agent", {"amount": Decimal("0.50")}, Risk.CRITICAL),  # never lowered
    ],
)
def test_classification_follows_the_matrix_and_only_raises(
    action: str, kwargs: dict[str, object], risk: Risk
) -> None:
    assert classify(POLICY, action, **kwargs) is risk  # type: ignore[arg-type]


def test_low_runs_at_once_and_stores_nothing(
    approvals: Approvals, audited: list[AuditEvent]
) -> None:
    gate = approvals.request("read_metrics", "seg0-0001-aaaaaaaa", "fleet-commander/metrics")
    assert gate.may_run and gate.request is None and gate.approval is ApprovalState.NONE
    assert approvals.list_requests(status=None) == [] and audited == []


def test_medium_runs_and_joins_the_review_queue_due_in_24_h(
    approvals: Approvals, clock: ManualClock, audited: list[AuditEvent]
) -> None:
    gate = approvals.request("restart_agent", "seg0-0001-aaaaaaaa", "fleet-commander/escalation")
    assert gate.may_run and gate.approval is ApprovalState.REVIEW_PENDING
    assert gate.request is not None and gate.request.review_due_at == datetime(
        2026, 2, 2, 9, 0, tzinfo=UTC
    )
    assert [v.request_id for v in approvals.list_requests(review_queue=True)] == [gate.request_id]
    with pytest.raises(SelfApproval):
        approvals.review(gate.request_id, "fleet-commander/escalation")  # type: ignore[arg-type]
    clock.advance(3600)
    view = approvals.review(gate.request_id, "alice", "restart was right")  # type: ignore[arg-type]
    assert view.reviewed_by == "alice" and view.approval_state is ApprovalState.REVIEWED
    assert approvals.list_requests(review_queue=True) == []
    assert [e.action for e in audited] == ["approval_review_queued", "approval_reviewed"]
    assert audited[-1].details["late"] is False


def test_high_waits_for_one_approval_from_someone_else(
    approvals: Approvals, audited: list[AuditEvent]
) -> None:
    gate = approvals.request(
        "transfer_funds",
        "seg0-0001-aaaaaaaa",
        "alice",
        amount=Decimal("250.00"),
        task="provisioning.transfer",
        task_kwargs={"agent_id": "seg0-0001-aaaaaaaa"},
    )
    assert not gate.may_run and gate.risk is Risk.HIGH and gate.request is not None
    assert gate.request.required == 1 and gate.request.details["amount"] == "250.00"
    rid = gate.request.request_id
    with pytest.raises(SelfApproval):
        approvals.approve(rid, "Alice ")  # the same person, however written
    with pytest.raises(NotApproved):
        approvals.require_approved(rid, action="transfer_funds", subject="seg0-0001-aaaaaaaa")
    view = approvals.approve(rid, "bob", "checked the invoice")
    assert view.status is RequestStatus.APPROVED and view.outcome == "quorum reached"
    assert [v.request_id for v in approvals.awaiting_dispatch()] == [rid]
    assert [e.action for e in audited] == [
        "approval_requested",
        "approval_vote_refused",
        "approval_vote",
        "approval_granted",
    ]
    assert all(e.article is Article.HUMAN_OVERSIGHT and e.approval_id == rid for e in audited)


def test_critical_approved_twice_by_the_same_person_does_not_run(
    approvals: Approvals, audited: list[AuditEvent]
) -> None:
    gate = approvals.request(
        "revoke_identity",
        "seg0-0001-aaaaaaaa",
        "fleet-commander/retirement",
        task="provisioning.revoke",
        task_kwargs={"agent_id": "seg0-0001-aaaaaaaa"},
    )
    rid = gate.request_id
    assert rid is not None and gate.request is not None and gate.request.required == 2
    approvals.approve(rid, "bob")
    with pytest.raises(DuplicateVote, match="2 distinct approvers"):
        approvals.approve(rid, "bob")
    with pytest.raises(DuplicateVote):
        approvals.approve(rid, "user:BOB")
    view = approvals.get(rid)
    assert view.status is RequestStatus.PENDING and view.approvals == 1
    assert approvals.awaiting_dispatch() == [], "nothing is sent to run"
    with pytest.raises(NotApproved):
        approvals.consume(rid)
    view = approvals.approve(rid, "carol")
    assert view.status is RequestStatus.APPROVED and {v.approver for v in view.votes} == {
        "bob",
        "carol",
    }
    assert approvals.consume(rid).status is RequestStatus.EXECUTED
    with pytest.raises(NotApproved):
        approvals.consume(rid)  # exactly once
    actions = [e.action for e in audited]
    assert actions.count("approval_vote_refused") == 2 and actions[-2:] == [
        "approval_granted",
        "approval_executed",
    ]


def test_one_rejection_denies(approvals: Approvals, audited: list[AuditEvent]) -> None:
    rid = approvals.request("delete_data", "fleet:demo", "alice").request_id
    assert rid is not None
    approvals.approve(rid, "bob")
    view = approvals.reject(rid, "carol", "no backup yet")
    assert view.status is RequestStatus.DENIED and view.outcome == "rejected by carol"
    with pytest.raises(NotPending):
        approvals.approve(rid, "dave")
    assert audited[-1].action == "approval_denied" and audited[-1].approval is ApprovalState.DENIED


def test_expiry_denies_and_is_audited(
    approvals: Approvals, clock: ManualClock, audited: list[AuditEvent]
) -> None:
    swept = approvals.request("change_sla", "seg0-0001-aaaaaaaa", "alice").request_id
    voted = approvals.request("change_sla", "seg0-0002-aaaaaaaa", "alice").request_id
    clock.advance(POLICY.request_expiry_s - 1)
    assert approvals.expire_due() == []
    clock.advance(1)
    with pytest.raises(RequestExpired):
        approvals.approve(voted, "bob")  # type: ignore[arg-type]
    expired = approvals.expire_due()
    assert [v.request_id for v in expired] == [swept]
    for rid in (swept, voted):
        view = approvals.get(rid)  # type: ignore[arg-type]
        assert (
            view.status is RequestStatus.DENIED and view.outcome == "expired" and view.votes == ()
        )
    assert [e.action for e in audited if e.action == "approval_expired"] == ["approval_expired"] * 2


def test_only_configured_approvers_may_vote(tmp_path: Path, clock: ManualClock) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    migrate(engine)
    policy = ApprovalPolicy(**{**POLICY.model_dump(), "approvers": ["alice", "bob"]})
    service = Approvals(session_factory(engine), policy, clock=clock, emit=lambda events: None)
    rid = service.request("change_sla", "seg0-0001-aaaaaaaa", "ops").request_id
    with pytest.raises(NotAnApprover):
        service.approve(rid, "mallory")  # type: ignore[arg-type]
    assert service.approve(rid, "bob").status is RequestStatus.APPROVED  # type: ignore[arg-type]
    engine.dispose()


def test_messages_carry_an_ai_disclosure_once() -> None:
    body = with_ai_disclosure(
        "Your refund is on its way.", agent_id="seg0-0001-aaaaaaaa", fleet="demo"
    )
    assert body.startswith("[Automated message: sent by AI agent seg0-0001-aaaaaaaa of fleet demo")
    assert body.endswith("Your refund is on its way.")
    assert has_ai_disclosure(body) and not has_ai_disclosure("Your refund is on its way.")
    assert with_ai_disclosure(body, agent_id="seg0-0001-aaaaaaaa", fleet="demo") == body
