"""The gateway's money facts the review needs: exchange rates and volume discount tiers.

Both are read through the gateway client (``get_exchange_rate``, ``get_volume_discount``)
and validated by its schemas; a rate is asked for once per pair per review.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

from fleet.gateway import operations as ops


class FinanceSource(Protocol):
    def rate(self, from_currency: str, to_currency: str) -> Decimal: ...

    def discount_pct(self, agent_id: str, tool_name: str, quantity: int) -> Decimal: ...


class RateError(ValueError):
    """The gateway's answer is not a usable rate or discount."""


def _decimal(value: Any, what: str) -> Decimal:
    try:
        out = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise RateError(f"{what}: not a number: {value!r}") from None
    if not out.is_finite() or out < 0:
        raise RateError(f"{what}: must be a finite number >= 0, not {value!r}")
    return out


class GatewayFinance:
    """Rates and discounts from the gateway; ``run`` is a client's ``run``."""

    def __init__(self, run: Callable[[ops.Operation[Any]], Any]) -> None:
        self._run = run
        self._rates: dict[tuple[str, str], Decimal] = {}

    def rate(self, from_currency: str, to_currency: str) -> Decimal:
        if from_currency == to_currency:
            return Decimal(1)
        pair = (from_currency, to_currency)
        if pair not in self._rates:
            answer = self._run(ops.exchange_rate(from_currency, to_currency))
            rate = _decimal(answer.rate, f"exchange rate {from_currency}->{to_currency}")
            if rate == 0:
                raise RateError(f"exchange rate {from_currency}->{to_currency}: the gateway said 0")
            self._rates[pair] = rate
        return self._rates[pair]

    def discount_pct(self, agent_id: str, tool_name: str, quantity: int) -> Decimal:
        answer = self._run(ops.get_volume_discount(agent_id, tool_name, max(1, quantity)))
        pct = _decimal(answer.discount_pct, f"discount for {tool_name} x{quantity}")
        if pct > 100:
            raise RateError(f"discount for {tool_name} x{quantity}: {pct} % is over 100 %")
        return pct
