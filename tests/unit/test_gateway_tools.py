"""The tool table: builders, answer models, money on the wire, trace contexts."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from fleet.gateway import TraceContext, schemas, tools
from fleet.gateway._core import _json_default
from fleet.gateway.tools import OUTPUT_MODELS, Tool, ToolCall

# One call per builder, with a plausible answer for it.
CASES: list[tuple[ToolCall[Any], dict[str, Any]]] = [
    (
        tools.register_agent("a-1", "standard", ["search"], {"fleet": "demo"}),
        {
            "agent_id": "a-1",
            "api_key": "k",
            "tier": "standard",
            "registered_at": "2025-01-01T00:00:00Z",
        },
    ),
    (tools.rotate_agent_key("a-1"), {"agent_id": "a-1", "api_key": "k2", "tier": "standard"}),
    (tools.upgrade_agent_tier("a-1", "premium"), {"agent_id": "a-1", "tier": "premium"}),
    (
        tools.build_claim_chain("a-1", ["kyc", {"type": "soc2"}]),
        {"chain_id": "c-1", "claims": ["kyc"]},
    ),
    (tools.create_wallet("a-1", Decimal("50.00")), {"wallet_id": "w-1", "balance": "50.00"}),
    (tools.get_balance("a-1"), {"balance": "50.00", "burn_rate_per_hour": "0.40"}),
    (tools.estimate_cost("search", 120), {"estimated_cost": "0.003"}),
    (
        tools.estimate_tier_change("a-1", "premium", 1000),
        {"current_daily_cost": "1.20", "projected_daily_cost": "3.10"},
    ),
    (
        tools.get_volume_discount("a-1"),
        {"discount_pct": 5, "volume": 1200, "next_tier_volume": 5000},
    ),
    (tools.convert_currency(Decimal(10), "USD", "EUR"), {"amount": "9.20", "rate": "0.92"}),
    (
        tools.record_transaction(
            "a-1", "t-1", "search", Decimal("0.01"), datetime(2025, 1, 1, tzinfo=UTC)
        ),
        {"transaction_id": "tx-1"},
    ),
    (tools.submit_metrics("a-1", {"accuracy": 0.97}), {"accepted": True}),
    (tools.get_agent_reputation("a-1"), {"score": 0.82}),
    (
        tools.get_analytics("a-1"),
        {
            "latency_p50": 120.0,
            "latency_p99": 900.5,
            "error_rate": 0.01,
            "tool_call_volume": 340,
            "task_completion_rate": 0.99,
        },
    ),
    (tools.search_agents_by_metrics("fleet-a", ["error_rate"]), {"agents": [{"agent_id": "a-1"}]}),
    (tools.get_leaderboard("reputation", "demo"), {"entries": []}),
    (tools.create_sla("a-1", {"p99_ms": 2000}), {"sla_id": "sla-1"}),
    (
        tools.check_sla_compliance("a-1"),
        {"compliant": False, "margin_pct": -12.5, "breached_terms": ["p99_ms"]},
    ),
    (tools.get_sla_violations("a-1"), {"violations": [], "duration_minutes": 0}),
    (
        tools.get_sla_violations(fleet_prefix="fleet-a", period="2025-01"),
        {"violations": [], "duration_minutes": 12},
    ),
    (tools.send_message("ops", "breach", "a-1 is down", priority="high"), {"message_id": "m-1"}),
    (
        tools.create_dispute("a-1", "a-2", "sla", {"minutes": 40}),
        {"dispute_id": "d-1", "status": "open"},
    ),
    (
        tools.resolve_dispute("d-1", "partial_refund", Decimal("2.50"), "policy"),
        {"dispute_id": "d-1", "status": "resolved"},
    ),
    (
        tools.register_service("a-1", ["search"], {"per_call": Decimal("0.01")}),
        {"service_id": "s-1"},
    ),
    (
        tools.search_services(["search"], min_reputation=0.5, max_cost=Decimal("0.05")),
        {"services": [{"agent_id": "a-1", "price": "0.01", "reputation": 0.9, "latency_ms": 80}]},
    ),
    (tools.best_match({"capabilities": ["search"]}), {"best_match": None}),
    (tools.create_audit_trail("a-1", "provision", {"step": "wallet"}), {"audit_id": "au-1"}),
    (
        tools.get_compliance_report("fleet-a", "2025-01", [12, "art13"]),
        {"compliant": True, "articles": {"12": {"status": "compliant", "findings": []}}},
    ),
    (
        tools.check_rate_limit("demo"),
        {"limit": 1000, "remaining": 990, "reset_at": "2025-01-01T00:01:00Z"},
    ),
    (tools.freeze_wallet("a-1", "retire"), {"wallet_id": "w-1", "frozen": True}),
    (tools.unfreeze_wallet("a-1", "resume"), {"wallet_id": "w-1", "frozen": False}),
    (tools.transfer_funds("a-1", "treasury", Decimal("49.60")), {"transaction_id": "tx-2"}),
    (tools.deregister_agent("a-1", "retired"), {"agent_id": "a-1", "status": "deregistered"}),
]


def test_the_table_covers_all_29_tools() -> None:
    assert len(Tool) == 29
    assert set(OUTPUT_MODELS) == set(Tool)
    assert {call.tool for call, _ in CASES} == set(Tool)


@pytest.mark.parametrize(("call", "answer"), CASES, ids=lambda c: getattr(c, "tool", ""))
def test_each_builder_answer_validates(call: ToolCall[Any], answer: dict[str, Any]) -> None:
    assert isinstance(call.tool, Tool)
    result = call.output.model_validate(answer)
    assert isinstance(result, schemas.GatewayOutput)
    # The by-name model for raw calls accepts the same answer.
    OUTPUT_MODELS[call.tool].model_validate(answer)


@pytest.mark.parametrize(("call", "answer"), CASES, ids=lambda c: getattr(c, "tool", ""))
def test_inputs_encode_to_json(call: ToolCall[Any], answer: dict[str, Any]) -> None:
    wire = orjson.loads(orjson.dumps(dict(call.input), default=_json_default))
    assert isinstance(wire, dict)


def test_money_arguments_become_decimal_strings() -> None:
    assert tools.create_wallet("a", Decimal("50.00")).input["initial_balance"] == "50.00"
    assert tools.create_wallet("a", "7.5").input["initial_balance"] == "7.5"
    assert tools.create_wallet("a", 5).input["initial_balance"] == "5"
    assert tools.money(Decimal("1E+2")) == "100"
    assert tools.transfer_funds("a", "treasury", Decimal("0.10")).input["amount"] == "0.10"


@pytest.mark.parametrize("bad", [1.5, True, None, [1]])
def test_money_refuses_non_decimals(bad: Any) -> None:
    with pytest.raises(TypeError):
        tools.money(bad)


@pytest.mark.parametrize("bad", ["ten", "NaN", "Infinity", Decimal("NaN")])
def test_money_refuses_non_amounts(bad: Any) -> None:
    with pytest.raises(ValueError):
        tools.money(bad)


def test_optional_inputs_are_left_out() -> None:
    assert tools.get_analytics("a").input == {"agent_id": "a", "time_range": "1h"}
    assert tools.get_analytics("a", "24h", ["error_rate"]).input["metrics"] == ["error_rate"]
    assert tools.send_message("o", "s", "b").input == {"to": "o", "subject": "s", "body": "b"}
    assert tools.search_services(["x"]).input == {"capabilities": ["x"]}


def test_analytics_answer_holds_what_was_asked_for() -> None:
    result = schemas.AnalyticsResult.model_validate({"agent_id": "a", "error_rate": 0.02})
    assert result.error_rate == 0.02 and result.latency_p99 is None


def test_sla_from_template_terms_or_both() -> None:
    assert tools.create_sla("a", template="standard-support").input == {
        "agent_id": "a",
        "template": "standard-support",
    }
    both = tools.create_sla("a", {"p99_latency_ms": 900}, template="premium-support")
    assert both.input["terms"] == {"p99_latency_ms": 900}
    with pytest.raises(ValueError):
        tools.create_sla("a")


def test_transfer_can_drain_the_whole_balance() -> None:
    assert tools.transfer_funds("a", "fleet-treasury", "all").input["amount"] == "all"


def test_message_sender_goes_in_from() -> None:
    assert tools.send_message("ops", "s", "b", sender="a-1").input["from"] == "a-1"


def test_repeat_unsafe_tools_are_real_tools() -> None:
    assert tools.REPEAT_UNSAFE <= set(Tool)
    assert Tool.TRANSFER_FUNDS in tools.REPEAT_UNSAFE
    assert Tool.GET_BALANCE not in tools.REPEAT_UNSAFE


def test_sla_violations_needs_exactly_one_scope() -> None:
    with pytest.raises(ValueError):
        tools.get_sla_violations()
    with pytest.raises(ValueError):
        tools.get_sla_violations("a", fleet_prefix="f")


def test_money_answers_are_decimal_and_never_float() -> None:
    balance = schemas.BalanceResult.model_validate({"balance": "0.10", "burn_rate_per_hour": "3"})
    assert balance.balance == Decimal("0.10")
    with pytest.raises(ValidationError):
        schemas.BalanceResult.model_validate({"balance": 0.1, "burn_rate_per_hour": "3"})
    with pytest.raises(ValidationError):
        schemas.WalletResult.model_validate({"wallet_id": "w", "balance": "NaN"})


def test_estimate_cost_by_name_needs_one_form() -> None:
    with pytest.raises(ValidationError):
        schemas.EstimateCostResult.model_validate({"current_daily_cost": "1"})


def test_fractions_are_bounded() -> None:
    with pytest.raises(ValidationError):
        schemas.ReputationResult.model_validate({"score": 1.5})


def test_best_match_key_must_be_present() -> None:
    with pytest.raises(ValidationError):
        schemas.BestMatchResult.model_validate({})


# -- trace context -------------------------------------------------------------


def test_trace_context_new_and_child() -> None:
    root = TraceContext.new()
    child = root.child()
    assert len(root.trace_id) == 32 and len(root.span_id) == 16
    assert child.trace_id == root.trace_id and child.span_id != root.span_id
    assert TraceContext.new().trace_id != root.trace_id


def test_traceparent_round_trip() -> None:
    ctx = TraceContext.new()
    assert ctx.traceparent == f"00-{ctx.trace_id}-{ctx.span_id}-01"
    assert TraceContext.from_traceparent(ctx.traceparent) == ctx


@pytest.mark.parametrize(
    "header",
    [
        "",
        "00-abc-def-01",
        "00-" + "0" * 32 + "-" + "1" * 16 + "-01",
        "00-" + "a" * 32 + "-" + "0" * 16 + "-01",
    ],
)
def test_invalid_traceparent_is_refused(header: str) -> None:
    with pytest.raises(ValueError):
        TraceContext.from_traceparent(header)
