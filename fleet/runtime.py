"""The composition root: everything a process needs, built once from the settings.

A worker builds it when its process starts (``workers/signals.py``), the API in
its lifespan (``web/app.py``), the CLI when a command needs it, tests through
one fixture. Nothing here is built at import, and nothing here knows Celery:
whatever sends messages (tasks by name, audit events to their queue) is handed
in by the side that owns the broker.

Parts that start threads or open connections (the gateway clients, the sweep
poller, the HTTP clients) are built on first use, once, under a lock, so a
process that never calls the gateway never starts its loop.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeVar

import httpx
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy.orm import Session, sessionmaker

from config.settings import Settings
from fleet import audit
from fleet.approvals import Approvals
from fleet.audit.events import AuditEvent
from fleet.audit.group import GroupSink
from fleet.audit.log import AuditLog
from fleet.budgets.admission import BUDGET_PAUSE_TASK, Budgets, pause_message
from fleet.clock import Clock, SystemClock
from fleet.control import ControlDeps, LoopState
from fleet.durability.control import is_provisioning_frozen
from fleet.escalation.actions import ActionDeps
from fleet.gateway import GatewayClient, GatewayConfig
from fleet.gateway.loop import LoopGatewayClient
from fleet.hotstate import Lease, connect, try_lock
from fleet.identity import Identities
from fleet.monitoring import sweep as sweeping
from fleet.monitoring.alerts import Handoff
from fleet.monitoring.ingest import AgentDirectory, IngestDeps
from fleet.monitoring.poller import SweepPoller
from fleet.monitoring.silence import SilenceDeps
from fleet.provisioning.pipeline import ProvisioningDeps
from fleet.scaling.autoscaler import ScalingDeps
from fleet.secrets import AgentKeyRing, KeyVault
from fleet.sla.alerts import AlertDeps
from fleet.sla.service import SlaDeps
from fleet.storage.db import engine_for, session_factory
from fleet.work import store as work_store
from fleet.work.service import WorkDeps

log = logging.getLogger(__name__)

Message = tuple[str, dict[str, Any]]
AuditSink = Callable[[Sequence[AuditEvent]], None]

T = TypeVar("T")


class Send(Protocol):
    """Sends task messages (name, kwargs), all over one broker connection."""

    def __call__(self, messages: Sequence[Message]) -> None: ...


class Runtime:
    """One process's dependencies. Build it with :func:`build_runtime`; close it at exit."""

    def __init__(
        self,
        settings: Settings,
        *,
        send: Send,
        enqueue_audit: AuditSink,
        clock: Clock | None = None,
        alert_task: str,
        escalate_task: str,
    ) -> None:
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.send = send
        self._enqueue_audit = enqueue_audit
        self._alert_task = alert_task
        self._escalate_task = escalate_task
        self.engine = engine_for(settings.sqlalchemy_url)
        self.sessions: sessionmaker[Session] = session_factory(self.engine)
        # redis-py connects on first command: building the client costs nothing.
        self.redis: redis.Redis = connect(settings.redis_url)
        self.audit_log = AuditLog.from_settings(settings, engine=self.engine)
        self.approvals = Approvals(self.sessions, settings.policy.approvals, clock=self.clock)
        # Re-entrant: building one part builds the parts it uses.
        self._lock = threading.RLock()
        self._built: dict[str, Any] = {}
        self._previous_sink: audit.Sink | None = None
        self._installed_sink: audit.Sink | None = None

    def _once(self, name: str, build: Callable[[], T]) -> T:
        with self._lock:
            if name not in self._built:
                self._built[name] = build()
            value: T = self._built[name]
            return value

    # ------------------------------------------------------------------ the audit sink

    def audit_sink(self, events: Sequence[AuditEvent]) -> None:
        """The queue, or the log directly when the broker cannot be reached.

        A decision taken at the CLI while Redis is down is still audited.
        """
        try:
            self._enqueue_audit(events)
        except Exception as exc:  # noqa: BLE001 - whatever stops the queue, the entry must still be written
            log.warning(
                "audit queue unreachable (%s); appending %d entries directly", exc, len(events)
            )
            self.audit_log.append(list(events))

    def install_audit_sink(self, *, grouped: bool = False) -> None:
        """Make ``fleet.audit.record`` send through :meth:`audit_sink` in this process.

        grouped: the events of concurrent threads share queue messages (threads-pool
        workers; see fleet.audit.group).
        """
        sink: audit.Sink = GroupSink(self.audit_sink) if grouped else self.audit_sink
        previous = audit.use_sink(sink)
        if self._installed_sink is None:
            self._previous_sink = previous
        self._installed_sink = sink

    # ------------------------------------------------------------------ gateway and HTTP clients

    @property
    def vault(self) -> KeyVault:
        return self._once("vault", lambda: KeyVault(self.settings.secrets_key.get_secret_value()))

    @property
    def keys(self) -> AgentKeyRing:
        """The admin key from settings and each agent's own key, decrypted when a call needs it."""
        admin = self.settings.gateway.admin_key.get_secret_value()
        return self._once("keys", lambda: AgentKeyRing(self.sessions, self.vault, admin))

    @property
    def identities(self) -> Identities:
        """Accounts, service tokens, sessions and the API token: bearer tokens to principals."""
        return self._once(
            "identities", lambda: Identities.from_settings(self.settings, self.sessions, self.clock)
        )

    @property
    def gateway(self) -> LoopGatewayClient:
        # One client per process, on one background event loop: its connection
        # pool and circuit breakers are shared by every thread of a threads-pool worker.
        return self._once(
            "gateway", lambda: LoopGatewayClient.from_settings(self.settings, self.keys)
        )

    @property
    def gateway_sync(self) -> GatewayClient:
        """A plain synchronous client, for the occasional call from the audit side."""
        return self._once(
            "gateway_sync", lambda: GatewayClient.from_settings(self.settings, self.keys)
        )

    @property
    def mirror_gateway(self) -> GatewayClient:
        # One attempt per call: the outbox is the retry layer, not a second one on top.
        return self._once(
            "mirror_gateway",
            lambda: GatewayClient(
                dataclasses.replace(GatewayConfig.from_settings(self.settings), max_attempts=1),
                self.keys,
            ),
        )

    @property
    def poller(self) -> SweepPoller:
        def build() -> SweepPoller:
            s = self.settings
            config = dataclasses.replace(
                GatewayConfig.from_settings(s),
                breaker_failure_threshold=s.metrics.breaker_failure_threshold,
            )
            return SweepPoller(
                config,
                in_flight=s.metrics.in_flight,
                timeout_s=s.metrics.poll_timeout_s,
                keys=self.keys,
            )

        return self._once("poller", build)

    @property
    def webhooks(self) -> httpx.Client:
        return self._once(
            "webhooks", lambda: httpx.Client(headers={"User-Agent": "fleet-commander-alerts"})
        )

    @property
    def remediation_http(self) -> httpx.Client:
        return self._once(
            "remediation_http",
            lambda: httpx.Client(
                timeout=self.settings.policy.escalation.remediation_timeout_s,
                follow_redirects=False,
            ),
        )

    # ------------------------------------------------------------------ each area's deps

    def lock(self, name: str, ttl_s: float) -> AbstractContextManager[Lease | None]:
        return try_lock(self.redis, name, ttl_s)

    @property
    def provisioning(self) -> ProvisioningDeps:
        def build() -> ProvisioningDeps:
            s = self.settings
            return ProvisioningDeps(
                sessions=self.sessions,
                gateway=self.gateway,
                policy=s.policy,
                vault=self.vault,
                clock=self.clock,
                audit=audit.record,
                lock=self.lock,
                is_frozen=lambda fleet: (
                    is_provisioning_frozen(self.sessions, fleet)
                    or self.loop_state.fleet_frozen(fleet)
                ),
                check_loop=self.loop_state.check,
                lock_ttl_s=s.schedule.provisioning_lock_ttl_s,
                keys=self.keys,
            )

        return self._once("provisioning", build)

    @property
    def scaling(self) -> ScalingDeps:
        def build() -> ScalingDeps:
            return ScalingDeps(
                sessions=self.sessions,
                redis=self.redis,
                policy=self.settings.policy,
                clock=self.clock,
                send=self.send,
                audit=audit.record,
                lock=self.lock,
            )

        return self._once("scaling", build)

    @property
    def monitor(self) -> sweeping.MonitorDeps:
        def build() -> sweeping.MonitorDeps:
            s = self.settings
            return sweeping.MonitorDeps(
                redis=self.redis,
                sessions=self.sessions,
                policy=s.policy,
                metrics=s.metrics,
                interval_s=s.schedule.metrics_sweep_s,
                admin_key_configured=bool(s.gateway.admin_key.get_secret_value()),
                paused=self.loop_state,
                clock=self.clock,
                handoff=Handoff(
                    notify=self._notify,
                    escalate=self._escalate,
                    traffic_cut_fraction=s.policy.escalation.traffic_cut_fraction,
                ),
            )

        return self._once("monitor", build)

    @property
    def heartbeat_ingest(self) -> IngestDeps:
        def build() -> IngestDeps:
            s = self.settings
            return IngestDeps(
                redis=self.redis,
                sessions=self.sessions,
                policy=s.policy,
                clock=self.clock,
                handoff=Handoff(
                    notify=self._notify,
                    escalate=self._escalate,
                    traffic_cut_fraction=s.policy.escalation.traffic_cut_fraction,
                ),
                directory=AgentDirectory(self.sessions, s.policy, s.stream.directory_ttl_s),
                snapshot_ttl_s=s.metrics.snapshot_ttl_s,
                state_ttl_s=s.metrics.state_ttl_s,
                rejected_seen_s=s.worker.visibility_timeout_s + 3600,
            )

        return self._once("heartbeat_ingest", build)

    @property
    def silence(self) -> SilenceDeps:
        def build() -> SilenceDeps:
            s = self.settings
            return SilenceDeps(
                redis=self.redis,
                sessions=self.sessions,
                policy=s.policy,
                clock=self.clock,
                handoff=Handoff(
                    notify=self._notify,
                    escalate=self._escalate,
                    traffic_cut_fraction=s.policy.escalation.traffic_cut_fraction,
                ),
                statuses=s.metrics.statuses,
                state_ttl_s=s.metrics.state_ttl_s,
            )

        return self._once("silence", build)

    def _notify(self, alert_ids: list[str]) -> None:
        self.send([(self._alert_task, {"alert_ids": alert_ids})])

    def _escalate(self, pairs: list[tuple[str, str]]) -> None:
        self.send(
            [
                (self._escalate_task, {"agent_id": agent, "source": source})
                for agent, source in pairs
            ]
        )

    @property
    def sla(self) -> SlaDeps:
        s = self.settings
        return self._once(
            "sla",
            lambda: SlaDeps(self.sessions, self.redis, s.policy, s.sla, self.clock, self.send),
        )

    @property
    def sla_alerts(self) -> AlertDeps:
        g = self.settings.gateway
        return AlertDeps(
            self.sessions,
            self.settings.policy,
            self.clock,
            self.gateway,
            admin_agent_id=g.admin_agent_id,
            operator_agent_id=g.operator_agent_id,
        )

    @property
    def escalation(self) -> ActionDeps:
        return self._once(
            "escalation",
            lambda: ActionDeps(
                self.sessions,
                self.settings.policy,
                self.clock,
                self.gateway,
                self.remediation_http,
                self.approvals,
                admin_agent_id=self.settings.gateway.admin_agent_id,
                operator_agent_id=self.settings.gateway.operator_agent_id,
                paused=self.loop_state,
            ),
        )

    @property
    def loop_state(self) -> LoopState:
        """The kill switch as the sweep, escalation, dispatch and provisioning read it."""
        return self._once(
            "loop_state",
            lambda: LoopState(self.redis, self.sessions, self.settings.policy.control),
        )

    @property
    def control(self) -> ControlDeps:
        """The kill switch's own operations (fleet.control)."""
        return self._once(
            "control",
            lambda: ControlDeps(
                self.sessions,
                self.redis,
                self.approvals,
                self.clock,
                self.gateway,
                self.settings.policy.control,
                lambda messages: self.send(messages),
            ),
        )

    @property
    def work(self) -> WorkDeps:
        """The work plane (fleet/work): routing, A2A delivery, measured signals."""

        def build() -> WorkDeps:
            from fleet.gateway.loop import BackgroundLoop
            from fleet.work.a2a import A2ADelivery
            from fleet.work.admission import BudgetsAdmission
            from fleet.work.measured import MeasuredSignals
            from fleet.work.outside import DiscoveryCache, OutsideDirectory
            from fleet.work.selection import CandidateDirectory, Listed

            s = self.settings
            loop = BackgroundLoop("work-loop")
            delivery = loop.build(
                lambda: A2ADelivery(
                    max_connections=s.work.max_connections,
                    card_ttl_s=s.work.card_ttl_s,
                    poll_interval_s=s.policy.work.poll_interval_s,
                )
            )
            gateway = s.gateway_url

            def a2a_base(agent: Listed) -> str:
                return agent.a2a_url or s.work.a2a_url_template.format(
                    gateway=gateway, agent_id=agent.agent_id
                )

            outside_policy = s.policy.routing.outside
            gateway_sync = self.gateway_sync

            def discover(capabilities: Collection[str]) -> list[Mapping[str, Any]]:
                """One marketplace call for services matching ``capabilities``."""
                from fleet.gateway import operations as ops

                caps = sorted(capabilities)
                if outside_policy.discovery == "best_match":
                    match = gateway_sync.run(
                        ops.best_match(
                            caps[0] if caps else "",
                            budget=outside_policy.max_cost_per_call,
                            limit=outside_policy.discovery_limit,
                        )
                    )
                    return [m.service.model_dump() for m in match.matches]
                found = gateway_sync.run(
                    ops.search_services(
                        tags=caps,
                        max_cost=outside_policy.max_cost_per_call,
                        limit=outside_policy.discovery_limit,
                    )
                )
                return [x.model_dump() for x in found.services]

            return WorkDeps(
                redis=self.redis,
                policy=s.policy,
                settings=s.work,
                directory=CandidateDirectory(self.sessions, self.redis),
                loop=loop,
                delivery=delivery,
                measured=MeasuredSignals(self.redis, every_s=s.work.measured_flush_s),
                a2a_base=a2a_base,
                admission=BudgetsAdmission(self.budgets, s.policy),
                outside=OutsideDirectory(
                    DiscoveryCache(self.redis, outside_policy), discover, outside_policy
                ),
                task_lookup=lambda task_id: work_store.task_state(
                    self.redis, self.sessions, task_id
                ),
                check_loop=self.loop_state.check,
            )

        return self._once("work", build)

    @property
    def budgets(self) -> Budgets:
        """Admission against the budgets: its own Redis client, with a short timeout, so a
        store that does not answer refuses work quickly (fail closed)."""

        def build() -> Budgets:
            timeout = self.settings.budgets.redis_timeout_s
            # One quick retry (a pooled connection Redis closed), no backoff: a refusal
            # costs at most about two timeouts.
            client = redis.Redis.from_url(
                self.settings.redis_url,
                decode_responses=True,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 1),
            )
            return Budgets(
                client,
                self.settings.policy.budgets,
                self.clock,
                on_pause=lambda event: self.send(
                    [(BUDGET_PAUSE_TASK, {"pause": pause_message(event)})]
                ),
            )

        return self._once("budgets", build)

    # ------------------------------------------------------------------ the end

    def close(self) -> None:
        """Stop what was started and put back the audit sink this runtime replaced."""
        with self._lock:
            built, self._built = self._built, {}
        for part in built.values():
            close = getattr(part, "close", None)
            if callable(close):
                close()
        if self._installed_sink is not None and audit.current_sink() is self._installed_sink:
            audit.use_sink(self._previous_sink)
        self._installed_sink = None


def build_runtime(
    settings: Settings,
    *,
    send: Send,
    enqueue_audit: AuditSink,
    alert_task: str,
    escalate_task: str,
    clock: Clock | None = None,
) -> Runtime:
    """The process's runtime from its settings and the broker-side callables."""
    return Runtime(
        settings,
        send=send,
        enqueue_audit=enqueue_audit,
        alert_task=alert_task,
        escalate_task=escalate_task,
        clock=clock,
    )
