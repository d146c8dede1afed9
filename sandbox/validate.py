"""Request validation and answer serialization, shaped like the real gateway's.

Bodies are checked against a small field spec per route: unknown fields are
refused (the gateway's models are ``extra="forbid"``), with pydantic-style
messages (``body.x: Extra inputs are not permitted``) joined by ``; ``.
Answers go through :func:`serialize`, which turns the gateway's monetary field
names into 2-dp strings and its timestamp field names into ISO 8601, and leaves
every other number a number, as the real one does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

CENT = Decimal("0.01")
ZERO = Decimal("0")
AGENT_ID_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,127}$")
MAX_DURATION_S = 3650 * 86400.0
MAX_EPOCH_S = 253402300799.0
PROBLEM_BASE = "https://api.greenhelix.net/errors/"
_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    410: "Gone",
    422: "Unprocessable Entity",
    428: "Precondition Required",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}

MONEY_FIELDS = frozenset(
    {
        "balance",
        "amount",
        "cost",
        "fee",
        "new_balance",
        "price",
        "charged",
        "total",
        "remaining",
        "spent",
        "average_rating",
        "discounted_price",
        "original_price",
    }
)
TIMESTAMP_FIELDS = frozenset(
    {
        "created_at",
        "updated_at",
        "captured_at",
        "settled_at",
        "expires_at",
        "cancelled_at",
        "refunded_at",
        "released_at",
        "resolved_at",
        "registered_at",
        "verified_at",
        "timestamp",
        "revoked_at",
    }
)


class Problem(Exception):
    """A refused call: RFC 9457 status, code (``admin_only``) and detail."""

    def __init__(self, status: int, code: str, detail: str, *, close: bool = False) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        # The real server drops the keep-alive connection after answering
        # an exception that escaped a route (uvicorn behind Starlette's
        # ServerErrorMiddleware); route-level product errors set this.
        self.close = close

    def body(self, instance: str) -> dict[str, Any]:
        return {
            "type": PROBLEM_BASE + self.code.replace("_", "-"),
            "title": _TITLES.get(self.status, "Error"),
            "status": self.status,
            "detail": self.detail,
            "instance": instance,
        }


# Kept under the name the fault module knows.
ToolError = Problem


def not_found(detail: str) -> Problem:
    return Problem(404, "not_found", detail, close=True)


def forbidden() -> Problem:
    return Problem(403, "forbidden", "Forbidden: you do not have access to this resource")


def bad_request(detail: str) -> Problem:
    return Problem(400, "bad_request", detail)


# --- body specs ---------------------------------------------------------------------


@dataclass(frozen=True)
class F:
    """One body field: its kind, whether required, and limits."""

    kind: str  # str | agent_id | credits | number | int | bool | object | str_list | enum
    required: bool = False
    choices: tuple[str, ...] = ()
    lo: float | None = None
    hi: float | None = None
    max_len: int = 10_000
    positive: bool = False


Spec = Mapping[str, F]


def check_body(spec: Spec, body: Any, aliases: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The body as a dict of checked values, or a 422 naming every bad field."""
    if not isinstance(body, dict):
        raise Problem(
            422,
            "validation_error",
            "body: Input should be a valid dictionary or object to extract fields from",
        )
    errors: list[str] = []
    out: dict[str, Any] = {}
    seen: dict[str, Any] = {}
    for name, value in body.items():
        target = aliases.get(name, name) if aliases else name
        if target not in spec:
            continue
        seen[target] = value
    for name, field in spec.items():
        if name not in seen or seen[name] is None:
            if field.required:
                errors.append(f"body.{name}: Field required")
            continue
        try:
            out[name] = _convert(field, seen[name])
        except ValueError as exc:
            errors.append(f"body.{name}: {exc}")
    for name in body:
        target = aliases.get(name, name) if aliases else name
        if target not in spec:
            errors.append(f"body.{name}: Extra inputs are not permitted")
    if errors:
        raise Problem(422, "validation_error", "; ".join(errors))
    return out


def _convert(field: F, value: Any) -> Any:
    kind = field.kind
    if kind in ("str", "agent_id", "enum"):
        if not isinstance(value, str):
            raise ValueError("Input should be a valid string")
        if len(value) > field.max_len:
            raise ValueError(f"String should have at most {field.max_len} characters")
        if kind == "agent_id" and not AGENT_ID_RE.match(value):
            raise ValueError(f"String should match pattern '{AGENT_ID_RE.pattern}'")
        if kind == "enum" and value not in field.choices:
            listed = ", ".join(repr(c) for c in field.choices)
            raise ValueError(f"Input should be {listed}")
        return value
    if kind == "credits":
        amount = parse_decimal(value)
        if amount.as_tuple().exponent < -2:  # type: ignore[operator]
            raise ValueError("Decimal input should have no more than 2 decimal places")
        if field.positive and amount <= 0:
            raise ValueError("Input should be greater than 0")
        if amount < 0:
            raise ValueError("Input should be greater than or equal to 0")
        return amount
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError("Input should be a valid number")
        try:
            number = float(value)
        except ValueError:
            raise ValueError("Input should be a valid number") from None
        if not math.isfinite(number):
            raise ValueError("Input should be a finite number")
        if field.lo is not None and number < field.lo:
            raise ValueError(f"Input should be greater than or equal to {field.lo:g}")
        if field.hi is not None and number > field.hi:
            raise ValueError(f"Input should be less than or equal to {field.hi:g}")
        return number
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("Input should be a valid integer")
        if field.lo is not None and value < field.lo:
            raise ValueError(f"Input should be greater than or equal to {field.lo:g}")
        if field.hi is not None and value > field.hi:
            raise ValueError(f"Input should be less than or equal to {field.hi:g}")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError("Input should be a valid boolean")
        return value
    if kind == "object":
        if not isinstance(value, dict):
            raise ValueError("Input should be a valid dictionary")
        return value
    if kind == "str_list":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError("Input should be a valid list of strings")
        return value
    raise AssertionError(kind)


def parse_decimal(value: Any) -> Decimal:
    """A decimal from a JSON string or number, through its text (never through float)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("Decimal input should be an integer, float, string or Decimal object")
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError("Input should be a valid decimal") from None
    if not amount.is_finite():
        raise ValueError("Input should be a finite number")
    return amount


# --- query parameters -----------------------------------------------------------------


def q_float(query: Mapping[str, str], name: str, default: float | None = None) -> float | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise Problem(
            422, "validation_error", f"query.{name}: Input should be a valid number"
        ) from None
    if not math.isfinite(value):
        raise Problem(422, "validation_error", f"query.{name}: Input should be a finite number")
    return value


def q_int(query: Mapping[str, str], name: str, default: int, lo: int = 0, hi: int = 10_000) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise Problem(
            422, "validation_error", f"query.{name}: Input should be a valid integer"
        ) from None
    if not lo <= value <= hi:
        raise Problem(
            422,
            "validation_error",
            f"query.{name}: Input should be between {lo} and {hi}",
        )
    return value


# --- answers --------------------------------------------------------------------------


def money(value: Decimal) -> str:
    return f"{value.quantize(CENT):f}"


def as_float(value: Decimal) -> float:
    """A money value the real gateway answers as a JSON number (it keeps floats there)."""
    return float(value)


def plain(value: Decimal) -> str:
    """``str(Decimal(float))``: how the payments engine prints amounts ("25.0")."""
    return str(Decimal(str(float(value))))


def serialize(data: Any) -> Any:
    """Money field names to 2-dp strings, timestamp field names to ISO 8601."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            if (
                key in MONEY_FIELDS
                and isinstance(value, Decimal | int | float)
                and not isinstance(value, bool)
            ):
                out[key] = f"{Decimal(str(value)):.2f}"
            elif key in TIMESTAMP_FIELDS and isinstance(value, int | float):
                out[key] = datetime.fromtimestamp(float(value), UTC).isoformat()
            else:
                out[key] = serialize(value)
        return out
    if isinstance(data, list):
        return [serialize(item) for item in data]
    if isinstance(data, Decimal):
        return float(data)
    return data


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(name: str, value: Any) -> float:
    """Epoch seconds from a number or an ISO 8601 text (fault windows)."""
    if isinstance(value, bool):
        raise Problem(400, "bad_request", f"{name}: must be an ISO 8601 time or epoch seconds")
    if isinstance(value, int | float):
        if not math.isfinite(value) or not 0 <= value <= MAX_EPOCH_S:
            raise Problem(
                400, "bad_request", f"{name}: must be epoch seconds between 1970 and 9999"
            )
        return float(value)
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise Problem(
                400, "bad_request", f"{name}: must be an ISO 8601 time (got {value[:40]!r})"
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return when.timestamp()
    raise Problem(400, "bad_request", f"{name}: must be an ISO 8601 time or epoch seconds")
