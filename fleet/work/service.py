"""A batch of submitted tasks through the work plane: claim, route, admit, deliver, settle.

Per task, in order:

1. **claim** its idempotency key (Redis SET NX): a key already held answers with the
   task that holds it and nothing runs again; a task redelivered after its dispatch
   (a worker died mid-task) is not sent a second time;
2. **model** from the policy (:mod:`fleet.work.model_choice`), recorded with its reason;
3. **agent** by fleet/routing.py's weighted score over the live pool
   (:mod:`fleet.work.selection`), plus outside agents from the marketplace when the
   policy allows them (:mod:`fleet.work.outside`; the discovery call, when not served
   from its cache, is a child of the task's span);
4. **admission**: the estimate reserved against the budgets (when admission is wired);
   refused → the task ends ``refused`` with the budget that said no;
5. **in flight**: the agent's counter (``fleet:inflight:{agent}``) is incremented before
   the A2A call and decremented after it, so retirement's drain waits for it;
6. **deliver** over A2A (:mod:`fleet.work.a2a`), every task of the batch at once on the
   process's event loop;
7. **settle** (completed, or failed after a spend: the reported cost, else the estimate)
   or **release** (failed before any spend); a task failed before any spend goes to one
   other agent once (``work.reroute_before_spend``), never after a spend;
8. **measured** latency, failure and cost into the agent's snapshot; the record queued
   for the database.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

import redis

from config.policy import Policy
from config.settings import WorkSettings
from fleet import tracing
from fleet.gateway.errors import GatewayError
from fleet.gateway.loop import BackgroundLoop
from fleet.hotstate import inflight_key
from fleet.work import store
from fleet.work.a2a import A2ADelivery, Outcome
from fleet.work.measured import MeasuredSignals
from fleet.work.model_choice import choose_model
from fleet.work.outside import OutsideDirectory
from fleet.work.records import reservation_id
from fleet.work.selection import CandidateDirectory, Listed, Picker, outside_candidates
from fleet.work.submission import TaskSubmission

log = logging.getLogger(__name__)


class Admission(Protocol):
    """What the work plane needs of the budgets (fleet/budgets/admission.py behind it)."""

    def estimate(self, model: str, tokens: int) -> Decimal: ...

    def reserve(
        self,
        *,
        task_id: str,
        agent_id: str,
        fleet: str,
        amount: Decimal,
        model: str,
        pool: str | None,
        trace_id: str | None,
    ) -> str | None:
        """None when admitted; else the refusal, naming the budget."""
        ...

    def settle(
        self,
        task_id: str,
        actual: Decimal,
        *,
        charged: Decimal | None,
        usage: Mapping[str, int] | None,
    ) -> None: ...

    def release(self, task_id: str) -> None: ...

    def budget_left(self, fleet: str) -> Decimal | None: ...


@dataclass
class WorkDeps:
    redis: redis.Redis
    policy: Policy
    settings: WorkSettings
    directory: CandidateDirectory
    loop: BackgroundLoop
    delivery: A2ADelivery
    measured: MeasuredSignals
    a2a_base: Callable[[Listed], str]
    admission: Admission | None = None
    # Marketplace discovery of outside agents (used when routing.outside.allowed).
    outside: OutsideDirectory | None = None
    rng: random.Random = field(default_factory=random.Random)
    # What is known of a task by its id ({} when unknown): a sub-task's parent is checked
    # with it. None: parent_task_id is recorded unchecked.
    task_lookup: Callable[[str], dict[str, Any]] | None = None

    # The kill switch (fleet.control.LoopState.check): raises LoopPaused while the control
    # loop is paused, before any task is claimed, so the batch is held and sent again.
    check_loop: Callable[[], None] = lambda: None

    def close(self) -> None:
        try:
            self.measured.flush()
        except redis.RedisError:
            pass
        if not self.loop.closed:
            self.loop.run(self.delivery.aclose())
            self.loop.stop()


@dataclass
class _Task:
    sub: TaskSubmission
    task_id: str
    trace_id: str | None
    model: str = ""
    model_reason: str = ""
    estimate: Decimal | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    agent: Listed | None = None
    reservation: str | None = None
    outcome: Outcome | None = None
    last: Outcome | None = None  # the last attempt's outcome
    state: str = ""
    reason: str | None = None
    created_at: float = field(default_factory=time.time)
    span: tracing.Span | None = None  # the task's own span; its phases are children
    a2a_span: tracing.Span | None = None
    root_task_id: str | None = None


def _trace_id(sub: TaskSubmission) -> str | None:
    parent = sub.trace.carrier().get("traceparent") if sub.trace else None
    return parent[3:35] if parent else None


def _open(sub: TaskSubmission, task_id: str) -> _Task:
    """The task with its span: a child of the caller's trace context when it sent one, else
    of the current one (the queue message's, carried by the worker hook)."""
    parent = (tracing.extract(sub.trace.carrier()) if sub.trace else None) or (
        tracing.current_context()
    )
    span = tracing.start_span(
        f"work.task {sub.type}",
        parent=parent,
        attributes={
            tracing.GENAI_OPERATION_NAME: tracing.OP_INVOKE_AGENT,
            "fleet.task.id": task_id,
            "fleet.task.type": sub.type,
            "fleet.task.estimated_tokens": sub.estimated_tokens,
        },
    )
    ids = tracing.ids_of(span) if span is not None else None
    trace_id = (ids[0] if ids else None) or _trace_id(sub) or tracing.current_trace_id()
    return _Task(sub, task_id, trace_id, span=span)


def _child(
    t: _Task,
    name: str,
    attributes: Mapping[str, str | int | float | bool],
    *,
    kind: tracing.SpanKind = tracing.SpanKind.INTERNAL,
) -> tracing.Span | None:
    if t.span is None:
        return None
    return tracing.start_span(
        name, kind=kind, parent=tracing.context_with(t.span), attributes=attributes
    )


def _headers(t: _Task) -> dict[str, str]:
    """The W3C trace context the agent receives: the A2A call's span when tracing is on,
    else the caller's (or the queue message's) passed through."""
    headers: dict[str, str] = {}
    if t.a2a_span is not None:
        token = tracing.attach(tracing.context_with(t.a2a_span))
        try:
            tracing.inject(headers)
        finally:
            tracing.detach(token)
    elif t.sub.trace is not None:
        headers = t.sub.trace.carrier()
    else:
        tracing.inject(headers)
    return headers


def run_tasks(
    deps: WorkDeps, submissions: Sequence[tuple[TaskSubmission, str]]
) -> list[dict[str, Any]]:
    """Run a batch of (submission, task id); one summary per submission, in order.

    Raises fleet.control.LoopPaused (nothing claimed) while the control loop is paused."""
    deps.check_loop()
    pairs = [(sub.idempotency_key, task_id) for sub, task_id in submissions]
    holders = store.claim(deps.redis, pairs, deps.settings.idempotency_ttl_s)
    phases = store.phases(deps.redis, holders)
    summaries: list[dict[str, Any] | None] = [None] * len(submissions)
    work: list[tuple[int, _Task]] = []
    for i, ((sub, task_id), holder, phase) in enumerate(
        zip(submissions, holders, phases, strict=True)
    ):
        if holder != task_id or phase != "claimed":
            # Someone else's key, or our own message redelivered after its dispatch.
            summaries[i] = {"task_id": holder, "duplicate": True, "state": phase or "unknown"}
            continue
        work.append((i, _open(sub, task_id)))

    for _, t in work:
        _check_parent(deps, t)
        if not t.state:
            _choose_model(deps, t)
    pending = [t for _, t in work if not t.state]
    rounds = 2 if deps.policy.work.reroute_before_spend else 1
    for _ in range(rounds):
        if not pending:
            break
        _route(deps, pending)
        _deliver(deps, [t for t in pending if t.agent is not None and t.reservation])
        pending = [t for t in pending if _after(deps, t)]
    for t in pending:  # still wanting another agent after the last round
        t.state, t.reason = "failed", "failed before any spend on every agent tried"
    pipe = deps.redis.pipeline(transaction=False)
    for i, t in work:
        record = _record(t)
        store.finish(pipe, record, deps.settings.idempotency_ttl_s)
        if t.span is not None:
            t.span.set_attribute("fleet.task.state", t.state)
            if t.state != "completed":
                tracing.set_error(t.span, t.reason or t.state)
            t.span.end()
        summaries[i] = {
            k: record[k] for k in ("task_id", "state", "agent_id", "model", "reason", "trace_id")
        }
    pipe.execute()
    deps.measured.maybe_flush()
    return [s for s in summaries if s is not None]


def _choose_model(deps: WorkDeps, t: _Task) -> None:
    left = None
    if deps.admission is not None and t.sub.estimated_tokens >= (
        deps.policy.work.models.small_below_tokens
    ):
        left = deps.admission.budget_left(t.sub.fleet or "")
    choice = choose_model(deps.policy.work.models, t.sub.estimated_tokens, left)
    t.model, t.model_reason = choice.model, choice.reason
    if deps.admission is not None:
        try:
            t.estimate = deps.admission.estimate(t.model, t.sub.estimated_tokens)
        except ValueError as exc:  # a model the price table does not know
            t.state, t.reason = "refused", f"estimate: {exc}"


def _check_parent(deps: WorkDeps, t: _Task) -> None:
    """A sub-task's parent must exist and be in the same trace; the root is inherited."""
    parent_id = t.sub.parent_task_id
    if parent_id is None:
        return
    if deps.task_lookup is None:
        t.root_task_id = parent_id
        return
    parent = deps.task_lookup(parent_id)
    if not parent:
        t.state, t.reason = "refused", f"parent_task_id: no task {parent_id}"
        return
    trace = parent.get("trace_id")
    if trace and t.trace_id and trace != t.trace_id:
        t.state, t.reason = (
            "refused",
            f"parent_task_id: task {parent_id} is in trace {trace}, this task in {t.trace_id}",
        )
        return
    t.root_task_id = parent.get("root_task_id") or parent_id


def _route(deps: WorkDeps, tasks: Sequence[_Task]) -> None:
    """Pick an agent for each task and reserve its estimate; count it in flight."""
    by_fleet: dict[str | None, Picker] = {}
    discovered: set[tuple[str | None, frozenset[str]]] = set()
    pipe = deps.redis.pipeline(transaction=False)
    ttl = int(deps.policy.work.delivery_timeout_s * 4) + 60
    for t in tasks:
        picker = by_fleet.get(t.sub.fleet)
        if picker is None:
            picker = Picker(
                deps.directory.candidates(t.sub.fleet),
                deps.policy.routing,
                exclude_breached=deps.policy.work.exclude_breached,
                rng=deps.rng,
            )
            by_fleet[t.sub.fleet] = picker
        tried = {a["agent_id"] for a in t.attempts}
        _add_outside(deps, t, picker, discovered)
        route_span = _child(t, "work.route", {tracing.GENAI_REQUEST_MODEL: t.model})
        t.agent, t.reservation = picker.pick(t.sub.capabilities, exclude=tried), None
        if route_span is not None:
            if t.agent is not None:
                route_span.set_attribute(tracing.GENAI_AGENT_ID, t.agent.agent_id)
            else:
                tracing.set_error(route_span, "no agent")
            route_span.end()
        if t.agent is None:
            t.state = "unroutable"
            outside = " nor allowed outside agent" if _outside_on(deps) else ""
            t.reason = (
                f"no candidate: no active agent{outside} with capabilities "
                f"{sorted(t.sub.capabilities)}" + (" other than those tried" if tried else "")
            )
            continue
        reservation = reservation_id(t.task_id, len(t.attempts) + 1)
        if deps.admission is not None and t.estimate is not None:
            admit_span = _child(
                t,
                "work.admission",
                {
                    tracing.GENAI_AGENT_ID: t.agent.agent_id,
                    "fleet.budget.amount": str(t.estimate),
                },
            )
            refusal = deps.admission.reserve(
                task_id=reservation,
                agent_id=t.agent.agent_id,
                fleet=t.sub.fleet or t.agent.fleet,
                amount=t.estimate,
                model=t.model,
                pool=t.sub.payer.id if t.sub.payer.kind == "pool" else None,
                trace_id=t.trace_id,
            )
            if admit_span is not None:
                if refusal is not None:
                    tracing.set_error(admit_span, refusal)
                admit_span.end()
            if refusal is not None:
                t.state, t.reason, t.agent = "refused", refusal, None
                continue
        t.reservation = reservation
        pipe.incr(inflight_key(t.agent.agent_id))
        pipe.expire(inflight_key(t.agent.agent_id), ttl)
        store.mark_dispatched(pipe, t.task_id)
    pipe.execute()


def _outside_on(deps: WorkDeps) -> bool:
    return deps.outside is not None and deps.policy.routing.outside.allowed


def _add_outside(
    deps: WorkDeps,
    t: _Task,
    picker: Picker,
    discovered: set[tuple[str | None, frozenset[str]]],
) -> None:
    """Outside candidates for this task's capabilities into its picker, once per batch;
    the discovery (cached per capability set) runs inside the task's span."""
    if deps.outside is None or not deps.policy.routing.outside.allowed:
        return
    caps = frozenset(t.sub.capabilities)
    if (t.sub.fleet, caps) in discovered:
        return
    discovered.add((t.sub.fleet, caps))
    span = _child(
        t,
        "work.discover",
        {
            "fleet.outside.discovery": deps.policy.routing.outside.discovery,
            "fleet.outside.capabilities": ",".join(sorted(caps)),
        },
    )
    token = tracing.attach(tracing.context_with(span)) if span is not None else None
    try:
        own = deps.directory.own_ids() | picker.own_agents
        services, called = deps.outside.services(caps, own)
    except (GatewayError, redis.RedisError) as exc:
        # Discovery failing leaves our own agents: outside agents are an addition.
        log.warning("outside agent discovery failed: %s", exc)
        if span is not None:
            tracing.set_error(span, f"discovery failed: {exc}")
        services, called = [], False
    finally:
        if token is not None:
            tracing.detach(token)
    if span is not None:
        span.set_attribute("fleet.outside.cached", not called)
        span.set_attribute("fleet.outside.found", len(services))
        span.end()
    picker.add_outside(outside_candidates(services, t.sub.fleet, deps.redis))


def _deliver(deps: WorkDeps, tasks: Sequence[_Task]) -> None:
    if not tasks:
        return

    timeout_s = deps.policy.work.delivery_timeout_s

    for t in tasks:
        assert t.agent is not None
        t.a2a_span = _child(
            t,
            f"invoke_agent {t.agent.agent_id}",
            {
                tracing.GENAI_OPERATION_NAME: tracing.OP_INVOKE_AGENT,
                tracing.GENAI_AGENT_ID: t.agent.agent_id,
                tracing.GENAI_REQUEST_MODEL: t.model,
            },
            kind=tracing.SpanKind.CLIENT,
        )
    headers = [_headers(t) for t in tasks]

    async def one(t: _Task, headers: dict[str, str]) -> Outcome:
        assert t.agent is not None
        return await deps.delivery.deliver(
            deps.a2a_base(t.agent),
            text=t.sub.input or t.sub.type,
            metadata={
                "fleet_task_id": t.task_id,
                "type": t.sub.type,
                "model": t.model,
                "estimated_tokens": t.sub.estimated_tokens,
            },
            headers=headers,
            timeout_s=timeout_s,
        )

    async def all_of() -> list[Outcome]:
        return list(await asyncio.gather(*(one(t, h) for t, h in zip(tasks, headers, strict=True))))

    outcomes = deps.loop.run(all_of())
    pipe = deps.redis.pipeline(transaction=False)
    for t, outcome in zip(tasks, outcomes, strict=True):
        assert t.agent is not None
        t.outcome = outcome
        pipe.decr(inflight_key(t.agent.agent_id))
        if t.a2a_span is not None:
            tracing.set_attributes(
                t.a2a_span,
                {
                    tracing.GENAI_USAGE_INPUT_TOKENS: outcome.input_tokens,
                    tracing.GENAI_USAGE_OUTPUT_TOKENS: outcome.output_tokens,
                    tracing.GENAI_RESPONSE_ID: outcome.remote_task_id,
                    "fleet.a2a.state": outcome.state,
                    "fleet.a2a.spent": outcome.spent,
                },
            )
            if not outcome.ok:
                tracing.set_error(t.a2a_span, f"{outcome.state}: {outcome.detail}")
            t.a2a_span.end()
            t.a2a_span = None
    pipe.execute()


def _after(deps: WorkDeps, t: _Task) -> bool:
    """Settle or release one delivered task; True when it should go to another agent."""
    o = t.outcome
    if t.agent is None or o is None:
        return False  # unroutable or refused: its state says why
    t.outcome = None
    attempt: dict[str, Any] = {
        "agent_id": t.agent.agent_id,
        "state": o.state,
        "latency_ms": round(o.latency_ms, 1),
    }
    if t.agent.outside:
        attempt["outside"] = True
        attempt["service_id"] = t.agent.service_id
    if o.detail:
        attempt["detail"] = o.detail
    t.attempts.append(attempt)
    failed = not o.ok
    deps.measured.record(t.agent.agent_id, latency_ms=o.latency_ms, failed=failed, cost=o.cost)
    if deps.admission is not None and t.reservation is not None:
        settle_span = _child(
            t, "work.settle" if o.spent else "work.release", {"fleet.a2a.state": o.state}
        )
        if o.spent:
            actual = o.cost if o.cost is not None else (t.estimate or Decimal(0))
            usage = None
            if o.input_tokens is not None or o.output_tokens is not None:
                usage = {
                    "input_tokens": o.input_tokens or 0,
                    "output_tokens": o.output_tokens or 0,
                }
            deps.admission.settle(t.reservation, actual, charged=o.cost, usage=usage)
        else:
            deps.admission.release(t.reservation)
        if settle_span is not None:
            settle_span.end()
    t.state, t.reason = (
        (o.state if o.state in ("completed", "canceled") else "failed"),
        (None if o.ok else f"{o.state}: {o.detail}".strip(": ")),
    )
    t.last = o
    return failed and not o.spent


def _record(t: _Task) -> dict[str, Any]:
    last = t.last
    return {
        "task_id": t.task_id,
        "idempotency_key": t.sub.idempotency_key,
        "type": t.sub.type,
        "fleet": t.sub.fleet or (t.agent.fleet if t.agent else None),
        "capabilities": list(t.sub.capabilities),
        "estimated_tokens": t.sub.estimated_tokens,
        "payer_kind": t.sub.payer.kind,
        "payer_id": t.sub.payer.id,
        "model": t.model,
        "model_reason": t.model_reason,
        "state": t.state,
        "reason": t.reason,
        "agent_id": t.attempts[-1]["agent_id"] if t.attempts else None,
        "attempts": t.attempts,
        "estimate": str(t.estimate) if t.estimate is not None else None,
        "actual": str(last.cost) if last is not None and last.cost is not None else None,
        "charged": str(last.cost) if last is not None and last.cost is not None else None,
        "input_tokens": last.input_tokens if last else None,
        "output_tokens": last.output_tokens if last else None,
        "latency_ms": round(last.latency_ms, 1) if last else None,
        "trace_id": t.trace_id,
        "parent_task_id": t.sub.parent_task_id,
        "root_task_id": t.root_task_id,
        "agent_traceparent": last.traceparent_seen if last else None,
        "created_at": t.created_at,
        "finished_at": time.time(),
    }


def new_task_id() -> str:
    return uuid.uuid4().hex


def task_id_for(message_id: str, index: int | None = None) -> str:
    """The id of a task that came in a queue message (``index``: its place in a batch).

    32 hex like every task id, since a sub-task names its parent by one (a message id is
    a dashed UUID, and a batch holds many tasks), and the same on every redelivery of
    the message, so a redelivered task is known for the one already claimed."""
    if index is None:
        try:
            return uuid.UUID(message_id).hex
        except ValueError:
            pass
    return hashlib.sha256(f"{message_id}.{index}".encode()).hexdigest()[:32]
