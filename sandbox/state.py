"""The sandbox's state: agents, keys, wallets, SLAs and everything tools record.

All of it lives in memory, in plain dicts of ``__slots__`` objects. Simulated
behaviour is never stored as a series: metrics come from
:mod:`sandbox.behaviour` when asked, and simulated spending is settled into a
wallet lazily (whenever the wallet is read or moved) by integrating the burn
rate since the last settlement. Seeded agents share every immutable piece
(terms, capabilities, metadata, the opening balance): a seeded agent with its
key, wallet, SLA and listing costs about a kilobyte.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import time
from collections import deque
from collections.abc import Iterator, Mapping
from decimal import Decimal
from typing import Any

from sandbox.behaviour import (
    PROFILE_NAMES,
    Metrics,
    Params,
    ProfileMix,
    agent_hash,
    metrics_at,
    spend_between,
)
from sandbox.validate import ZERO, fmt_money, iso

LIVE = "active"
DEREGISTERED = "deregistered"

# Per-agent record lists are capped so a long soak test cannot grow without
# bound; totals keep counting past the cap.
MAX_RECORDS_PER_AGENT = 2000
MAX_MESSAGES = 100_000
# Bisection resolution when locating when a breach started or ended.
EPISODE_RESOLUTION_S = 30.0

# Tiers: daily fee and price per tool call (what estimate_cost projects with).
TIERS: dict[str, tuple[Decimal, Decimal]] = {
    "free": (Decimal("0.00"), Decimal("0.0010")),
    "starter": (Decimal("1.00"), Decimal("0.0008")),
    "standard": (Decimal("2.00"), Decimal("0.0007")),
    "pro": (Decimal("10.00"), Decimal("0.0005")),
    "premium": (Decimal("20.00"), Decimal("0.0004")),
    "enterprise": (Decimal("50.00"), Decimal("0.0002")),
}

_SEED_CAPABILITIES: tuple[tuple[str, ...], ...] = (
    ("summarise",),
    ("translate",),
    ("classify", "summarise"),
    ("code-review",),
    ("search", "summarise"),
    ("extract", "classify"),
    ("support", "translate"),
    ("research", "search"),
)
_SEED_PRICES: tuple[Decimal, ...] = tuple(
    Decimal(p) for p in ("0.01", "0.02", "0.03", "0.04", "0.05")
)


class Clock:
    """Wall time plus an offset the admin API can advance (never rewind)."""

    def __init__(self) -> None:
        self._wall0 = time.time()
        self._mono0 = time.monotonic()
        self.offset = 0.0

    def now(self) -> float:
        return self._wall0 + (time.monotonic() - self._mono0) + self.offset

    def advance(self, seconds: float) -> float:
        self.offset += seconds
        return self.now()


class AgentExtra:
    """What only some agents have; kept off the Agent so seeded agents stay small."""

    __slots__ = (
        "audits",
        "audit_count",
        "transactions",
        "transaction_count",
        "chains",
        "submitted",
        "disputes",
        "violations",
        "messages_sent",
        "notes",
    )

    def __init__(self) -> None:
        self.audits: list[tuple[float, dict[str, Any]]] = []  # (sandbox time, entry)
        self.audit_count = 0
        # (transaction_id, kind, amount, sandbox_time, detail)
        self.transactions: list[tuple[str, str, Decimal, float, str]] = []
        self.transaction_count = 0
        self.chains: list[dict[str, Any]] = []
        self.submitted: dict[str, Any] = {}
        self.disputes: list[str] = []
        # Closed violation episodes: (sla_id, start, end, breached_terms)
        self.violations: list[tuple[str, float, float, tuple[str, ...]]] = []
        self.messages_sent = 0
        self.notes: list[dict[str, Any]] = []


class Agent:
    __slots__ = (
        "agent_id",
        "tier",
        "capabilities",
        "metadata",
        "registered_at",
        "status",
        "api_key",
        "old_key",
        "old_key_expires",
        "key_rotated_at",
        "profile",
        "pinned",
        "h",
        "origin",
        "_params",
        "wallet",
        "sla",
        "service",
        "extra",
        "ended_at",
        "end_reason",
        "seeded",
    )

    def __init__(
        self,
        agent_id: str,
        tier: str,
        capabilities: tuple[str, ...],
        metadata: Mapping[str, Any],
        now: float,
        api_key: str,
        h: int,
        profile: int,
        seeded: bool = False,
    ) -> None:
        self.agent_id = agent_id
        self.tier = tier
        self.capabilities = capabilities
        self.metadata = metadata
        self.registered_at = now
        self.status = LIVE
        self.api_key = api_key
        self.old_key: str | None = None
        self.old_key_expires = 0.0
        self.key_rotated_at = now
        self.profile = profile
        self.pinned = False
        self.h = h
        self.origin = now
        self._params: Params | None = None
        self.wallet: Wallet | None = None
        self.sla: Sla | None = None
        self.service: Service | None = None
        self.extra: AgentExtra | None = None
        self.ended_at = 0.0
        self.end_reason = ""
        self.seeded = seeded

    @property
    def live(self) -> bool:
        return self.status == LIVE

    def params(self) -> Params:
        if self._params is None:
            self._params = Params(self.h)
        return self._params

    def metrics(self, now: float) -> Metrics:
        return metrics_at(self.profile, self.h, self.params(), now, self.origin)

    def more(self) -> AgentExtra:
        if self.extra is None:
            self.extra = AgentExtra()
        return self.extra


class Wallet:
    __slots__ = (
        "wallet_id",
        "owner",
        "balance",
        "frozen",
        "frozen_reason",
        "created_at",
        "settled_at",
        "carry",
        "simulated_spend",
        "treasury",
    )

    def __init__(
        self,
        wallet_id: str,
        owner: Agent | None,
        balance: Decimal,
        now: float,
        treasury: bool = False,
    ) -> None:
        self.wallet_id = wallet_id
        self.owner = owner
        self.balance = balance
        self.frozen = False
        self.frozen_reason = ""
        self.created_at = now
        self.settled_at = now
        # Simulated spending below one cent, carried to the next settlement.
        self.carry = 0.0
        self.simulated_spend = ZERO
        self.treasury = treasury


class Sla:
    __slots__ = (
        "sla_id",
        "agent",
        "terms",
        "limits",
        "created_at",
        "status",
        "episode_start",
        "episode_terms",
        "last_eval",
        "last_breached",
    )

    def __init__(
        self,
        sla_id: str,
        agent: Agent,
        terms: Mapping[str, Any],
        limits: tuple[tuple[str, float], ...],
        now: float,
    ) -> None:
        self.sla_id = sla_id
        self.agent = agent
        self.terms = terms  # as given (money as strings), for display
        self.limits = limits  # (term, float limit) for evaluation
        self.created_at = now
        self.status = LIVE
        self.episode_start: float | None = None
        self.episode_terms: tuple[str, ...] = ()
        self.last_eval = now
        # None: never evaluated; the state at creation is then computed, not assumed.
        self.last_breached: bool | None = None


class Service:
    __slots__ = ("service_id", "agent", "capabilities", "pricing", "price", "registered_at")

    def __init__(
        self,
        service_id: str,
        agent: Agent,
        capabilities: tuple[str, ...],
        pricing: Mapping[str, Any],
        price: Decimal,
        now: float,
    ) -> None:
        self.service_id = service_id
        self.agent = agent
        self.capabilities = capabilities
        self.pricing = pricing
        self.price = price
        self.registered_at = now


class Dispute:
    __slots__ = (
        "dispute_id",
        "agent_id",
        "counterparty",
        "reason",
        "details",
        "status",
        "opened_at",
        "resolution",
        "amount",
        "notes",
        "resolved_at",
    )

    def __init__(
        self,
        dispute_id: str,
        agent_id: str,
        counterparty: str,
        reason: str,
        details: Any,
        now: float,
    ) -> None:
        self.dispute_id = dispute_id
        self.agent_id = agent_id
        self.counterparty = counterparty
        self.reason = reason
        self.details = details
        self.status = "open"
        self.opened_at = now
        self.resolution = ""
        self.amount = ZERO
        self.notes = ""
        self.resolved_at = 0.0

    def view(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "dispute_id": self.dispute_id,
            "agent_id": self.agent_id,
            "counterparty": self.counterparty,
            "reason": self.reason,
            "status": self.status,
            "opened_at": iso(self.opened_at),
        }
        if self.status == "resolved":
            out.update(
                resolution=self.resolution,
                amount=fmt_money(self.amount),
                notes=self.notes,
                resolved_at=iso(self.resolved_at),
            )
        return out


class Message:
    __slots__ = (
        "message_id",
        "sender",
        "to",
        "subject",
        "body",
        "priority",
        "requires_response",
        "sent_at",
    )

    def __init__(
        self,
        message_id: str,
        sender: str,
        to: str,
        subject: str,
        body: str,
        priority: str,
        requires_response: bool,
        now: float,
    ) -> None:
        self.message_id = message_id
        self.sender = sender
        self.to = to
        self.subject = subject
        self.body = body
        self.priority = priority
        self.requires_response = requires_response
        self.sent_at = now

    def view(self) -> dict[str, Any]:
        return {
            "message_id": self.message_id,
            "from": self.sender,
            "to": self.to,
            "subject": self.subject,
            "body": self.body,
            "priority": self.priority,
            "requires_response": self.requires_response,
            "sent_at": iso(self.sent_at),
        }


def sla_limits(terms: Mapping[str, Any]) -> tuple[tuple[str, float], ...]:
    """The evaluable part of validated terms (review_days is not a metric)."""
    return tuple((name, float(terms[name])) for name in SLA_METRIC_TERMS if name in terms)


# Term → how it is met. Percent terms compare the shortfall from 100 %, so
# "margin" means the share of the allowed downtime / inaccuracy still unused.
SLA_METRIC_TERMS: tuple[str, ...] = (
    "p99_latency_ms",
    "uptime_pct",
    "accuracy_pct",
    "max_cost_per_task",
    "max_error_rate",
)


def term_margins(limits: tuple[tuple[str, float], ...], m: Metrics) -> tuple[list[str], float]:
    """(breached terms, smallest margin as a fraction; negative when breached)."""
    breached: list[str] = []
    worst = 1.0
    for name, limit in limits:
        if name == "p99_latency_ms":
            margin = (limit - m.latency_p99) / limit
        elif name == "uptime_pct" or name == "accuracy_pct":
            actual = m.uptime_pct if name == "uptime_pct" else m.accuracy_pct
            allowed = 100.0 - limit
            margin = (
                1.0 - (100.0 - actual) / allowed
                if allowed > 0
                else (0.0 if actual >= 100.0 else -1.0)
            )
        elif name == "max_cost_per_task":
            margin = (
                (limit - m.cost_per_task) / limit
                if limit > 0
                else (0.0 if m.cost_per_task <= 0 else -1.0)
            )
        else:  # max_error_rate
            margin = (
                (limit - m.error_rate) / limit
                if limit > 0
                else (0.0 if m.error_rate <= 0 else -1.0)
            )
        if margin < 0:
            breached.append(name)
        if margin < worst:
            worst = margin
    # A dead agent is "19900 % over" its uptime budget; past -100 % the number says nothing more.
    return breached, max(-1.0, worst)


class SandboxState:
    """Everything the tools read and change. One instance per reset."""

    def __init__(
        self,
        *,
        seed: int,
        clock: Clock,
        mix: ProfileMix,
        key_overlap_s: float,
        treasury_wallet: str,
        sla_templates: Mapping[str, Mapping[str, Any]],
        rate_limit: int,
        rate_window_s: float,
    ) -> None:
        self.seed = seed
        self.clock = clock
        self.mix = mix
        self.key_overlap_s = key_overlap_s
        self.treasury_wallet = treasury_wallet
        self.sla_templates = sla_templates
        self.rate_limit = rate_limit
        self.rate_window_s = rate_window_s
        self.started_at = clock.now()

        self.agents: dict[str, Agent] = {}
        # The last deregistered incarnation of each id (for the admin API).
        self.retired: dict[str, Agent] = {}
        self.deregistered_total = 0
        self.keys: dict[str, Agent] = {}
        self.wallets: dict[str, Wallet] = {}
        self.disputes: dict[str, Dispute] = {}
        self.messages: deque[Message] = deque(maxlen=MAX_MESSAGES)
        self.messages_total = 0
        self.registrations_total = 0
        self.slas_total = 0
        self.audits_total = 0
        self.transactions_total = 0
        self.chains_total = 0
        self.seed_next: dict[str, int] = {}
        self._ids = itertools.count(1)
        self.rate_window_start = 0.0
        self.rate_window_count = 0

    # --- ids, keys, time -----------------------------------------------------------

    def now(self) -> float:
        return self.clock.now()

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):08d}"

    @staticmethod
    def new_key(tier: str) -> str:
        return f"a2a_{tier}_{os.urandom(16).hex()}"

    def agent_for_key(self, key: str, now: float) -> Agent | None:
        """The live agent a key belongs to; a rotated-out key works until its overlap ends."""
        agent = self.keys.get(key)
        if agent is None:
            return None
        if key != agent.api_key and now > agent.old_key_expires:
            del self.keys[key]
            agent.old_key = None
            return None
        return agent

    def count_call(self, now: float) -> None:
        """Calls in the current rate-limit window (what check_rate_limit reports)."""
        if now >= self.rate_window_start + self.rate_window_s:
            self.rate_window_start = now - (now % self.rate_window_s)
            self.rate_window_count = 0
        self.rate_window_count += 1

    # --- agents --------------------------------------------------------------------

    def profile_for(self, h: int) -> int:
        return self.mix.pick(h)

    def register(
        self,
        agent_id: str,
        tier: str,
        capabilities: tuple[str, ...],
        metadata: Mapping[str, Any],
        now: float,
    ) -> Agent:
        h = agent_hash(self.seed, agent_id)
        agent = Agent(
            agent_id, tier, capabilities, metadata, now, self.new_key(tier), h, self.profile_for(h)
        )
        self.agents[agent_id] = agent
        self.keys[agent.api_key] = agent
        self.registrations_total += 1
        return agent

    def deregister(self, agent: Agent, reason: str, now: float) -> None:
        if agent.wallet is not None:
            self.settle(agent.wallet, now)
        if agent.sla is not None:
            self.end_sla(agent.sla, now)
        agent.status = DEREGISTERED
        agent.ended_at = now
        agent.end_reason = reason
        agent.service = None
        self.keys.pop(agent.api_key, None)
        if agent.old_key:
            self.keys.pop(agent.old_key, None)
        del self.agents[agent.agent_id]
        self.retired[agent.agent_id] = agent
        self.deregistered_total += 1

    def set_profile(self, agent: Agent, profile: int, now: float) -> None:
        """Pin a behaviour; it starts afresh now (a degrading agent starts healthy)."""
        if agent.wallet is not None:
            self.settle(agent.wallet, now)
        if agent.sla is not None:
            self.evaluate(agent.sla, now)
        agent.profile = profile
        agent.pinned = True
        agent.origin = now
        if agent.sla is not None:
            # The new behaviour must not be read back over the old one's history.
            agent.sla.last_eval = now

    def iter_prefix(self, prefix: str) -> Iterator[Agent]:
        if not prefix:
            yield from self.agents.values()
            return
        for agent_id, agent in self.agents.items():
            if agent_id.startswith(prefix):
                yield agent

    # --- wallets -------------------------------------------------------------------

    def settle(self, wallet: Wallet, now: float) -> None:
        """Charge the owner's simulated spending since the last settlement."""
        if now <= wallet.settled_at:
            return
        owner = wallet.owner
        if wallet.frozen or owner is None or owner.status != LIVE:
            wallet.settled_at = now
            return
        dollars = (
            spend_between(owner.profile, owner.params(), owner.origin, wallet.settled_at, now)
            + wallet.carry
        )
        wallet.settled_at = now
        cents = int(dollars * 100.0)
        wallet.carry = dollars - cents / 100.0
        if cents <= 0 or wallet.balance <= 0:
            return
        amount = min(Decimal(cents).scaleb(-2), wallet.balance)
        wallet.balance -= amount
        wallet.simulated_spend += amount

    def treasury(self, wallet_id: str, now: float) -> Wallet:
        wallet = self.wallets.get(wallet_id)
        if wallet is None:
            wallet = Wallet(wallet_id, None, ZERO, now, treasury=True)
            self.wallets[wallet_id] = wallet
        return wallet

    def recent_spend(self, agent: Agent, now: float, window_s: float = 3600.0) -> Decimal:
        if agent.extra is None:
            return ZERO
        total = ZERO
        cutoff = now - window_s
        for _, kind, amount, when, _ in reversed(agent.extra.transactions):
            if when < cutoff:
                break
            if kind == "spend":
                total += amount
        return total

    def record(self, agent: Agent, kind: str, amount: Decimal, now: float, detail: str) -> str:
        txn_id = self.new_id("txn")
        extra = agent.more()
        append_capped(extra.transactions, (txn_id, kind, amount, now, detail))
        extra.transaction_count += 1
        self.transactions_total += 1
        return txn_id

    # --- SLAs ----------------------------------------------------------------------

    def breached_at(self, sla: Sla, t: float) -> list[str]:
        return term_margins(sla.limits, sla.agent.metrics(t))[0]

    def _bisect(self, sla: Sla, lo: float, hi: float, want: bool) -> float:
        """Earliest t in (lo, hi] with breached(t) == want, given it holds at hi and not at lo."""
        while hi - lo > EPISODE_RESOLUTION_S:
            mid = (lo + hi) / 2.0
            if bool(self.breached_at(sla, mid)) == want:
                hi = mid
            else:
                lo = mid
        return hi

    def _onset(self, sla: Sla, since: float, now: float) -> float:
        """When the breach seen at ``now`` began: the latest crossing after ``since``.

        Gallops back from now (1, 2, 4 ... minutes) to the nearest compliant
        moment, then bisects: a flaky agent's onset is its current spike, a
        degrading agent's is found in a logarithmic number of steps even after
        a month-long jump of the clock.
        """
        step = 60.0
        breached_t = now
        while True:
            t = breached_t - step
            if t <= since:
                if self.breached_at(sla, since):
                    return since
                return self._bisect(sla, since, breached_t, True)
            if not self.breached_at(sla, t):
                return self._bisect(sla, t, breached_t, True)
            breached_t = t
            step *= 2.0

    def _recovery(self, sla: Sla, since: float, now: float) -> float:
        """When the episode known breached at ``since`` ended: the first compliant moment after it."""
        step = 60.0
        breached_t = since
        while True:
            t = breached_t + step
            if t >= now:
                return self._bisect(sla, breached_t, now, False)
            if not self.breached_at(sla, t):
                return self._bisect(sla, breached_t, t, False)
            breached_t = t
            step *= 2.0

    def evaluate(self, sla: Sla, now: float) -> tuple[list[str], float, Metrics]:
        """Check the SLA now and keep its violation episodes up to date.

        Between two evaluations the behaviour is a known function of time, so
        the moment a breach began (or ended) is computed rather than stamped
        with the time somebody happened to look. Flips in between two
        evaluations far apart (a flaky agent's earlier spikes) are not
        reconstructed: check at the policy's cadence to see them all.
        """
        metrics = sla.agent.metrics(now)
        breached, margin = term_margins(sla.limits, metrics)
        if now <= sla.last_eval and sla.last_breached is not None:
            return breached, margin, metrics
        if breached and sla.episode_start is None:
            sla.episode_start = self._onset(sla, sla.last_eval, now)
            sla.episode_terms = tuple(breached)
        elif breached:
            sla.episode_terms = tuple(sorted(set(sla.episode_terms) | set(breached)))
        elif sla.episode_start is not None:
            self._close_episode(sla, self._recovery(sla, sla.last_eval, now))
        sla.last_eval = now
        sla.last_breached = bool(breached)
        return breached, margin, metrics

    def _close_episode(self, sla: Sla, end: float) -> None:
        assert sla.episode_start is not None
        append_capped(
            sla.agent.more().violations, (sla.sla_id, sla.episode_start, end, sla.episode_terms)
        )
        sla.episode_start = None
        sla.episode_terms = ()

    def end_sla(self, sla: Sla, now: float) -> None:
        """Supersede or terminate an SLA; an open episode ends with it."""
        self.evaluate(sla, now)
        if sla.episode_start is not None:
            self._close_episode(sla, now)
        sla.status = "ended"

    def episodes(
        self, agent: Agent, now: float
    ) -> list[tuple[str, float, float | None, tuple[str, ...]]]:
        """Closed and open episodes, oldest first: (sla_id, start, end or None, terms)."""
        out: list[tuple[str, float, float | None, tuple[str, ...]]] = []
        if agent.extra is not None:
            out.extend(agent.extra.violations)
        sla = agent.sla
        if sla is not None and sla.episode_start is not None:
            out.append((sla.sla_id, sla.episode_start, None, sla.episode_terms))
        return out

    # --- seeding -------------------------------------------------------------------

    def seed_agents(
        self,
        count: int,
        prefix: str = "sim",
        *,
        tier: str = "starter",
        balance: Decimal = Decimal("100.00"),
        sla_template: str | None = "standard-support",
        profile: int | None = None,
        services: bool = True,
    ) -> list[str]:
        """Register ``count`` fully provisioned agents: identity, key, wallet, SLA, listing.

        Ids follow the manifest convention ``{prefix}-{index:04d}-{8 hex}``; the
        hex is a hash of (seed, prefix, index), so a seed gives the same fleet.
        """
        now = self.now()
        start = self.seed_next.get(prefix, 1)
        self.seed_next[prefix] = start + count
        metadata = {"fleet": prefix, "environment": "sandbox", "seeded": True}
        terms: Mapping[str, Any] | None = None
        limits: tuple[tuple[str, float], ...] = ()
        if sla_template is not None:
            terms = dict(self.sla_templates[sla_template])
            limits = sla_limits(terms)
        pricing_by_price = {price: {"per_task": fmt_money(price)} for price in _SEED_PRICES}
        raw_keys = os.urandom(16 * count).hex()
        seed_text = f"{self.seed}:{prefix}:"
        agents = self.agents
        keys = self.keys
        wallets = self.wallets
        ids = self._ids
        made: list[str] = []
        for n, index in enumerate(range(start, start + count)):
            suffix = hashlib.blake2b(f"{seed_text}{index}".encode(), digest_size=4).hexdigest()
            agent_id = f"{prefix}-{index:04d}-{suffix}"
            if agent_id in agents:
                continue
            h = agent_hash(self.seed, agent_id)
            key = f"a2a_{tier}_{raw_keys[32 * n : 32 * n + 32]}"
            capabilities = _SEED_CAPABILITIES[h % len(_SEED_CAPABILITIES)]
            agent = Agent(
                agent_id,
                tier,
                capabilities,
                metadata,
                now,
                key,
                h,
                self.mix.pick(h) if profile is None else profile,
                True,
            )
            if profile is not None:
                agent.pinned = True
            agents[agent_id] = agent
            keys[key] = agent
            wallet = Wallet(f"wal_{next(ids):08d}", agent, balance, now)
            wallets[wallet.wallet_id] = wallet
            agent.wallet = wallet
            if terms is not None:
                agent.sla = Sla(f"sla_{next(ids):08d}", agent, terms, limits, now)
            if services:
                price = _SEED_PRICES[(h >> 8) % len(_SEED_PRICES)]
                agent.service = Service(
                    f"svc_{next(ids):08d}", agent, capabilities, pricing_by_price[price], price, now
                )
            made.append(agent_id)
        self.registrations_total += len(made)
        if terms is not None:
            self.slas_total += len(made)
        return made

    # --- admin views ---------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        now = self.now()
        live = len(self.agents)
        without_wallet: list[str] = []
        without_sla = 0
        services = 0
        breaching = 0
        profiles = dict.fromkeys(PROFILE_NAMES, 0)
        for agent in self.agents.values():
            profiles[PROFILE_NAMES[agent.profile]] += 1
            if agent.wallet is None:
                without_wallet.append(agent.agent_id)
            if agent.sla is None:
                without_sla += 1
            elif agent.sla.episode_start is not None:
                breaching += 1
            if agent.service is not None:
                services += 1
        wallets_active = wallets_frozen = treasuries = 0
        orphans: list[dict[str, Any]] = []
        total_balance = treasury_balance = ZERO
        for wallet in self.wallets.values():
            if wallet.treasury:
                treasuries += 1
                treasury_balance += wallet.balance
                continue
            if wallet.frozen:
                wallets_frozen += 1
            else:
                wallets_active += 1
            total_balance += wallet.balance
            owner = wallet.owner
            if owner is None or owner.status != LIVE:
                if wallet.balance != 0 or not wallet.frozen:
                    orphans.append(
                        {
                            "wallet_id": wallet.wallet_id,
                            "agent_id": owner.agent_id if owner else None,
                            "balance": fmt_money(wallet.balance),
                            "frozen": wallet.frozen,
                        }
                    )
        disputes_open = sum(1 for d in self.disputes.values() if d.status == "open")
        return {
            "now": iso(now),
            "agents": {
                "live": live,
                "deregistered": self.deregistered_total,
                "registrations": self.registrations_total,
                "profiles": profiles,
            },
            "wallets": {
                "active": wallets_active,
                "frozen": wallets_frozen,
                "treasury": treasuries,
                "total_balance": fmt_money(total_balance),
                "treasury_balance": fmt_money(treasury_balance),
            },
            "orphans": {"count": len(orphans), "wallets": orphans[:50]},
            "identities_without_wallet": {
                "count": len(without_wallet),
                "agent_ids": without_wallet[:50],
            },
            "agents_without_sla": without_sla,
            "slas": {"created": self.slas_total, "in_violation": breaching},
            "services_listed": services,
            "disputes": {"open": disputes_open, "resolved": len(self.disputes) - disputes_open},
            "messages": self.messages_total,
            "audit_entries": self.audits_total,
            "transactions": self.transactions_total,
            "claim_chains": self.chains_total,
        }

    def agent_view(self, agent: Agent) -> dict[str, Any]:
        """Everything about one agent, for tests (includes its keys)."""
        now = self.now()
        out: dict[str, Any] = {
            "agent_id": agent.agent_id,
            "status": agent.status,
            "tier": agent.tier,
            "capabilities": list(agent.capabilities),
            "metadata": agent.metadata,
            "registered_at": iso(agent.registered_at),
            "api_key": agent.api_key,
            "old_key": agent.old_key if agent.old_key and now <= agent.old_key_expires else None,
            "old_key_expires_at": iso(agent.old_key_expires) if agent.old_key else None,
            "key_rotated_at": iso(agent.key_rotated_at),
            "profile": PROFILE_NAMES[agent.profile],
            "profile_pinned": agent.pinned,
            "behaviour_origin": iso(agent.origin),
            "seeded": agent.seeded,
        }
        if agent.status != LIVE:
            out["deregistered_at"] = iso(agent.ended_at)
            out["deregistration_reason"] = agent.end_reason
        else:
            m = agent.metrics(now)
            out["metrics"] = metrics_view(m)
        wallet = agent.wallet
        if wallet is not None:
            self.settle(wallet, now)
            out["wallet"] = {
                "wallet_id": wallet.wallet_id,
                "balance": fmt_money(wallet.balance),
                "frozen": wallet.frozen,
                "frozen_reason": wallet.frozen_reason or None,
                "simulated_spend": fmt_money(wallet.simulated_spend),
                "created_at": iso(wallet.created_at),
            }
        else:
            out["wallet"] = None
        sla = agent.sla
        if sla is not None:
            if agent.status == LIVE and sla.status == LIVE:
                self.evaluate(sla, now)
            out["sla"] = {
                "sla_id": sla.sla_id,
                "status": sla.status,
                "terms": sla.terms,
                "created_at": iso(sla.created_at),
                "in_violation": sla.episode_start is not None,
            }
        else:
            out["sla"] = None
        out["violations"] = [episode_view(e, now) for e in self.episodes(agent, now)]
        service = agent.service
        out["service"] = (
            {
                "service_id": service.service_id,
                "capabilities": list(service.capabilities),
                "pricing": service.pricing,
                "price": fmt_money(service.price),
            }
            if service is not None
            else None
        )
        extra = agent.extra
        if extra is not None:
            out["transactions"] = [
                {
                    "transaction_id": t[0],
                    "kind": t[1],
                    "amount": fmt_money(t[2]),
                    "at": iso(t[3]),
                    "detail": t[4],
                }
                for t in extra.transactions[-100:]
            ]
            out["transaction_count"] = extra.transaction_count
            out["audits"] = [entry for _, entry in extra.audits[-100:]]
            out["audit_count"] = extra.audit_count
            out["claim_chains"] = extra.chains[-20:]
            out["submitted_metrics"] = extra.submitted
            out["disputes"] = [
                self.disputes[d].view() for d in extra.disputes[-50:] if d in self.disputes
            ]
            out["messages_sent"] = extra.messages_sent
        out["messages_received"] = [m.view() for m in self.messages if m.to == agent.agent_id][-50:]
        return out


def metrics_view(m: Metrics) -> dict[str, Any]:
    return {
        "latency_p50": round(m.latency_p50, 1),
        "latency_p99": round(m.latency_p99, 1),
        "error_rate": round(m.error_rate, 4),
        "task_completion_rate": round(m.task_completion_rate, 4),
        "uptime_pct": round(m.uptime_pct, 3),
        "accuracy_pct": round(m.accuracy_pct, 3),
        "cost_per_task": round(m.cost_per_task, 4),
        "tasks_per_hour": round(m.tasks_per_hour, 2),
        "burn_rate_per_hour": round(m.burn_rate_per_hour, 4),
    }


def episode_view(
    episode: tuple[str, float, float | None, tuple[str, ...]], now: float
) -> dict[str, Any]:
    sla_id, start, end, terms = episode
    return {
        "sla_id": sla_id,
        "started_at": iso(start),
        "ended_at": iso(end) if end is not None else None,
        "open": end is None,
        "duration_minutes": round(((end if end is not None else now) - start) / 60.0, 2),
        "breached_terms": list(terms),
    }


def append_capped(items: list[Any], item: Any, cap: int = MAX_RECORDS_PER_AGENT) -> None:
    items.append(item)
    if len(items) > cap:
        del items[: len(items) - cap]
