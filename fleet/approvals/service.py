"""Human oversight: approval requests, votes, expiry, post-hoc review.

Errors::

    ApprovalError            anything refused; base of everything below
    ├── UnknownRequest       no such request
    ├── NotPending           already approved, denied, executed, or not gated at all
    ├── SelfApproval         the requester tried to vote on their own request
    ├── DuplicateVote        this person already voted on it
    ├── NotAnApprover        not in the configured list of approvers
    ├── RequestExpired       it expired (and is now denied)
    └── NotApproved          the gated action tried to run without an approval

Every state change commits first and is audited after (Art. 14), so the log
never records a decision that rolled back.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, cast

import rfc8785
from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session, sessionmaker

from config.policy import ApprovalPolicy, Risk
from fleet.approvals.models import ApprovalRequest, ApprovalVote, RequestStatus, Verdict
from fleet.approvals.risk import approvals_required, classify
from fleet.audit.events import (
    ApprovalState,
    Article,
    AuditEvent,
    TraceLike,
    build_event,
    clean_details,
)
from fleet.clock import Clock
from fleet.identity.principal import Principal


class ApprovalError(Exception):
    pass


class UnknownRequest(ApprovalError):
    pass


class NotPending(ApprovalError):
    pass


class SelfApproval(ApprovalError):
    pass


class DuplicateVote(ApprovalError):
    pass


class NotAnApprover(ApprovalError):
    pass


class RequestExpired(ApprovalError):
    pass


class NotApproved(ApprovalError):
    pass


@dataclass(frozen=True)
class Vote:
    approver: str
    verdict: str
    comment: str
    at: datetime


@dataclass(frozen=True)
class RequestView:
    """A request as it stood when read; safe to use after the session closed."""

    request_id: str
    action: str
    risk: Risk
    subject: str
    fleet: str | None
    requested_by: str
    reason: str
    details: dict[str, Any]
    status: RequestStatus
    required: int
    task: str | None
    task_kwargs: dict[str, Any]
    created_at: datetime
    expires_at: datetime | None
    decided_at: datetime | None
    outcome: str | None
    review_due_at: datetime | None
    reviewed_by: str | None
    reviewed_at: datetime | None
    dispatched_at: datetime | None
    executed_at: datetime | None
    votes: tuple[Vote, ...]

    @property
    def approvals(self) -> int:
        return sum(1 for v in self.votes if v.verdict == Verdict.APPROVE)

    @property
    def approval_state(self) -> ApprovalState:
        if self.status is RequestStatus.AUTO:
            return ApprovalState.REVIEWED if self.reviewed_at else ApprovalState.REVIEW_PENDING
        return {
            RequestStatus.PENDING: ApprovalState.PENDING,
            RequestStatus.APPROVED: ApprovalState.APPROVED,
            RequestStatus.EXECUTED: ApprovalState.APPROVED,
            RequestStatus.DENIED: ApprovalState.DENIED,
        }[self.status]

    def to_dict(self) -> dict[str, Any]:
        def t(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {
            "request_id": self.request_id,
            "action": self.action,
            "risk": self.risk.value,
            "subject": self.subject,
            "fleet": self.fleet,
            "requested_by": self.requested_by,
            "reason": self.reason,
            "details": self.details,
            "status": self.status.value,
            "approval_state": self.approval_state.value,
            "required": self.required,
            "approvals": self.approvals,
            "task": self.task,
            "created_at": t(self.created_at),
            "expires_at": t(self.expires_at),
            "decided_at": t(self.decided_at),
            "outcome": self.outcome,
            "review_due_at": t(self.review_due_at),
            "reviewed_by": self.reviewed_by,
            "reviewed_at": t(self.reviewed_at),
            "dispatched_at": t(self.dispatched_at),
            "executed_at": t(self.executed_at),
            "votes": [
                {"approver": v.approver, "verdict": v.verdict, "comment": v.comment, "at": t(v.at)}
                for v in self.votes
            ],
            # What a vote would decide: a client may send it back to pin what it saw.
            "action_digests": {
                verdict.value: action_digest(self, verdict.value) for verdict in Verdict
            },
        }


@dataclass(frozen=True)
class Gate:
    """The answer to "may this action run now?"."""

    risk: Risk
    may_run: bool
    approval: ApprovalState
    request: RequestView | None  # None for LOW: nothing to approve or review

    @property
    def request_id(self) -> str | None:
        return self.request.request_id if self.request else None


def _view(req: ApprovalRequest, votes: Sequence[ApprovalVote]) -> RequestView:
    return RequestView(
        request_id=req.request_id,
        action=req.action,
        risk=Risk(req.risk),
        subject=req.subject,
        fleet=req.fleet,
        requested_by=req.requested_by,
        reason=req.reason,
        details=dict(req.details or {}),
        status=RequestStatus(req.status),
        required=req.required,
        task=req.task,
        task_kwargs=dict(req.task_kwargs or {}),
        created_at=req.created_at,
        expires_at=req.expires_at,
        decided_at=req.decided_at,
        outcome=req.outcome,
        review_due_at=req.review_due_at,
        reviewed_by=req.reviewed_by,
        reviewed_at=req.reviewed_at,
        dispatched_at=req.dispatched_at,
        executed_at=req.executed_at,
        votes=tuple(
            Vote(v.approver, v.verdict, v.comment, v.at) for v in sorted(votes, key=lambda v: v.at)
        ),
    )


def same_person(a: str, b: str) -> bool:
    def norm(name: str) -> str:
        name = name.strip().casefold()
        return name.removeprefix("user:")

    return norm(a) == norm(b)


def action_digest(view: RequestView, verdict: str) -> str:
    """SHA-256 over the canonical JSON of exactly what a decision decides.

    It binds a vote to the action, subject, task and arguments as they stood
    when it was cast: an audit entry shows what was approved, not only that
    something was.
    """
    decided = {
        "request_id": view.request_id,
        "action": view.action,
        "subject": view.subject,
        "fleet": view.fleet,
        "risk": view.risk.value,
        "requested_by": view.requested_by,
        "details": view.details,
        "task": view.task,
        "task_kwargs": view.task_kwargs,
        "verdict": verdict,
    }
    return hashlib.sha256(rfc8785.dumps(decided)).hexdigest()


def _attribution(principal: Principal | None, view: RequestView, verdict: str) -> dict[str, Any]:
    if principal is None:
        return {"action_digest": action_digest(view, verdict)}
    return {**principal.audit_fields(), "action_digest": action_digest(view, verdict)}


AuditEmit = Callable[[Sequence[AuditEvent]], None]


def _default_emit(events: Sequence[AuditEvent]) -> None:
    from fleet.audit.sinks import emit

    emit(events)


class Approvals:
    """Approval requests in one database, under one policy and clock."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        policy: ApprovalPolicy,
        *,
        clock: Clock,
        emit: AuditEmit | None = None,
        actor: str = "fleet-commander/approvals",
    ) -> None:
        self.sessions = sessions
        self.policy = policy
        self.clock = clock
        self.emit_audit = emit or _default_emit
        self.actor = actor

    # ------------------------------------------------------------ plumbing

    @contextmanager
    def _write(self) -> Iterator[Session]:
        """A write transaction that holds the database's write lock from its first statement.

        SQLite would otherwise start it as a reader and fail the upgrade when
        two approvers vote at once; PostgreSQL gets a row lock per request instead.
        """
        with self.sessions() as session:
            conn = session.connection()
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield session
            except BaseException:
                session.rollback()
                raise
            session.commit()

    def _load(self, session: Session, request_id: str, *, lock: bool = True) -> ApprovalRequest:
        stmt = select(ApprovalRequest).where(ApprovalRequest.request_id == request_id)
        if lock:
            stmt = stmt.with_for_update()
        req = session.scalars(stmt).first()
        if req is None:
            raise UnknownRequest(f"no approval request {request_id!r}")
        return req

    def _votes(self, session: Session, request_id: str) -> list[ApprovalVote]:
        return list(
            session.scalars(select(ApprovalVote).where(ApprovalVote.request_id == request_id))
        )

    def _audit(
        self, view: RequestView, action: str, *, actor: str | None = None, **details: Any
    ) -> AuditEvent:
        return build_event(
            actor=actor or self.actor,
            action=action,
            subject=view.subject,
            fleet=view.fleet,
            details={
                "request_id": view.request_id,
                "gated_action": view.action,
                "risk": view.risk.value,
                **details,
            },
            article=Article.HUMAN_OVERSIGHT,
            approval=view.approval_state,
            approval_id=view.request_id,
            clock=self.clock,
        )

    def _expire(self, session: Session, req: ApprovalRequest, now: datetime) -> None:
        req.status = RequestStatus.DENIED
        req.decided_at = now
        req.outcome = "expired"

    # ------------------------------------------------------------ the gate

    def classify(
        self,
        action: str,
        *,
        amount: Decimal | None = None,
        pii: bool = False,
        irreversible: bool = False,
    ) -> Risk:
        return classify(self.policy, action, amount=amount, pii=pii, irreversible=irreversible)

    def request(
        self,
        action: str,
        subject: str,
        requested_by: str,
        *,
        fleet: str | None = None,
        details: Mapping[str, Any] | None = None,
        reason: str = "",
        amount: Decimal | None = None,
        pii: bool = False,
        irreversible: bool = False,
        task: str | None = None,
        task_kwargs: Mapping[str, Any] | None = None,
        trace: TraceLike | None = None,
    ) -> Gate:
        """Classify an action and open a request if it needs one.

        LOW: may run, nothing stored (the action's own audit entry is the
        record). MEDIUM: may run; stored in the review queue, due within
        ``review_due_s``. HIGH/CRITICAL: may not run; a pending request that
        expires after ``request_expiry_s``; once approved, ``task`` is sent
        with ``task_kwargs`` plus ``approval_id``.
        """
        risk = self.classify(action, amount=amount, pii=pii, irreversible=irreversible)
        if risk is Risk.LOW:
            return Gate(risk, True, ApprovalState.NONE, None)
        now = self.clock.now()
        required = approvals_required(self.policy, risk)
        clean = clean_details(dict(details or {}))
        if amount is not None:
            clean["amount"] = format(amount, "f")
        req = ApprovalRequest(
            request_id=uuid.uuid4().hex,
            action=action,
            risk=risk.value,
            subject=subject,
            fleet=fleet,
            requested_by=requested_by,
            reason=reason,
            details=clean,
            required=required,
            task=task,
            task_kwargs=clean_details(dict(task_kwargs or {})),
            created_at=now,
            trace_id=getattr(trace, "trace_id", None),
        )
        if required == 0:
            req.status = RequestStatus.AUTO
            req.review_due_at = now + timedelta(seconds=self.policy.review_due_s)
        else:
            req.status = RequestStatus.PENDING
            req.expires_at = now + timedelta(seconds=self.policy.request_expiry_s)
        with self._write() as session:
            session.add(req)
            session.flush()
            view = _view(req, [])
        if required == 0:
            self.emit_audit(
                [
                    self._audit(
                        view,
                        "approval_review_queued",
                        actor=requested_by,
                        review_due_at=view.review_due_at,
                    )
                ]
            )
            return Gate(risk, True, ApprovalState.REVIEW_PENDING, view)
        self.emit_audit(
            [
                self._audit(
                    view,
                    "approval_requested",
                    actor=requested_by,
                    required=required,
                    expires_at=view.expires_at,
                    reason=reason,
                    task=task,
                )
            ]
        )
        return Gate(risk, False, ApprovalState.PENDING, view)

    # ------------------------------------------------------------ decisions

    def approve(
        self,
        request_id: str,
        approver: str,
        comment: str = "",
        *,
        principal: Principal | None = None,
    ) -> RequestView:
        """A vote for; with ``principal``, the vote is theirs and ``approver`` is ignored."""
        return self._vote(request_id, approver, Verdict.APPROVE, comment, principal)

    def reject(
        self,
        request_id: str,
        approver: str,
        comment: str = "",
        *,
        principal: Principal | None = None,
    ) -> RequestView:
        return self._vote(request_id, approver, Verdict.REJECT, comment, principal)

    def _vote(
        self,
        request_id: str,
        approver: str,
        verdict: Verdict,
        comment: str,
        principal: Principal | None,
    ) -> RequestView:
        # An authenticated principal's id is the voter: one credential, one vote.
        approver = principal.principal_id if principal is not None else approver.strip()
        if not approver:
            raise NotAnApprover("an approver must give their name")
        if self.policy.approvers and not any(
            same_person(approver, a) for a in self.policy.approvers
        ):
            raise NotAnApprover(f"{approver!r} is not among the configured approvers")
        now = self.clock.now()
        events: list[AuditEvent] = []
        expired = False
        refused: ApprovalError | None = None
        with self._write() as session:
            req = self._load(session, request_id)
            votes = self._votes(session, request_id)
            if req.status != RequestStatus.PENDING:
                raise NotPending(f"request {request_id} is {req.status}, not pending")
            if req.expires_at is not None and now >= req.expires_at:
                self._expire(session, req, now)
                expired = True
            elif same_person(approver, req.requested_by):
                refused = SelfApproval(
                    f"{approver!r} raised request {request_id} and cannot vote on it"
                )
            elif any(same_person(approver, v.approver) for v in votes):
                refused = DuplicateVote(
                    f"{approver!r} already voted on request {request_id}; "
                    f"it needs {req.required} distinct approvers"
                )
            else:
                vote = ApprovalVote(
                    request_id=request_id,
                    approver=approver,
                    verdict=verdict,
                    comment=comment,
                    at=now,
                )
                session.add(vote)
                votes.append(vote)
                approvals = sum(1 for v in votes if v.verdict == Verdict.APPROVE)
                if verdict is Verdict.REJECT:
                    req.status, req.decided_at, req.outcome = (
                        RequestStatus.DENIED,
                        now,
                        f"rejected by {approver}",
                    )
                elif approvals >= req.required:
                    req.status, req.decided_at, req.outcome = (
                        RequestStatus.APPROVED,
                        now,
                        "quorum reached",
                    )
                session.flush()
            view = _view(req, votes)
        if refused is not None:
            # Refused attempts are evidence too: they show the four-eyes rule held.
            self.emit_audit(
                [
                    self._audit(
                        view,
                        "approval_vote_refused",
                        actor=approver,
                        verdict=verdict.value,
                        reason=str(refused),
                        **_attribution(principal, view, verdict.value),
                    )
                ]
            )
            raise refused
        if expired:
            self.emit_audit([self._audit(view, "approval_expired", outcome="expired")])
            raise RequestExpired(
                f"request {request_id} expired at {view.expires_at:%Y-%m-%d %H:%M:%S} UTC and is "
                "denied"
            )
        events.append(
            self._audit(
                view,
                "approval_vote",
                actor=approver,
                verdict=verdict.value,
                comment=comment,
                approvals=view.approvals,
                required=view.required,
                **_attribution(principal, view, verdict.value),
            )
        )
        if view.status is RequestStatus.APPROVED:
            events.append(
                self._audit(view, "approval_granted", approvers=[v.approver for v in view.votes])
            )
        elif view.status is RequestStatus.DENIED:
            events.append(self._audit(view, "approval_denied", outcome=view.outcome))
        self.emit_audit(events)
        return view

    def expire_due(self) -> list[RequestView]:
        """Deny every pending request past its expiry; each denial is audited."""
        now = self.clock.now()
        expired: list[RequestView] = []
        with self._write() as session:
            due = session.scalars(
                select(ApprovalRequest)
                .where(
                    ApprovalRequest.status == RequestStatus.PENDING,
                    ApprovalRequest.expires_at <= now,
                )
                .with_for_update()
            ).all()
            for req in due:
                self._expire(session, req, now)
            session.flush()
            for req in due:
                expired.append(_view(req, self._votes(session, req.request_id)))
        if expired:
            self.emit_audit(
                [self._audit(v, "approval_expired", outcome="expired") for v in expired]
            )
        return expired

    def require_approved(self, request_id: str, *, action: str, subject: str) -> RequestView:
        """The request, if it approves exactly this action on this subject and has not run yet."""
        view = self.get(request_id)
        if view.action != action or view.subject != subject:
            raise NotApproved(
                f"request {request_id} approves {view.action} on {view.subject}, not {action} on "
                f"{subject}"
            )
        if view.status is not RequestStatus.APPROVED:
            raise NotApproved(f"request {request_id} is {view.status.value}: {action} must not run")
        return view

    def consume(
        self, request_id: str, *, action: str | None = None, subject: str | None = None
    ) -> RequestView:
        """Claim an approval for the one run of its action, just before running it.

        Exactly one caller gets it; anyone else (a second delivery, a request
        still pending, denied or expired) gets NotApproved and must not run.
        """
        now = self.clock.now()
        with self._write() as session:
            req = self._load(session, request_id)
            if (
                action is not None
                and req.action != action
                or subject is not None
                and req.subject != subject
            ):
                raise NotApproved(
                    f"request {request_id} approves {req.action} on {req.subject}, not {action} on "
                    f"{subject}"
                )
            claimed = cast(
                CursorResult[Any],
                session.execute(
                    update(ApprovalRequest)
                    .where(
                        ApprovalRequest.request_id == request_id,
                        ApprovalRequest.status == RequestStatus.APPROVED,
                    )
                    .values(status=RequestStatus.EXECUTED, executed_at=now)
                    .execution_options(synchronize_session=False)
                ),
            ).rowcount
            if claimed != 1:
                raise NotApproved(
                    f"request {request_id} is {req.status}: {req.action} must not run"
                )
            session.refresh(req)
            view = _view(req, self._votes(session, request_id))
        self.emit_audit([self._audit(view, "approval_executed")])
        return view

    def review(
        self,
        request_id: str,
        reviewer: str,
        note: str = "",
        *,
        principal: Principal | None = None,
    ) -> RequestView:
        """Close a MEDIUM request's post-hoc review (as ``principal`` when given)."""
        reviewer = principal.principal_id if principal is not None else reviewer
        now = self.clock.now()
        with self._write() as session:
            req = self._load(session, request_id)
            if req.status != RequestStatus.AUTO or req.reviewed_at is not None:
                raise NotPending(f"request {request_id} is not awaiting review")
            if same_person(reviewer, req.requested_by):
                raise SelfApproval(f"{reviewer!r} raised request {request_id} and cannot review it")
            req.reviewed_by, req.reviewed_at, req.review_note = reviewer, now, note
            session.flush()
            view = _view(req, self._votes(session, request_id))
        late = view.review_due_at is not None and now > view.review_due_at
        self.emit_audit(
            [
                self._audit(
                    view,
                    "approval_reviewed",
                    actor=reviewer,
                    note=note,
                    late=late,
                    **_attribution(principal, view, "review"),
                )
            ]
        )
        return view

    # ------------------------------------------------------------ dispatch of approved work

    def awaiting_dispatch(self) -> list[RequestView]:
        with self.sessions() as session:
            rows = session.scalars(
                select(ApprovalRequest).where(
                    ApprovalRequest.status == RequestStatus.APPROVED,
                    ApprovalRequest.task.is_not(None),
                    ApprovalRequest.dispatched_at.is_(None),
                )
            ).all()
            return [_view(r, self._votes(session, r.request_id)) for r in rows]

    def mark_dispatched(self, request_id: str) -> None:
        with self._write() as session:
            session.execute(
                update(ApprovalRequest)
                .where(
                    ApprovalRequest.request_id == request_id,
                    ApprovalRequest.dispatched_at.is_(None),
                )
                .values(dispatched_at=self.clock.now())
                .execution_options(synchronize_session=False)
            )

    # ------------------------------------------------------------ reading

    def get(self, request_id: str) -> RequestView:
        with self.sessions() as session:
            req = self._load(session, request_id, lock=False)
            return _view(req, self._votes(session, request_id))

    def list_requests(
        self, *, status: RequestStatus | None = None, review_queue: bool = False, limit: int = 100
    ) -> list[RequestView]:
        """Newest first; review_queue lists MEDIUM requests not yet reviewed, oldest due first."""
        stmt = select(ApprovalRequest)
        if review_queue:
            stmt = stmt.where(
                ApprovalRequest.status == RequestStatus.AUTO, ApprovalRequest.reviewed_at.is_(None)
            )
            stmt = stmt.order_by(ApprovalRequest.review_due_at)
        else:
            if status is not None:
                stmt = stmt.where(ApprovalRequest.status == status)
            stmt = stmt.order_by(ApprovalRequest.created_at.desc())
        with self.sessions() as session:
            rows = session.scalars(stmt.limit(limit)).all()
            return [_view(r, self._votes(session, r.request_id)) for r in rows]

    def in_period(
        self, start: datetime, end: datetime, fleet: str | None = None
    ) -> list[RequestView]:
        stmt = select(ApprovalRequest).where(
            ApprovalRequest.created_at >= start, ApprovalRequest.created_at < end
        )
        if fleet is not None:
            stmt = stmt.where(ApprovalRequest.fleet == fleet)
        with self.sessions() as session:
            rows = session.scalars(stmt.order_by(ApprovalRequest.created_at)).all()
            return [_view(r, self._votes(session, r.request_id)) for r in rows]
