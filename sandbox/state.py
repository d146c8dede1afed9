"""The sandbox's state: agents, keys, wallets and the rest, in memory, written behind to SQLite.

Every record lives in a dict keyed by its id and is the one truth while the
server runs; a change marks the record dirty, and :class:`Store` writes the
dirty records to ``<data_dir>/sandbox.db`` in one transaction every
``flush_interval_s`` (and at shutdown), from a worker thread, so a request
never waits for the disk. At start the file is read back, so a restarted
sandbox keeps its fleet. Rate windows are not persisted: they are an hour of
timestamps, and a restart costing a fleet its windows errs on the caller's side.
"""

from __future__ import annotations

import calendar
import collections
import functools
import hashlib
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from sandbox.behaviour import (
    COST_RUNAWAY,
    DEAD,
    IDLE,
    Params,
    ProfileMix,
    agent_hash,
    metrics_at,
    spend_between,
)
from sandbox.validate import ZERO

TIERS = ("free", "starter", "pro", "enterprise")
TIER_RANK = {"free": 0, "starter": 1, "pro": 2, "enterprise": 3, "admin": 4}
RATE_LIMITS = {"free": 100, "starter": 1_000, "pro": 10_000, "enterprise": 100_000}
BURST = {"free": 10, "starter": 25, "pro": 100, "enterprise": 1_000}
DEPOSIT_CAPS = {
    "free": Decimal(1_000),
    "starter": Decimal(10_000),
    "pro": Decimal(100_000),
    "enterprise": Decimal(10_000_000),
}
SIGNUP_BONUS = Decimal(500)
# The real bus keeps every event 24 h; the sandbox also caps the count, for memory
# (10,000 agents at 60 s make 14.4 M a day): the oldest go first.
EVENTS_KEPT = 200_000
EVENTS_RETENTION_S = 86400.0
_DECIMALS = frozenset(
    {"balance", "amount", "fee", "daily_cap", "monthly_cap", "cost", "calls_cost", "bound_value"}
)


def new_key(tier: str) -> str:
    return f"a2a_{tier}_{secrets.token_hex(12)}"


def key_prefix(key: str) -> str:
    # As the gateway lists keys: the first 8 hex digits of the key's SHA3-256.
    return hashlib.sha3_256(key.encode()).hexdigest()[:8]


def public_key_for(seed: int, agent_id: str) -> str:
    """A deterministic 32-byte Ed25519 public key per (seed, agent)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    private = Ed25519PrivateKey.from_private_bytes(
        hashlib.sha256(f"{seed}:{agent_id}".encode()).digest()
    )
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


@dataclass
class Agent:
    agent_id: str
    public_key: str
    created_at: float
    profile: int
    hash: int
    origin: float
    org_id: str = "default"
    # When the behaviour last spent: spending is applied lazily up to now.
    settled_to: float = 0.0
    # Seeded agents: their behaviour profile produces their metrics and spending.
    simulated: bool = False

    def params(self) -> Params:
        return params_of(self.hash)


@dataclass
class Key:
    key: str
    agent_id: str
    tier: str
    scopes: list[str]
    created_at: float
    revoked_at: float | None = None

    @property
    def admin(self) -> bool:
        return "admin" in self.scopes


@dataclass
class Wallet:
    agent_id: str
    balance: Decimal
    created_at: float
    updated_at: float
    frozen: bool = False
    daily_cap: Decimal | None = None
    monthly_cap: Decimal | None = None
    alert_threshold: float | None = None
    calls: int = 0
    calls_cost: Decimal = ZERO
    # (epoch, cost) of every paid call: budget caps sum a rolling window of them.
    charges: list[list[Any]] = field(default_factory=list)


KINDS: dict[str, type] = {"agent": Agent, "key": Key, "wallet": Wallet}


@functools.lru_cache(maxsize=1 << 17)
def params_of(agent_hash: int) -> Params:
    """An agent's traits, drawn once: every settle and metrics read needs them."""
    return Params(agent_hash)


class Store:
    """Write-behind persistence: ``kind/id → JSON`` rows plus the event log."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.dirty: dict[tuple[str, str], Any] = {}
        self.new_events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS records "
                "(kind TEXT NOT NULL, id TEXT NOT NULL, data BLOB NOT NULL, PRIMARY KEY (kind, id))"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, data BLOB NOT NULL)"
            )

    def load(self) -> tuple[list[tuple[str, str, bytes]], list[bytes]]:
        if self._db is None:
            return [], []
        rows = self._db.execute("SELECT kind, id, data FROM records").fetchall()
        events = [r[0] for r in self._db.execute("SELECT data FROM events ORDER BY id")]
        return rows, events

    def mark(self, kind: str, record_id: str, record: Any) -> None:
        if self._db is not None:
            self.dirty[(kind, record_id)] = record

    def delete(self, kind: str, record_id: str) -> None:
        if self._db is not None:
            self.dirty[(kind, record_id)] = None

    def event(self, event: dict[str, Any]) -> None:
        if self._db is not None:
            self.new_events.append(event)

    def take(self) -> tuple[list[tuple[str, str, bytes]], list[tuple[str, str]], list[Any]]:
        """Serialize the dirty set on the caller's thread (the records may change after)."""
        dirty, self.dirty = self.dirty, {}
        events, self.new_events = self.new_events, []
        upserts: list[tuple[str, str, bytes]] = []
        deletes: list[tuple[str, str]] = []
        for (kind, rid), record in dirty.items():
            if record is None:
                deletes.append((kind, rid))
            else:
                upserts.append((kind, rid, orjson.dumps(record, default=_encode)))
        rows = [(e["id"], orjson.dumps(e)) for e in events]
        return upserts, deletes, rows

    def write(
        self,
        upserts: list[tuple[str, str, bytes]],
        deletes: list[tuple[str, str]],
        events: list[Any],
    ) -> None:
        if self._db is None or not (upserts or deletes or events):
            return
        with self._lock:
            db = self._db
            db.execute("BEGIN")
            db.executemany("INSERT OR REPLACE INTO records VALUES (?, ?, ?)", upserts)
            db.executemany("DELETE FROM records WHERE kind = ? AND id = ?", deletes)
            db.executemany("INSERT OR REPLACE INTO events VALUES (?, ?)", events)
            db.execute("COMMIT")

    def flush(self) -> None:
        self.write(*self.take())

    def wipe(self) -> None:
        self.dirty.clear()
        self.new_events.clear()
        if self._db is not None:
            with self._lock:
                self._db.execute("DELETE FROM records")
                self._db.execute("DELETE FROM events")

    def close(self) -> None:
        if self._db is not None:
            self.flush()
            with self._lock:
                self._db.close()
            self._db = None


def _epoch(created_at: str) -> float:
    # Bus events carry UTC without a zone, as the real bus writes them.
    return float(calendar.timegm(time.strptime(created_at[:19], "%Y-%m-%dT%H:%M:%S")))


def _encode(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(type(value).__name__)


def _decode(kind: str, data: dict[str, Any]) -> Any:
    for name in _DECIMALS:
        if isinstance(data.get(name), str):
            data[name] = Decimal(data[name])
    cls = KINDS.get(kind)
    return cls(**data) if cls is not None else data


class State:
    """Everything the gateway double knows, and the rules that move it."""

    def __init__(
        self, *, seed: int, mix: ProfileMix, store: Store, now: float | None = None
    ) -> None:
        self.seed = seed
        self.mix = mix
        self.store = store
        self.agents: dict[str, Agent] = {}
        self.keys: dict[str, Key] = {}
        self.keys_by_agent: collections.defaultdict[str, list[Key]] = collections.defaultdict(list)
        self.wallets: dict[str, Wallet] = {}
        self.transactions: collections.defaultdict[str, list[dict[str, Any]]] = (
            collections.defaultdict(list)
        )
        self.intents: dict[str, dict[str, Any]] = {}
        self.escrows: dict[str, dict[str, Any]] = {}
        self.disputes: dict[str, dict[str, Any]] = {}
        self.services: dict[str, dict[str, Any]] = {}
        self.messages: dict[str, dict[str, Any]] = {}
        self.servers: dict[str, dict[str, Any]] = {}
        self.claims: dict[str, dict[str, Any]] = {}
        self.chains: dict[str, dict[str, Any]] = {}
        self.metrics: collections.defaultdict[str, list[dict[str, Any]]] = collections.defaultdict(
            list
        )
        self.idempotency: dict[str, dict[str, Any]] = {}
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=EVENTS_KEPT)
        # When each event of ``events`` was published (same positions), for the retention.
        self.event_times: collections.deque[float] = collections.deque(maxlen=EVENTS_KEPT)
        self.events_retention_s = EVENTS_RETENTION_S
        # Identity private keys handed to the sandbox (hex), standing for keys deployed
        # to agents' runtimes: the simulated agents sign their heartbeats with them.
        self.identity_keys: dict[str, str] = {}
        self.next_tx = 1
        self.next_event = 1
        self.next_chain = 1
        # Per agent: epochs of every rated call in the last hour (all keys share it).
        self.windows: collections.defaultdict[str, collections.deque[float]] = (
            collections.defaultdict(collections.deque)
        )
        self._load()

    # --- persistence ------------------------------------------------------------

    _DOC_KINDS = (
        "intents",
        "escrows",
        "disputes",
        "services",
        "messages",
        "servers",
        "claims",
        "chains",
        "idempotency",
        "identity_keys",
    )

    def _load(self) -> None:
        rows, events = self.store.load()
        for kind, rid, blob in rows:
            data = orjson.loads(blob)
            if kind == "agent":
                self.agents[rid] = _decode(kind, data)
            elif kind == "key":
                k: Key = _decode(kind, data)
                self.keys[rid] = k
                self.keys_by_agent[k.agent_id].append(k)
            elif kind == "wallet":
                self.wallets[rid] = _decode(kind, data)
            elif kind == "tx":
                # One row per transaction, ``agent#id``, so a charge writes one small row.
                agent_id, _, _ = rid.partition("#")
                txs = self.transactions[agent_id]
                if isinstance(data, list):  # a whole list per agent, as written before
                    txs.extend(data)
                    self.store.delete("tx", rid)
                    for tx in data:
                        self.store.mark("tx", f"{agent_id}#{tx['id']}", tx)
                else:
                    txs.append(data)
            elif kind == "metrics":
                self.metrics[rid] = data
            elif kind == "counters":
                self.next_tx, self.next_chain = data["next_tx"], data["next_chain"]
            elif kind in self._DOC_KINDS:
                getattr(self, kind)[rid] = data
        for txs in self.transactions.values():
            txs.sort(key=lambda tx: tx["id"])
        for blob in events:
            event = orjson.loads(blob)
            self.events.append(event)
            self.event_times.append(_epoch(event["created_at"]))
        if self.events:
            self.next_event = self.events[-1]["id"] + 1
        self.expire_events(time.time())

    def touch(self, kind: str, rid: str) -> None:
        """Mark one record changed (the store writes it behind)."""
        if kind == "agent":
            self.store.mark(kind, rid, self.agents[rid])
        elif kind == "wallet":
            self.store.mark(kind, rid, self.wallets[rid])
        elif kind == "key":
            self.store.mark(kind, rid, self.keys[rid])
        elif kind == "metrics":
            self.store.mark(kind, rid, self.metrics[rid])
        else:
            self.store.mark(kind, rid, getattr(self, kind)[rid])
            if kind == "chains":
                self.store.mark(
                    "counters", "ids", {"next_tx": self.next_tx, "next_chain": self.next_chain}
                )

    def reset(self) -> None:
        self.store.wipe()
        for name in (
            "agents",
            "keys",
            "keys_by_agent",
            "wallets",
            "transactions",
            "windows",
            "metrics",
            "events",
            "event_times",
            *self._DOC_KINDS,
        ):
            getattr(self, name).clear()
        self.next_tx = self.next_event = self.next_chain = 1

    # --- agents, keys, wallets ---------------------------------------------------

    def add_agent(self, agent_id: str, now: float, profile: str | None = None) -> Agent:
        h = agent_hash(self.seed, agent_id)
        from sandbox.behaviour import PROFILE_IDS

        picked = PROFILE_IDS[profile] if profile else self.mix.pick(h)
        agent = Agent(
            agent_id=agent_id,
            public_key=public_key_for(self.seed, agent_id),
            created_at=now,
            profile=picked,
            hash=h,
            origin=now,
            settled_to=now,
        )
        self.agents[agent_id] = agent
        self.touch("agent", agent_id)
        return agent

    def add_key(
        self, agent_id: str, tier: str, now: float, scopes: Iterable[str] = ("read", "write")
    ) -> Key:
        key = Key(new_key(tier), agent_id, tier, list(scopes), now)
        self.keys[key.key] = key
        self.keys_by_agent[agent_id].append(key)
        self.touch("key", key.key)
        return key

    def add_wallet(self, agent_id: str, balance: Decimal, now: float) -> Wallet:
        wallet = Wallet(agent_id, balance, now, now)
        self.wallets[agent_id] = wallet
        self.touch("wallet", agent_id)
        return wallet

    def register(self, agent_id: str, now: float, profile: str | None = None) -> tuple[Agent, Key]:
        # An identity made first (POST /v1/identity/agents) is kept, with its key.
        agent = self.agents.get(agent_id) or self.add_agent(agent_id, now, profile)
        key = self.add_key(agent_id, "free", now)
        wallet = self.add_wallet(agent_id, ZERO, now)
        self.ledger(wallet, SIGNUP_BONUS, "signup_bonus", "Signup bonus", now)
        return agent, key

    def ledger(
        self,
        wallet: Wallet,
        amount: Decimal,
        tx_type: str,
        description: str,
        now: float,
        idempotency_key: str | None = None,
    ) -> int:
        """Move a wallet's balance and record the transaction; its id."""
        wallet.balance += amount
        wallet.updated_at = now
        tx_id = self.next_tx
        self.next_tx += 1
        agent_id = wallet.agent_id
        txs = self.transactions[agent_id]
        tx = {
            "id": tx_id,
            "amount": str(amount),
            "tx_type": tx_type,
            "description": description,
            "currency": "CREDITS",
            "created_at": now,
            "idempotency_key": idempotency_key,
        }
        txs.append(tx)
        store = self.store
        store.mark("tx", f"{agent_id}#{tx_id}", tx)
        if len(txs) > 500:
            for old in txs[: len(txs) - 500]:
                store.delete("tx", f"{agent_id}#{old['id']}")
            del txs[: len(txs) - 500]
        store.mark("counters", "ids", {"next_tx": self.next_tx, "next_chain": self.next_chain})
        self.touch("wallet", agent_id)
        return tx_id

    def charge(self, wallet: Wallet, cost: Decimal, tool: str, now: float) -> None:
        """One call's fee (or a free call): usage, budget window and the balance."""
        wallet.calls += 1
        if cost:
            wallet.calls_cost += cost
            wallet.charges.append([now, str(cost)])
            self._prune_charges(wallet, now)
            self.ledger(wallet, -cost, "charge", f"gateway:{tool}", now)
        else:
            self.touch("wallet", wallet.agent_id)

    @staticmethod
    def _prune_charges(wallet: Wallet, now: float) -> None:
        horizon = now - 30 * 86400
        while wallet.charges and wallet.charges[0][0] < horizon:
            wallet.charges.pop(0)

    @staticmethod
    def spent_since(wallet: Wallet, since: float) -> Decimal:
        return sum((Decimal(c) for t, c in wallet.charges if t >= since), ZERO)

    def key_for(self, token: str, now: float, grace_s: float) -> tuple[Key | None, str]:
        """The key and '' if usable, else None and why not."""
        key = self.keys.get(token)
        if key is None:
            return None, "API key not found"
        if key.revoked_at is not None and now >= key.revoked_at + grace_s:
            return None, "API key has been revoked"
        return key, ""

    # --- the simulated fleet ------------------------------------------------------

    def settle(self, agent: Agent, now: float) -> None:
        """Apply the behaviour's spending since the last settlement, as gateway charges."""
        if agent.profile in (DEAD, IDLE) or now <= agent.settled_to:
            return
        wallet = self.wallets.get(agent.agent_id)
        if wallet is None:
            return
        spent = spend_between(agent.profile, agent.params(), agent.origin, agent.settled_to, now)
        amount = Decimal(str(round(spent, 2)))
        if amount < Decimal("0.01"):
            return
        amount = min(amount, max(wallet.balance, ZERO))
        agent.settled_to = now
        self.touch("agent", agent.agent_id)
        if amount > 0:
            wallet.calls_cost += amount
            wallet.charges.append([now, str(amount)])
            self._prune_charges(wallet, now)
            tool = "best_match" if agent.profile == COST_RUNAWAY else "atlas_broker"
            self.ledger(wallet, -amount, "charge", f"gateway:{tool}", now)

    def behaviour_metrics(self, agent: Agent, now: float) -> dict[str, float]:
        """The profile's metrics now, under the gateway's metric names."""
        m = metrics_at(agent.profile, agent.hash, agent.params(), now, agent.origin)
        if agent.profile == DEAD:
            return {"uptime": 0.0, "error_rate": 1.0, "task_completion_rate": 0.0}
        return {
            "p50_latency_ms": round(m.latency_p50, 1),
            "p99_latency_ms": round(m.latency_p99, 1),
            "error_rate": round(m.error_rate, 4),
            "uptime": round(m.uptime_pct, 3),
            "task_completion_rate": round(m.task_completion_rate, 4),
            "accuracy": round(m.accuracy_pct / 100.0, 4),
            "throughput_rps": round(m.calls_per_hour / 3600.0, 3),
        }

    def publish(
        self, event_type: str, source: str, payload: dict[str, Any], now: float
    ) -> dict[str, Any]:
        event_id = self.next_event
        self.next_event += 1
        body = orjson.dumps(
            {"event_type": event_type, "source": source, "payload": payload},
            option=orjson.OPT_SORT_KEYS,
        )
        event = {
            "id": event_id,
            "event_type": event_type,
            "source": source,
            "payload": payload,
            "integrity_hash": hashlib.sha3_256(body).hexdigest(),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)),
        }
        self.events.append(event)
        self.event_times.append(now)
        self.store.event(event)
        self.expire_events(now)
        return event

    def expire_events(self, now: float) -> None:
        """Forget events older than the retention (the real bus purges them hourly)."""
        horizon = now - self.events_retention_s
        times, events = self.event_times, self.events
        while times and times[0] < horizon:
            times.popleft()
            events.popleft()
