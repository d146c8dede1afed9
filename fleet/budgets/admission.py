"""Admission: reserve a task's estimated cost against every budget in one atomic step.

One Redis Lua script per reservation checks and books, with nothing read first and
written after, so no interleaving of workers can admit more than a budget holds:

* ``spending_paused`` — the fleet's spending is paused (its fleet-day ceiling was
  reached; only a HIGH approval resumes it);
* ``per_task`` — the estimate itself above the per-task cap;
* ``agent_hour`` — the agent's rolling 60 minutes (one-minute buckets) would pass its cap;
* ``fleet_day`` — the fleet's UTC day would pass its ceiling: refused, and the same
  script pauses the fleet's spending (every later reservation: ``spending_paused``);
  ``on_pause`` is told once, to page the operators off the hot path;
* ``pool`` — the paying task pool's total would pass its budget (or no such pool);
* ``store_unreachable`` — Redis did not answer: refused, never admitted (fail closed).

Amounts are held in Redis as integer millionths of the currency (``MICROS``), rounded
up: exact, so the sum admitted is never above a budget by a rounding. Limits are the
policy's, or a raised limit an approval wrote into the ``limits`` hash (re-asserted
from the database by the sweep, see :mod:`fleet.budgets.control`). No database round
trip: the ledger row of a settlement goes into a Redis list, drained in batches by a
task on the ``routing`` queue (:mod:`fleet.budgets.ledger`).

A task id is its reservation's identity: reserving it again returns the first
answer (an admission, or for ``reservation_ttl_s`` a refusal), never a second hold;
settling or releasing it twice changes nothing the second time.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from typing import Any, cast

import redis

from config.policy import Budgets as BudgetPolicy
from config.policy import Policy
from fleet.clock import Clock
from fleet.hotstate import KEY_PREFIX

log = logging.getLogger(__name__)

PREFIX = f"{KEY_PREFIX}budget:"
MICROS = Decimal(1_000_000)
# The agent-hour window: this many one-minute buckets.
HOUR_BUCKETS = 60
# A fleet-day total outlives its day by this much (settlements of late tasks still land).
DAY_KEY_TTL_S = 2 * 86400

BUDGET_NAMES = ("per_task", "agent_hour", "fleet_day", "pool")


@dataclass(frozen=True)
class Charge:
    task_id: str  # the reservation's id; idempotent: reserving the same task_id twice
    agent_id: str  # returns the first answer, never a second hold
    fleet: str
    amount: Decimal  # the estimate, in the fleet's currency (USD)
    model: str
    pool: str | None = None  # a task pool that pays, when one does
    trace_id: str | None = None


@dataclass(frozen=True)
class Admitted:
    task_id: str
    amount: Decimal
    expires_at: float  # epoch s; a reservation whose task vanished is released after


@dataclass(frozen=True)
class Refused:
    # "per_task" | "agent_hour" | "fleet_day" | "pool" | "spending_paused" | "store_unreachable"
    budget: str
    limit: Decimal
    would_be: Decimal
    reason: str  # one line a person reads


@dataclass(frozen=True)
class PauseEvent:
    """The fleet-day ceiling refused a reservation and paused the fleet's spending."""

    fleet: str
    limit: Decimal
    would_be: Decimal
    at: float  # epoch s
    task_id: str
    trace_id: str | None = None  # the refused task's trace: its audit entry carries it


# The task that records and pages a pause (tasks/budgets.py; workers.queues.TaskName names it
# too, and a unit test holds the two equal: the domain does not import the workers).
BUDGET_PAUSE_TASK = "routing.budgets.record_pause"


def pause_message(event: PauseEvent) -> dict[str, str]:
    """A PauseEvent as JSON kwargs."""
    return {
        "fleet": event.fleet,
        "limit": format(event.limit, "f"),
        "would_be": format(event.would_be, "f"),
        "at": repr(event.at),
        "task_id": event.task_id,
        "trace_id": event.trace_id or "",
    }


def pause_from_message(data: Mapping[str, Any]) -> PauseEvent:
    return PauseEvent(
        str(data["fleet"]),
        Decimal(str(data["limit"])),
        Decimal(str(data["would_be"])),
        float(data["at"]),
        str(data.get("task_id", "-")),
        str(data.get("trace_id") or "") or None,
    )


class BudgetStoreUnavailable(RuntimeError):
    """Redis did not answer a settlement or release: try again (both are idempotent)."""


class UnknownReservation(LookupError):
    """A settlement for a task id with no reservation (never reserved, or long forgotten)."""


def to_micros(amount: Decimal) -> int:
    """Millionths of the currency, rounded up (a hold is never smaller than the estimate)."""
    return int((amount * MICROS).to_integral_value(rounding=ROUND_CEILING))


def from_micros(value: int | str) -> Decimal:
    return (Decimal(int(value)) / MICROS).normalize() if int(value) else Decimal(0)


def _money(value: Decimal) -> str:
    return format(value.quantize(Decimal("0.000001")).normalize(), "f")


def _check_amount(amount: Decimal, what: str) -> Decimal:
    if not isinstance(amount, Decimal):
        try:
            amount = Decimal(str(amount))
        except InvalidOperation:
            raise ValueError(f"{what} must be a decimal amount, got {amount!r}") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"{what} must be a finite amount ≥ 0, got {amount}")
    return amount


def estimate_cost(
    policy: BudgetPolicy | Policy, model: str, tokens: int, gateway_estimate: Decimal | None
) -> Decimal:
    """The gateway's estimate when it has one (and it is not 0: the gateway estimates
    percentage tools at 0.0), else the model's price: tokens / 1000 × per_1k_tokens, at
    least its per-task minimum. Rounded up to the micro-unit."""
    budgets = policy.budgets if isinstance(policy, Policy) else policy
    if tokens < 0:
        raise ValueError(f"tokens must be ≥ 0, got {tokens}")
    if gateway_estimate is not None:
        estimate = _check_amount(gateway_estimate, "gateway_estimate")
        if estimate > 0:
            return from_micros(to_micros(estimate))
    price = budgets.models.get(model)
    if price is None:
        known = ", ".join(sorted(budgets.models)) or "none"
        raise ValueError(f"no price for model {model!r} in policy budgets.models (known: {known})")
    cost = max(Decimal(tokens) / 1000 * price.per_1k_tokens, price.minimum)
    return from_micros(to_micros(cost))


# KEYS: 1 reservation, 2 agent-hour buckets, 3 fleet-day total, 4 pool total, 5 pause flag,
#       6 raised limits, 7 expiring reservations
# ARGV: 1 task, 2 agent, 3 fleet, 4 amount, 5 model, 6 pool, 7 trace, 8 now, 9 expires_at,
#       10 minute, 11 per_task, 12 agent_hour, 13 fleet_day, 14 pool limit (-1: none),
#       15 answer memory s, 16 refusal memory s, 17 day key ttl s, 18 hour buckets
_RESERVE = """
local function fmt(x) return string.format('%.0f', x) end
local r = redis.call('HGETALL', KEYS[1])
if #r > 0 then
  local h = {}
  for i = 1, #r, 2 do h[r[i]] = r[i + 1] end
  if h.state == 'refused' then
    return {'refused', h.budget, h.limit, h.would_be, h.reason, '0', h.state}
  end
  return {'admitted', h.amount, h.expires_at, h.state}
end
local amount = tonumber(ARGV[4])
local function limit(names, default)
  for _, name in ipairs(names) do
    local v = redis.call('HGET', KEYS[6], name)
    if v then return tonumber(v) end
  end
  return tonumber(default)
end
local function refuse(budget, lim, would, reason, paused)
  redis.call('HSET', KEYS[1], 'state', 'refused', 'budget', budget, 'limit', fmt(lim),
    'would_be', fmt(would), 'reason', reason, 'agent', ARGV[2], 'fleet', ARGV[3],
    'reserved_at', ARGV[8])
  redis.call('EXPIRE', KEYS[1], ARGV[16])
  return {'refused', budget, fmt(lim), fmt(would), reason, paused, 'refused'}
end
local fleet_limit = limit({'fleet_day:' .. ARGV[3], 'fleet_day:*'}, ARGV[13])
local day = tonumber(redis.call('GET', KEYS[3]) or '0')
if redis.call('EXISTS', KEYS[5]) == 1 then
  return refuse('spending_paused', fleet_limit, day + amount,
    'spending of fleet ' .. ARGV[3] .. ' is paused: ' .. (redis.call('GET', KEYS[5]) or ''), '0')
end
local per_task = limit({'per_task:' .. ARGV[3], 'per_task:*'}, ARGV[11])
if amount > per_task then
  return refuse('per_task', per_task, amount, 'the estimate is above the per-task cap', '0')
end
local minute = tonumber(ARGV[10])
local oldest = minute - tonumber(ARGV[18]) + 1
local hour = 0
local buckets = redis.call('HGETALL', KEYS[2])
for i = 1, #buckets, 2 do
  if tonumber(buckets[i]) < oldest then
    redis.call('HDEL', KEYS[2], buckets[i])
  else
    hour = hour + tonumber(buckets[i + 1])
  end
end
local hour_limit = limit({'agent_hour:' .. ARGV[2], 'agent_hour:*'}, ARGV[12])
if hour + amount > hour_limit then
  return refuse('agent_hour', hour_limit, hour + amount,
    'agent ' .. ARGV[2] .. ' would pass its budget for the last 60 minutes', '0')
end
if day + amount > fleet_limit then
  local why = 'fleet-day ceiling reached at ' .. ARGV[8]
  redis.call('SET', KEYS[5], why, 'NX')
  return refuse('fleet_day', fleet_limit, day + amount,
    'fleet ' .. ARGV[3] .. ' would pass its ceiling for the day; spending paused', '1')
end
if ARGV[6] ~= '' then
  local pool_limit = limit({'pool:' .. ARGV[6]}, ARGV[14])
  if pool_limit < 0 then
    return refuse('pool', 0, amount, 'no budget pool named ' .. ARGV[6], '0')
  end
  local spent = tonumber(redis.call('GET', KEYS[4]) or '0')
  if spent + amount > pool_limit then
    return refuse('pool', pool_limit, spent + amount,
      'pool ' .. ARGV[6] .. ' would pass its budget', '0')
  end
  redis.call('INCRBY', KEYS[4], ARGV[4])
end
redis.call('HINCRBY', KEYS[2], ARGV[10], ARGV[4])
redis.call('EXPIRE', KEYS[2], 3600 + 120)
redis.call('INCRBY', KEYS[3], ARGV[4])
redis.call('EXPIRE', KEYS[3], ARGV[17])
redis.call('HSET', KEYS[1], 'state', 'held', 'agent', ARGV[2], 'fleet', ARGV[3],
  'amount', ARGV[4], 'model', ARGV[5], 'pool', ARGV[6], 'trace', ARGV[7],
  'reserved_at', ARGV[8], 'expires_at', ARGV[9], 'minute', ARGV[10],
  'hour_key', KEYS[2], 'day_key', KEYS[3], 'pool_key', KEYS[4])
redis.call('EXPIRE', KEYS[1], ARGV[15])
redis.call('ZADD', KEYS[7], ARGV[9], ARGV[1])
return {'admitted', ARGV[4], ARGV[9], 'held'}
"""

# Books ``delta`` micros into the reservation's own buckets (the minute, day and pool it
# was held in). Shared by settle and release.
_BOOK = """
local function book(h, delta)
  if delta == 0 then return end
  local d = string.format('%.0f', delta)
  redis.call('HINCRBY', h.hour_key, h.minute, d)
  redis.call('INCRBY', h.day_key, d)
  if h.pool ~= '' then redis.call('INCRBY', h.pool_key, d) end
end
local function load(key)
  local r = redis.call('HGETALL', key)
  local h = {}
  for i = 1, #r, 2 do h[r[i]] = r[i + 1] end
  return h
end
"""

# KEYS: 1 reservation, 2 expiring, 3 ledger list
# ARGV: 1 task, 2 actual micros, 3 charged (decimal text or ''), 4 usage json, 5 now,
#       6 currency, 7 answer memory s
_SETTLE = (
    _BOOK
    + """
local h = load(KEYS[1])
if h.state == nil then return 'unknown' end
if h.state == 'settled' then return 'settled-before' end
if h.state == 'refused' then return 'refused' end
local held = 0
if h.state == 'held' then held = tonumber(h.amount) end
local actual = tonumber(ARGV[2])
book(h, actual - held)
redis.call('HSET', KEYS[1], 'state', 'settled', 'actual', ARGV[2], 'settled_at', ARGV[5],
  'was', h.state)
redis.call('EXPIRE', KEYS[1], ARGV[7])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('RPUSH', KEYS[3], cjson.encode({
  task_id = ARGV[1], agent_id = h.agent, fleet = h.fleet, model = h.model, pool = h.pool,
  estimate = h.amount, actual = ARGV[2], charged = ARGV[3], currency = ARGV[6],
  usage = ARGV[4], trace_id = h.trace, reserved_at = h.reserved_at, settled_at = ARGV[5],
  released_before = (h.state == 'released') }))
return 'settled'
"""
)

# KEYS: 1 reservation, 2 expiring; ARGV: 1 task, 2 now, 3 why (released | expired),
#       4 only if expired before (epoch s; '' for any)
_RELEASE = (
    _BOOK
    + """
local h = load(KEYS[1])
if h.state ~= 'held' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return h.state or 'unknown'
end
if ARGV[4] ~= '' and tonumber(h.expires_at) > tonumber(ARGV[4]) then return 'not-expired' end
book(h, -tonumber(h.amount))
redis.call('HSET', KEYS[1], 'state', 'released', 'released_at', ARGV[2], 'why', ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[1])
return 'released'
"""
)


def reservation_key(task_id: str) -> str:
    return f"{PREFIX}res:{task_id}"


def agent_hour_key(agent_id: str) -> str:
    return f"{PREFIX}hour:{agent_id}"


def fleet_day_key(fleet: str, day: str) -> str:
    return f"{PREFIX}day:{fleet}:{day}"


def pool_key(pool: str) -> str:
    return f"{PREFIX}pool:{pool}"


def pause_key(fleet: str) -> str:
    return f"{PREFIX}paused:{fleet}"


LIMITS_KEY = f"{PREFIX}limits"
EXPIRING_KEY = f"{PREFIX}expiring"
LEDGER_KEY = f"{PREFIX}ledger"


def limit_field(budget: str, subject: str) -> str:
    """The raised-limits hash field: ``per_task:*``, ``agent_hour:AGENT|*``,
    ``fleet_day:FLEET|*``, ``pool:POOL``."""
    return f"{budget}:{subject}"


def utc_day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y%m%d")


class Budgets:
    """The budgets of every fleet in one Redis: reserve, settle, release, sweep.

    ``on_pause`` hears each fleet the fleet-day ceiling paused (once per pause); it
    must not block (the runtime sends a message). Whatever it raises is logged.
    """

    def __init__(
        self,
        redis: redis.Redis,
        policy: BudgetPolicy,
        clock: Clock,
        *,
        on_pause: Callable[[PauseEvent], None] | None = None,
    ) -> None:
        self.redis = redis
        self.policy = policy
        self.clock = clock
        self.on_pause = on_pause
        self._reserve = redis.register_script(_RESERVE)
        self._settle = redis.register_script(_SETTLE)
        self._release = redis.register_script(_RELEASE)

    def close(self) -> None:
        """Close the Redis client (the runtime builds one for the budgets alone)."""
        self.redis.close()

    def _now(self) -> float:
        return self.clock.now().timestamp()

    # ------------------------------------------------------------------ the hot path

    def reserve(self, charge: Charge) -> Admitted | Refused:
        """Hold ``charge.amount`` against every budget that applies, or refuse naming the one
        that would be exceeded. One Lua script: atomic across all workers."""
        amount = _check_amount(charge.amount, "charge.amount")
        for name in ("task_id", "agent_id", "fleet", "model"):
            if not getattr(charge, name):
                raise ValueError(f"charge.{name} must not be empty")
        now = self._now()
        p = self.policy
        micros = to_micros(amount)
        pool_limit = -1
        if charge.pool:
            limit = p.pools.get(charge.pool)
            pool_limit = to_micros(limit) if limit is not None else -1
        expires_at = now + p.reservation_ttl_s
        try:
            answer = self._reserve(
                keys=[
                    reservation_key(charge.task_id),
                    agent_hour_key(charge.agent_id),
                    fleet_day_key(charge.fleet, utc_day(now)),
                    pool_key(charge.pool or "-"),
                    pause_key(charge.fleet),
                    LIMITS_KEY,
                    EXPIRING_KEY,
                ],
                args=[
                    charge.task_id,
                    charge.agent_id,
                    charge.fleet,
                    micros,
                    charge.model,
                    charge.pool or "",
                    charge.trace_id or "",
                    repr(now),
                    repr(expires_at),
                    int(now // 60),
                    to_micros(p.per_task),
                    to_micros(p.per_agent_hour),
                    to_micros(p.fleet_day),
                    pool_limit,
                    math.ceil(p.answer_memory_s),
                    math.ceil(p.reservation_ttl_s),
                    DAY_KEY_TTL_S,
                    HOUR_BUCKETS,
                ],
            )
        except (redis.RedisError, OSError) as exc:
            return Refused(
                "store_unreachable",
                Decimal(0),
                amount,
                f"the budget store did not answer ({type(exc).__name__}); refused, not admitted",
            )
        reply = [str(x) for x in cast("list[Any]", answer)]
        if reply[0] == "admitted":
            return Admitted(charge.task_id, from_micros(reply[1]), float(reply[2]))
        refused = Refused(reply[1], from_micros(reply[2]), from_micros(reply[3]), reply[4])
        if reply[5] == "1" and self.on_pause is not None:
            event = PauseEvent(
                charge.fleet, refused.limit, refused.would_be, now, charge.task_id, charge.trace_id
            )
            try:
                self.on_pause(event)
            except Exception:  # noqa: BLE001 - the pause holds in Redis; the sweep pages again
                log.exception("spending of fleet %s paused, but paging failed", charge.fleet)
        return refused

    def settle(
        self,
        task_id: str,
        actual: Decimal,
        *,
        charged: Decimal | None = None,
        usage: Mapping[str, int] | None = None,
    ) -> None:
        """Book what the task really cost and release the rest of its hold; queue its ledger
        row. Idempotent: a second settlement of the same task changes nothing. A settlement
        after the hold expired (or was released) still books the spend.

        Raises UnknownReservation for a task never reserved (or forgotten), and
        BudgetStoreUnavailable when Redis does not answer (retry: it is idempotent).
        """
        actual = _check_amount(actual, "actual")
        if charged is not None:
            charged = _check_amount(charged, "charged")
        clean_usage = {str(k): int(v) for k, v in (usage or {}).items()}
        try:
            out = self._settle(
                keys=[reservation_key(task_id), EXPIRING_KEY, LEDGER_KEY],
                args=[
                    task_id,
                    to_micros(actual),
                    _money(charged) if charged is not None else "",
                    json.dumps(clean_usage, sort_keys=True),
                    repr(self._now()),
                    self.policy.currency,
                    math.ceil(self.policy.answer_memory_s),
                ],
            )
        except (redis.RedisError, OSError) as exc:
            raise BudgetStoreUnavailable(f"settling {task_id}: {exc}") from exc
        if str(out) == "unknown":
            raise UnknownReservation(f"no reservation for task {task_id!r} to settle")
        if str(out) == "refused":
            raise UnknownReservation(
                f"task {task_id!r} was refused, not admitted: nothing to settle"
            )

    def release(self, task_id: str) -> None:
        """Nothing was spent (the task failed before any spend): give the whole hold back."""
        try:
            self._release(
                keys=[reservation_key(task_id), EXPIRING_KEY],
                args=[task_id, repr(self._now()), "released", ""],
            )
        except (redis.RedisError, OSError) as exc:
            raise BudgetStoreUnavailable(f"releasing {task_id}: {exc}") from exc

    def sweep_expired(self, limit: int = 1000) -> int:
        """Release every held reservation past its ``expires_at`` (its task vanished)."""
        now = self._now()
        released = 0
        while True:
            due = cast(
                "list[str]",
                self.redis.zrangebyscore(EXPIRING_KEY, "-inf", now, start=0, num=limit),
            )
            for task_id in due:
                out = self._release(
                    keys=[reservation_key(task_id), EXPIRING_KEY],
                    args=[task_id, repr(now), "expired", repr(now)],
                )
                released += str(out) == "released"
            if len(due) < limit:
                return released

    def spending_paused(self, fleet: str) -> bool:
        """Whether new reservations of ``fleet`` are refused; True when Redis cannot say."""
        try:
            return bool(self.redis.exists(pause_key(fleet)))
        except (redis.RedisError, OSError):
            return True

    # ------------------------------------------------------------------ reading

    def state(self, fleet: str) -> dict[str, Any]:
        """The fleet's budgets as they stand: today's spend and holds, limits, pause."""
        now = self._now()
        p = self.policy
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(fleet_day_key(fleet, utc_day(now)))
        pipe.get(pause_key(fleet))
        pipe.hgetall(LIMITS_KEY)
        pipe.zcard(EXPIRING_KEY)
        day, paused, limits, held = pipe.execute()
        limits = cast("dict[str, str]", limits)

        def effective(budget: str, subject: str, default: Decimal) -> Decimal:
            for field in (limit_field(budget, subject), limit_field(budget, "*")):
                if field in limits:
                    return from_micros(limits[field])
            return default

        raised = {k: format(from_micros(v), "f") for k, v in sorted(limits.items())}
        return {
            "fleet": fleet,
            "currency": p.currency,
            "day": utc_day(now),
            "fleet_day": {
                "limit": format(effective("fleet_day", fleet, p.fleet_day), "f"),
                "used": format(from_micros(day or 0), "f"),
            },
            "per_task": format(effective("per_task", fleet, p.per_task), "f"),
            "per_agent_hour": format(effective("agent_hour", "*", p.per_agent_hour), "f"),
            "pools": {name: format(v, "f") for name, v in sorted(p.pools.items())},
            "raised_limits": raised,
            "spending_paused": paused is not None,
            "paused_reason": paused,
            "reservations_held": int(held),
        }

    def pool_used(self, pool: str) -> Decimal:
        return from_micros(cast("str | None", self.redis.get(pool_key(pool))) or 0)

    def agent_hour_used(self, agent_id: str) -> Decimal:
        oldest = int(self._now() // 60) - HOUR_BUCKETS + 1
        buckets = cast("dict[str, str]", self.redis.hgetall(agent_hour_key(agent_id)))
        return from_micros(sum(int(v) for k, v in buckets.items() if int(k) >= oldest))

    def fleet_day_used(self, fleet: str) -> Decimal:
        key = fleet_day_key(fleet, utc_day(self._now()))
        return from_micros(cast("str | None", self.redis.get(key)) or 0)


__all__ = [
    "BUDGET_NAMES",
    "Admitted",
    "BudgetStoreUnavailable",
    "Budgets",
    "Charge",
    "PauseEvent",
    "Refused",
    "UnknownReservation",
    "estimate_cost",
]
