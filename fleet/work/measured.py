"""Measured per-agent signals: what the work plane saw of each agent's tasks.

Beside what an agent reports about itself (heartbeats), each finished delivery gives
its latency, whether it failed and what it cost. A process gathers them and flushes
them into the agent's snapshot hash (``fleet:snapshot:{agent}``) as the ``measured_*``
fields, one script call per agent per flush:

- ``measured_latency_p50`` / ``measured_latency_p99``: over the agent's last
  :data:`WINDOW` task latencies (kept in ``fleet:measured:lat:{agent}``);
- ``measured_error_rate`` and ``measured_cost_per_task``: exponentially weighted
  (each task weighs :data:`ALPHA`);
- ``measured_tasks`` (a count) and ``measured_at`` (epoch s of the flush).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

import redis

from fleet.hotstate import KEY_PREFIX
from fleet.monitoring.snapshot import snapshot_key

WINDOW = 200
ALPHA = 0.05

_FLUSH = """
local lat_key, snap_key = KEYS[1], KEYS[2]
local n, failures, cost, now, window, alpha, ttl =
  tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4],
  tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
for i = 9, #ARGV do redis.call('LPUSH', lat_key, ARGV[i]) end
redis.call('LTRIM', lat_key, 0, window - 1)
redis.call('EXPIRE', lat_key, ttl)
local values = redis.call('LRANGE', lat_key, 0, -1)
local xs = {}
for i, v in ipairs(values) do xs[i] = tonumber(v) end
table.sort(xs)
local function pct(p)
  if #xs == 0 then return nil end
  local idx = math.max(1, math.ceil(p * #xs))
  return xs[idx]
end
local prev = redis.call('HMGET', snap_key, 'measured_error_rate', 'measured_cost_per_task')
-- n tasks folded in at once: the old value keeps (1 - alpha)^n of its weight.
local keep = (1 - alpha) ^ n
local err = failures / n
local per_task = cost / n
if prev[1] then err = keep * tonumber(prev[1]) + (1 - keep) * err end
if prev[2] and per_task >= 0 then per_task = keep * tonumber(prev[2]) + (1 - keep) * per_task end
local fields = {'measured_error_rate', string.format('%.6f', err),
                'measured_cost_per_task', string.format('%.6f', per_task),
                'measured_at', now}
local p50, p99 = pct(0.5), pct(0.99)
if p50 then
  table.insert(fields, 'measured_latency_p50'); table.insert(fields, string.format('%.1f', p50))
  table.insert(fields, 'measured_latency_p99'); table.insert(fields, string.format('%.1f', p99))
end
redis.call('HSETNX', snap_key, 'agent_id', ARGV[8])
redis.call('HSET', snap_key, unpack(fields))
redis.call('HINCRBY', snap_key, 'measured_tasks', n)
return 1
"""


def latency_key(agent_id: str) -> str:
    return f"{KEY_PREFIX}measured:lat:{agent_id}"


@dataclass
class _Pending:
    latencies: list[float] = field(default_factory=list)
    tasks: int = 0
    failures: int = 0
    cost: Decimal = Decimal(0)


class MeasuredSignals:
    """Gathers deliveries in the process; :meth:`flush` writes them (at most every ``every_s``
    from :meth:`maybe_flush`)."""

    def __init__(
        self,
        r: redis.Redis,
        *,
        every_s: float = 1.0,
        ttl_s: int = 86400,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = r
        self._every_s = every_s
        self._ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        self._flushed_at = clock()
        self._script = r.register_script(_FLUSH)

    def record(
        self, agent_id: str, *, latency_ms: float, failed: bool, cost: Decimal | None
    ) -> None:
        with self._lock:
            p = self._pending.setdefault(agent_id, _Pending())
            p.latencies.append(latency_ms)
            p.tasks += 1
            p.failures += int(failed)
            p.cost += cost or Decimal(0)

    def maybe_flush(self) -> int:
        if self._clock() - self._flushed_at < self._every_s:
            return 0
        return self.flush()

    def flush(self) -> int:
        with self._lock:
            pending, self._pending = self._pending, {}
            self._flushed_at = self._clock()
        if not pending:
            return 0
        now = f"{self._clock():.3f}"
        pipe = self._redis.pipeline(transaction=False)
        for agent_id, p in pending.items():
            self._script(
                keys=[latency_key(agent_id), snapshot_key(agent_id)],
                args=[
                    p.tasks,
                    p.failures,
                    str(p.cost),
                    now,
                    WINDOW,
                    ALPHA,
                    self._ttl_s,
                    agent_id,
                    *(f"{v:.1f}" for v in p.latencies[-WINDOW:]),
                ],
                client=pipe,
            )
        pipe.execute()
        return len(pending)
