"""Fault injection: what goes wrong with a call, decided before the tool runs.

The configuration is one JSON object (``GET/PUT/DELETE /_sandbox/faults``)::

    {
      "latency_ms": 50, "latency_jitter_ms": 10,      # uniform in mean ± jitter
      "timeout_s": 30, "timeout_action": "drop",      # or "error" (504 after holding)
      "kill": false,                                  # drop every connection
      ...rule fields (apply to every tool)...,
      "tools": {"create_wallet": {...rule fields...}} # per tool, on top of the global rule
    }

Rule fields: ``error_rate`` (0..1) with ``error_status`` (500/502/503/504),
``timeout_rate``, ``rate_limit_rate`` and ``rate_limit_next`` (the next N calls
get 429) with ``retry_after_s``, ``drop_rate`` (close without answering),
``drop_after_commit_rate`` (the tool runs, then the answer is lost: the
nastiest real failure, for idempotency tests), ``latency_ms`` (extra, per
tool), ``kill`` and ``outages``: windows ``{"start", "end"}`` (epoch seconds
or ISO 8601 on the sandbox clock) or ``{"duration_s", "start_in_s"?}`` during
which the tool answers 503 with Retry-After set to the time left.

``PUT`` merges: top-level fields replace, ``tools`` merge per tool (a tool set
to ``null`` loses its rule), ``outages`` replace the list they belong to.
Every decision draws from one RNG seeded at start, so a sequential test sees
the same faults on every run.
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Mapping
from typing import Any

from sandbox.validate import MAX_DURATION_S, Problem, iso, parse_time

PASS, DROP, ERROR, RATE_LIMITED, OUTAGE, TIMEOUT, DROP_AFTER_COMMIT = range(7)
ERROR_STATUSES = (500, 502, 503, 504)
_RATE_FIELDS = (
    "error_rate",
    "timeout_rate",
    "rate_limit_rate",
    "drop_rate",
    "drop_after_commit_rate",
)


class FaultConfigError(ValueError):
    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class Outage:
    __slots__ = ("start", "end")

    def __init__(self, start: float, end: float) -> None:
        self.start = start
        self.end = end

    def view(self, now: float) -> dict[str, Any]:
        return {
            "start": iso(self.start),
            "end": iso(self.end),
            "active": self.start <= now < self.end,
            "remaining_s": round(max(0.0, self.end - max(now, self.start)), 3),
        }


class Rule:
    """Faults for one scope: every tool (the global rule) or a single tool."""

    __slots__ = (
        "error_rate",
        "error_status",
        "timeout_rate",
        "rate_limit_rate",
        "rate_limit_next",
        "retry_after_s",
        "drop_rate",
        "drop_after_commit_rate",
        "latency_ms",
        "kill",
        "outages",
    )

    def __init__(self) -> None:
        self.error_rate = 0.0
        self.error_status = 500
        self.timeout_rate = 0.0
        self.rate_limit_rate = 0.0
        self.rate_limit_next = 0
        self.retry_after_s = 1.0
        self.drop_rate = 0.0
        self.drop_after_commit_rate = 0.0
        self.latency_ms = 0.0
        self.kill = False
        self.outages: list[Outage] = []

    def copy(self) -> Rule:
        other = Rule()
        for name in Rule.__slots__:
            setattr(other, name, getattr(self, name))
        other.outages = list(self.outages)
        return other

    @property
    def active(self) -> bool:
        return bool(
            self.kill
            or self.outages
            or self.rate_limit_next
            or any(getattr(self, name) for name in _RATE_FIELDS)
        )

    def update(self, body: Mapping[str, Any], where: str, now: float) -> None:
        for name, value in body.items():
            field = f"{where}{name}"
            if name in _RATE_FIELDS:
                setattr(self, name, _fraction(field, value))
            elif name == "error_status":
                if (
                    not isinstance(value, int)
                    or isinstance(value, bool)
                    or value not in ERROR_STATUSES
                ):
                    raise FaultConfigError(
                        field, f"must be one of {', '.join(map(str, ERROR_STATUSES))}"
                    )
                self.error_status = value
            elif name == "rate_limit_next":
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise FaultConfigError(field, "must be a non-negative integer")
                self.rate_limit_next = value
            elif name == "retry_after_s":
                self.retry_after_s = _number(field, value, 0.0)
            elif name == "latency_ms":
                self.latency_ms = _number(field, value, 0.0)
            elif name == "kill":
                self.kill = _bool(field, value)
            elif name == "outages":
                self.outages = _outages(field, value, now)
            else:
                raise FaultConfigError(field, "unknown fault setting")

    def view(self, now: float) -> dict[str, Any]:
        out: dict[str, Any] = {
            name: getattr(self, name) for name in Rule.__slots__ if name != "outages"
        }
        out["outages"] = [o.view(now) for o in self.outages]
        return out

    def outage_at(self, now: float) -> Outage | None:
        for outage in self.outages:
            if outage.start <= now < outage.end:
                return outage
        return None

    def prune(self, now: float) -> bool:
        """Forget finished outages; True if any were dropped."""
        kept = [o for o in self.outages if o.end > now]
        changed = len(kept) != len(self.outages)
        self.outages = kept
        return changed


class Faults:
    """The live fault configuration and the seeded decisions drawn from it."""

    def __init__(self, seed: int, tools: Collection[str]) -> None:
        self.known_tools = frozenset(tools)
        self.rng = random.Random(seed)
        # Latency draws have their own RNG so that turning latency on or off
        # does not change which calls a test's fault rates hit.
        self.latency_rng = random.Random(seed + 1)
        self.latency_ms = 0.0
        self.latency_jitter_ms = 0.0
        self.timeout_s = 30.0
        self.timeout_action = "drop"
        self.rule = Rule()
        self.tools: dict[str, Rule] = {}
        self.active = False
        self.has_latency = False

    # --- configuration ------------------------------------------------------------

    def apply(self, body: Any, now: float) -> None:
        """Merge a fault document; all-or-nothing (a bad field changes nothing)."""
        if not isinstance(body, dict):
            raise FaultConfigError("(body)", "must be a JSON object")
        rule = self.rule.copy()
        tools = {name: r.copy() for name, r in self.tools.items()}
        top: dict[str, Any] = {}
        rule_fields: dict[str, Any] = {}
        for name, value in body.items():
            if name in ("latency_ms", "latency_jitter_ms"):
                top[name] = _number(name, value, 0.0)
            elif name == "timeout_s":
                top[name] = _number(name, value, 0.001)
            elif name == "timeout_action":
                if value not in ("drop", "error"):
                    raise FaultConfigError(name, 'must be "drop" or "error"')
                top[name] = value
            elif name == "tools":
                if not isinstance(value, dict):
                    raise FaultConfigError(name, "must be an object of tool name → rule")
                for tool, tool_body in value.items():
                    if tool not in self.known_tools:
                        raise FaultConfigError(f"tools.{tool}", "unknown tool")
                    if tool_body is None:
                        tools.pop(tool, None)
                        continue
                    if not isinstance(tool_body, dict):
                        raise FaultConfigError(
                            f"tools.{tool}", "must be an object (or null to remove)"
                        )
                    tool_rule = tools.get(tool) or Rule()
                    tool_rule.update(tool_body, f"tools.{tool}.", now)
                    tools[tool] = tool_rule
            else:
                rule_fields[name] = value
        # Global latency lives at the top; a tool's latency_ms is extra on top of it.
        rule.update(rule_fields, "", now)
        for name, value in top.items():
            setattr(self, name, value)
        self.rule = rule
        self.tools = {name: r for name, r in tools.items() if r.active or r.latency_ms}
        self._refresh()

    def clear(self) -> None:
        """No faults; latency and timeout settings stay."""
        self.rule = Rule()
        self.tools = {}
        self._refresh()

    def _refresh(self) -> None:
        self.active = self.rule.active or any(r.active for r in self.tools.values())
        self.has_latency = bool(
            self.latency_ms
            or self.latency_jitter_ms
            or any(r.latency_ms for r in self.tools.values())
        )

    def view(self, now: float) -> dict[str, Any]:
        out: dict[str, Any] = {
            "latency_ms": self.latency_ms,
            "latency_jitter_ms": self.latency_jitter_ms,
            "timeout_s": self.timeout_s,
            "timeout_action": self.timeout_action,
        }
        # The global rule's own latency_ms is unused: global latency is the top-level field.
        out.update({k: v for k, v in self.rule.view(now).items() if k != "latency_ms"})
        out["tools"] = {name: rule.view(now) for name, rule in sorted(self.tools.items())}
        out["active"] = self.active
        return out

    # --- per request ----------------------------------------------------------------

    def delay_s(self, tool: str) -> float:
        extra = self.tools[tool].latency_ms if tool in self.tools else 0.0
        mean = self.latency_ms + extra
        jitter = self.latency_jitter_ms
        if jitter:
            mean += self.latency_rng.uniform(-jitter, jitter)
        return max(0.0, mean) / 1000.0

    def killed(self, tool: str) -> bool:
        if self.rule.kill:
            return True
        rule = self.tools.get(tool)
        return rule is not None and rule.kill

    def decide(self, tool: str, now: float) -> tuple[int, int, float]:
        """(decision, HTTP status, Retry-After seconds) for one call of ``tool``."""
        if not self.active:
            return PASS, 200, 0.0
        tool_rule = self.tools.get(tool)
        rules = (self.rule,) if tool_rule is None else (self.rule, tool_rule)
        for rule in rules:
            if rule.outages:
                if rule.prune(now):
                    self._refresh()
                outage = rule.outage_at(now)
                if outage is not None:
                    return OUTAGE, 503, outage.end - now
        for rule in rules:
            if rule.rate_limit_next > 0:
                rule.rate_limit_next -= 1
                if rule.rate_limit_next == 0:
                    self._refresh()
                return RATE_LIMITED, 429, rule.retry_after_s
        draw = self.rng.random
        for rule in rules:
            if rule.rate_limit_rate and draw() < rule.rate_limit_rate:
                return RATE_LIMITED, 429, rule.retry_after_s
        for rule in rules:
            if rule.timeout_rate and draw() < rule.timeout_rate:
                return TIMEOUT, 504, 0.0
        for rule in rules:
            if rule.drop_rate and draw() < rule.drop_rate:
                return DROP, 0, 0.0
        for rule in rules:
            if rule.error_rate and draw() < rule.error_rate:
                return ERROR, rule.error_status, 0.0
        for rule in rules:
            if rule.drop_after_commit_rate and draw() < rule.drop_after_commit_rate:
                return DROP_AFTER_COMMIT, 0, 0.0
        return PASS, 200, 0.0


def retry_after_header(seconds: float) -> str:
    """HTTP wants whole seconds; round up so a client never comes back early."""
    return str(max(0, math.ceil(seconds - 1e-9)))


def _number(field: str, value: Any, lo: float, hi: float = MAX_DURATION_S * 1000) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise FaultConfigError(field, "must be a number")
    if value < lo:
        raise FaultConfigError(field, f"must be at least {lo:g}")
    if value > hi:
        raise FaultConfigError(field, f"must be at most {hi:g}")
    return float(value)


def _fraction(field: str, value: Any) -> float:
    number = _number(field, value, 0.0)
    if number > 1:
        raise FaultConfigError(field, "must be a fraction between 0 and 1")
    return number


def _bool(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise FaultConfigError(field, "must be true or false")
    return value


def _outages(field: str, value: Any, now: float) -> list[Outage]:
    if not isinstance(value, list):
        raise FaultConfigError(field, "must be a list of windows")
    windows = []
    for i, item in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(item, dict):
            raise FaultConfigError(
                where, 'must be {"start", "end"} or {"duration_s", "start_in_s"?}'
            )
        unknown = set(item) - {"start", "end", "duration_s", "start_in_s"}
        if unknown:
            raise FaultConfigError(f"{where}.{sorted(unknown)[0]}", "unknown outage field")
        try:
            if "start" in item:
                start = parse_time("start", item["start"])
            else:
                start = now + _number(
                    f"{where}.start_in_s", item.get("start_in_s", 0), 0.0, MAX_DURATION_S
                )
            if "end" in item:
                end = parse_time("end", item["end"])
            elif "duration_s" in item:
                end = start + _number(
                    f"{where}.duration_s", item["duration_s"], 0.0, MAX_DURATION_S
                )
            else:
                raise FaultConfigError(where, 'needs "end" or "duration_s"')
        except Problem as exc:  # from parse_time: re-label with our path
            raise FaultConfigError(where, exc.detail.split(": ", 1)[-1]) from None
        if end <= start:
            raise FaultConfigError(where, "must end after it starts")
        windows.append(Outage(start, end))
    return windows
