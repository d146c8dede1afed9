"""Input checks for tool calls, the error type every tool raises, and money helpers.

Every check names the offending field (``input.initial_balance: ...``) so a
client author can fix a call from the error message alone. Unknown fields are
ignored, as the gateway documents only each tool's main fields.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson

CENT = Decimal("0.01")
ZERO = Decimal("0")
# No exponents, no NaN/Infinity, no thousands separators: what a ledger writes.
_MONEY_RE = re.compile(r"^-?\d{1,15}(\.\d{1,8})?$")
AGENT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
_DURATION_RE = re.compile(r"^(\d{1,6})\s*([smhdw])$")
_MONTH_RE = re.compile(r"^(\d{4})-(\d{2})$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_JSON_FIELD_BYTES = 16384
MAX_DURATION_S = 3650 * 86400.0
MAX_EPOCH_S = 253402300799.0  # 9999-12-31T23:59:59Z


class ToolError(Exception):
    """A failed call: HTTP status, machine code, one-line message (and the field)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        return {"error": error}


def bad(field: str, problem: str) -> ToolError:
    return ToolError(400, "invalid_input", f"input.{field}: {problem}", field=field)


def not_found(code: str, message: str, field: str | None = None) -> ToolError:
    return ToolError(404, code, message, field=field)


def conflict(code: str, message: str) -> ToolError:
    return ToolError(409, code, message)


def fmt_money(amount: Decimal) -> str:
    """Two decimals when exact ("50.00"), else every digit that matters ("49.999")."""
    cents = amount.quantize(CENT)
    if cents == amount:
        return str(cents) if cents else "0.00"
    return format(amount.normalize(), "f")


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- field readers -----------------------------------------------------------------


def req_str(
    inp: Mapping[str, Any], name: str, max_len: int = 256, allow_empty: bool = False
) -> str:
    value = inp.get(name)
    if value is None:
        raise bad(name, "required")
    return _check_str(name, value, max_len, allow_empty)


def opt_str(
    inp: Mapping[str, Any], name: str, default: str | None = None, max_len: int = 256
) -> str | None:
    value = inp.get(name)
    if value is None:
        return default
    return _check_str(name, value, max_len, True)


def _check_str(name: str, value: Any, max_len: int, allow_empty: bool) -> str:
    if not isinstance(value, str):
        raise bad(name, f"must be a string, not {_kind(value)}")
    if not allow_empty and not value.strip():
        raise bad(name, "must not be empty")
    if len(value) > max_len:
        raise bad(name, f"must be at most {max_len} characters")
    return value


def req_agent_id(inp: Mapping[str, Any], name: str = "agent_id") -> str:
    value = req_str(inp, name, 128)
    if not AGENT_ID_RE.match(value):
        raise bad(
            name,
            "must be 1-128 characters of letters, digits and . _ : @ - (starting with a letter or digit)",
        )
    return value


def opt_bool(inp: Mapping[str, Any], name: str, default: bool = False) -> bool:
    value = inp.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad(name, f"must be true or false, not {_kind(value)}")
    return value


def parse_money(name: str, value: Any, *, allow_negative: bool = False) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str):
        if isinstance(value, int | float):
            raise bad(name, f'must be a decimal string like "50.00", not a JSON number ({value!r})')
        raise bad(name, f'must be a decimal string like "50.00", not {_kind(value)}')
    text = value.strip()
    if not _MONEY_RE.match(text):
        raise bad(name, f'must be a decimal string like "50.00" (got {value[:40]!r})')
    amount = Decimal(text)
    if amount < 0 and not allow_negative:
        raise bad(name, "must not be negative")
    return amount


def req_money(inp: Mapping[str, Any], name: str, *, positive: bool = False) -> Decimal:
    value = inp.get(name)
    if value is None:
        raise bad(name, "required")
    amount = parse_money(name, value)
    if positive and amount <= 0:
        raise bad(name, "must be greater than zero")
    return amount


def opt_money(inp: Mapping[str, Any], name: str, default: Decimal | None = None) -> Decimal | None:
    value = inp.get(name)
    if value is None:
        return default
    return parse_money(name, value)


def opt_number(
    inp: Mapping[str, Any],
    name: str,
    default: float | None = None,
    lo: float | None = None,
    hi: float | None = None,
) -> float | None:
    value = inp.get(name)
    if value is None:
        return default
    return check_number(name, value, lo, hi)


def check_number(name: str, value: Any, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(value, bool):
        raise bad(name, "must be a number, not a boolean")
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise bad(name, f"must be a number (got {value[:40]!r})") from None
    elif isinstance(value, int | float):
        number = float(value)
    else:
        raise bad(name, f"must be a number, not {_kind(value)}")
    if not math.isfinite(number):
        raise bad(name, "must be a finite number")
    if lo is not None and number < lo:
        raise bad(name, f"must be at least {lo:g}")
    if hi is not None and number > hi:
        raise bad(name, f"must be at most {hi:g}")
    return number


def opt_int(
    inp: Mapping[str, Any],
    name: str,
    default: int | None = None,
    lo: int | None = None,
    hi: int | None = None,
) -> int | None:
    value = inp.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(name, f"must be an integer, not {_kind(value)}")
    if lo is not None and value < lo:
        raise bad(name, f"must be at least {lo}")
    if hi is not None and value > hi:
        raise bad(name, f"must be at most {hi}")
    return value


def req_int(inp: Mapping[str, Any], name: str, lo: int | None = None, hi: int | None = None) -> int:
    if inp.get(name) is None:
        raise bad(name, "required")
    value = opt_int(inp, name, None, lo, hi)
    assert value is not None
    return value


def opt_str_list(
    inp: Mapping[str, Any],
    name: str,
    max_items: int = 64,
    max_len: int = 128,
    required: bool = False,
) -> list[str]:
    value = inp.get(name)
    if value is None:
        if required:
            raise bad(name, "required")
        return []
    if not isinstance(value, list):
        raise bad(name, f"must be a list of strings, not {_kind(value)}")
    if len(value) > max_items:
        raise bad(name, f"must have at most {max_items} items")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise bad(f"{name}[{i}]", "must be a non-empty string")
        if len(item) > max_len:
            raise bad(f"{name}[{i}]", f"must be at most {max_len} characters")
    return value


def opt_object(inp: Mapping[str, Any], name: str, required: bool = False) -> dict[str, Any] | None:
    value = inp.get(name)
    if value is None:
        if required:
            raise bad(name, "required")
        return None
    if not isinstance(value, dict):
        raise bad(name, f"must be an object, not {_kind(value)}")
    check_size(name, value)
    return value


def check_size(name: str, value: Any) -> None:
    # Stored payloads are bounded so a careless client cannot balloon memory.
    try:
        size = len(orjson.dumps(value))
    except orjson.JSONEncodeError:
        raise bad(name, "is nested too deeply") from None
    if size > MAX_JSON_FIELD_BYTES:
        raise bad(name, f"must serialise to at most {MAX_JSON_FIELD_BYTES} bytes of JSON")


def opt_timestamp(inp: Mapping[str, Any], name: str) -> float | None:
    """ISO 8601 (naive means UTC) or epoch seconds."""
    value = inp.get(name)
    if value is None:
        return None
    return parse_time(name, value)


def parse_time(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise bad(name, "must be an ISO 8601 time or epoch seconds, not a boolean")
    if isinstance(value, int | float):
        if not math.isfinite(value) or not 0 <= value <= MAX_EPOCH_S:
            raise bad(name, "must be epoch seconds between 1970 and 9999")
        return float(value)
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise bad(name, f"must be an ISO 8601 time (got {value[:40]!r})") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        try:
            return when.timestamp()
        except (OverflowError, ValueError, OSError):
            raise bad(name, "must be a time between 1970 and 9999") from None
    raise bad(name, f"must be an ISO 8601 time or epoch seconds, not {_kind(value)}")


def parse_duration(name: str, value: Any) -> float:
    """``"5m"``, ``"24h"``, ``"30d"``, ``"1w"`` or a number of seconds."""
    seconds = 0.0
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value) if math.isfinite(value) else 0.0
    elif isinstance(value, str):
        match = _DURATION_RE.match(value.strip().lower())
        if match:
            seconds = float(int(match.group(1)) * _UNIT_S[match.group(2)])
    if not 0 < seconds <= MAX_DURATION_S:
        raise bad(
            name, 'must be a duration like "5m", "24h", "30d" (or seconds), at most ten years'
        )
    return seconds


def parse_period(name: str, value: Any, now: float) -> tuple[float, float]:
    """A window ending now (``"30d"``) or a calendar month (``"2026-05"``): (start, end)."""
    if isinstance(value, str):
        match = _MONTH_RE.match(value.strip())
        if match:
            year, month = int(match.group(1)), int(match.group(2))
            if not 1 <= month <= 12 or not 1970 <= year <= 9998:
                raise bad(name, "must name a real month, like 2026-05")
            start = datetime(year, month, 1, tzinfo=UTC)
            end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
            return start.timestamp(), end.timestamp()
    seconds = parse_duration(name, value)
    return now - seconds, now


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
