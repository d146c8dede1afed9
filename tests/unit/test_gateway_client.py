"""The REST client over httpx.MockTransport: errors, money, charges, pacing, keys, retries."""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest

from fleet.gateway import (
    AdminOnly,
    AlreadyExists,
    Auth,
    AuthError,
    BadInput,
    BudgetExceeded,
    Charge,
    ConfirmationRequired,
    Conflict,
    DepositLimitExceeded,
    Forbidden,
    GatewayClient,
    GatewayConfig,
    GatewayError,
    Gone,
    IdempotencyKeyReused,
    InsufficientBalance,
    InsufficientTier,
    InvalidResponse,
    MissingKey,
    NotFound,
    PaymentRequired,
    RateLimited,
    StaticKeyRing,
    Unavailable,
    WalletFrozen,
)
from fleet.gateway import (
    operations as o,
)

Handler = Callable[[httpx.Request], httpx.Response]
ADMIN, KEY_A = "a2a_admin_000000000000aaaa", "a2a_free_00000000000000a1"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def client(
    handler: Handler,
    *,
    admin: str | None = ADMIN,
    agents: dict[str, str] | None = None,
    clock: Clock | None = None,
    **kw: object,
) -> GatewayClient:
    return GatewayClient(
        GatewayConfig(url="http://gw.test", max_attempts=3, backoff_initial_s=0),
        StaticKeyRing(admin, agents if agents is not None else {"a": KEY_A}),
        transport=httpx.MockTransport(handler),
        sleep=lambda s: None,
        clock=clock or Clock(),
        **kw,  # type: ignore[arg-type]
    )


def recorder(sent: list[httpx.Request], make: Callable[[], httpx.Response]) -> Handler:
    def handler(r: httpx.Request) -> httpx.Response:
        sent.append(r)
        return make()

    return handler


def problem(status: int, code: str, detail: str = "no") -> httpx.Response:
    return httpx.Response(
        status,
        json={
            "type": f"https://api.greenhelix.net/errors/{code}",
            "title": "t",
            "status": status,
            "detail": detail,
            "instance": "/v1/x",
        },
        headers={"content-type": "application/problem+json"},
    )


def answer(body: str, **headers: str) -> httpx.Response:
    return httpx.Response(200, content=body.encode(), headers=headers)


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [
        (400, "bad-request", BadInput),
        (422, "validation-error", BadInput),
        (401, "missing-key", AuthError),
        (401, "authentication-error", AuthError),
        (402, "insufficient-balance", InsufficientBalance),
        (402, "budget-exceeded", BudgetExceeded),
        (402, "something-new", PaymentRequired),
        (403, "forbidden", Forbidden),
        (403, "insufficient-tier", InsufficientTier),
        (403, "admin-only", AdminOnly),
        (403, "forbidden-admin-only", AdminOnly),
        (403, "wallet-frozen", WalletFrozen),
        (403, "deposit-limit-exceeded", DepositLimitExceeded),
        (404, "not-found", NotFound),
        (409, "already-exists", AlreadyExists),
        (409, "idempotency-key-reused", IdempotencyKeyReused),
        (409, "conflict", Conflict),
        (410, "endpoint-removed", Gone),
        (428, "rotate-confirmation-required", ConfirmationRequired),
        (429, "rate-limit-exceeded", RateLimited),
    ],
)
def test_problem_bodies_map_to_typed_errors(status: int, code: str, error: type) -> None:
    with client(lambda r: problem(status, code, "Tier 'free' cannot (requires 'pro')")) as c:
        with pytest.raises(GatewayError) as caught:
            c.run(o.get_identity("a"))
    assert type(caught.value) is error
    assert (caught.value.status, caught.value.code) == (status, code)
    if error is InsufficientTier:
        assert caught.value.required_tier == "pro"  # type: ignore[attr-defined]


def test_a_code_of_another_status_does_not_pick_the_subclass() -> None:
    with client(lambda r: problem(400, "wallet-frozen")) as c, pytest.raises(BadInput):
        c.run(o.get_identity("a"))


def test_5xx_is_unavailable_after_the_retry_ceiling() -> None:
    calls = []

    def handler(r: httpx.Request) -> httpx.Response:
        calls.append(r)
        return problem(500, "internal-error")

    with client(handler) as c, pytest.raises(Unavailable):
        c.run(o.get_balance("a"))
    assert len(calls) == 3


def test_money_is_decimal_from_string_or_number_never_float() -> None:
    bodies = iter(['{"balance": "500.00"}', '{"balance": 518.88}', '{"balance": 0.1}'])
    with client(lambda r: answer(next(bodies))) as c:
        got = [c.run(o.get_balance("a")).balance for _ in range(3)]
    assert got == [Decimal("500.00"), Decimal("518.88"), Decimal("0.1")]
    assert all(type(v) is Decimal for v in got)


def test_money_that_is_not_a_number_is_an_invalid_response() -> None:
    with client(lambda r: answer('{"balance": "lots"}')) as c, pytest.raises(InvalidResponse):
        c.run(o.get_balance("a"))


def test_timestamps_iso_or_epoch() -> None:
    body = (
        '{"data": [{"value": 610.0, "timestamp": 1796152895.27},'
        ' {"value": 1, "timestamp": "2026-12-01T19:21:35Z"}]}'
    )
    with client(lambda r: answer(body)) as c:
        points = c.run(o.query_metrics("a", "p99_latency_ms")).data
    assert points[0].timestamp.timestamp() == pytest.approx(1796152895.27)
    assert points[1].timestamp.isoformat() == "2026-12-01T19:21:35+00:00"
    assert points[0].value == Decimal("610.0")


def test_x_charged_is_reported_and_on_the_result() -> None:
    charges: list[Charge] = []
    body = '{"id": "i1", "status": "pending", "amount": "25.0", "gateway_fee": "0.50"}'
    with client(lambda r: answer(body, **{"X-Charged": "0.50"}), on_charge=charges.append) as c:
        res = c.send(o.create_intent("a", "treasury", "25.00", "sweep"))
    assert res.charged == Decimal("0.50")
    assert [(ch.operation, ch.agent_id, ch.amount) for ch in charges] == [
        ("create_intent", "a", Decimal("0.50"))
    ]
    assert charges[0].trace_id == res.trace.trace_id


def test_no_x_charged_no_charge() -> None:
    charges: list[Charge] = []
    with client(lambda r: answer('{"balance": "1"}'), on_charge=charges.append) as c:
        assert c.send(o.get_balance("a")).charged is None
    assert charges == []


def rate_limited_gateway(limit: int, sent: list[httpx.Request]) -> Handler:
    """Counts like the gateway: the event is recorded before the check."""

    def handler(r: httpx.Request) -> httpx.Response:
        sent.append(r)
        if len(sent) >= limit:
            return problem(429, "rate-limit-exceeded")
        return answer(
            '{"balance": "1.00"}',
            **{
                "X-RateLimit-Limit": str(limit),
                "X-RateLimit-Remaining": str(limit - len(sent)),
                "X-RateLimit-Reset": "100",
            },
        )

    return handler


def test_paces_before_the_window_is_full_without_sending() -> None:
    sent: list[httpx.Request] = []
    clock = Clock()
    with client(rate_limited_gateway(5, sent), admin=None, clock=clock) as c:
        for _ in range(4):
            c.run(o.get_balance("a"))
            clock.t += 1
        with pytest.raises(RateLimited) as caught:
            c.run(o.get_balance("a"))
        assert caught.value.paced
        assert len(sent) == 4  # the 5th would have been the 429
        assert caught.value.retry_after == pytest.approx(3600 - 4)  # the first call ages out
        clock.t += 3600 - 4
        assert c.windows.wait_s("a") == 0  # room again once the first call has aged out
    assert len(sent) == 4


def test_calls_made_elsewhere_count_through_remaining() -> None:
    sent: list[httpx.Request] = []
    headers = {"X-RateLimit-Limit": "10", "X-RateLimit-Remaining": "1", "X-RateLimit-Reset": "9"}
    with client(recorder(sent, lambda: answer('{"balance": "1"}', **headers)), admin=None) as c:
        c.run(o.get_balance("a"))
        with pytest.raises(RateLimited):
            c.run(o.get_balance("a"))
    assert len(sent) == 1


def test_rejected_calls_count_and_a_429_fills_the_window() -> None:
    sent: list[httpx.Request] = []
    # The window's limit is known (100) but the gateway is already full: its 429 has no headers.
    responses = iter(
        [
            answer(
                '{"balance": "1"}',
                **{
                    "X-RateLimit-Limit": "100",
                    "X-RateLimit-Remaining": "98",
                    "X-RateLimit-Reset": "1",
                },
            ),
            problem(429, "rate-limit-exceeded"),
        ]
    )
    with client(recorder(sent, lambda: next(responses)), admin=None) as c:
        c.run(o.get_balance("a"))
        with pytest.raises(RateLimited) as caught:
            c.run(o.get_balance("a"))
        assert not caught.value.paced
        assert c.windows.count("a") == 100  # the rejected call counts, and fills the log
        with pytest.raises(RateLimited) as paced:
            c.run(o.get_balance("a"))
        assert paced.value.paced
    assert len(sent) == 2  # a 429 is not retried within the hour, and then not sent at all


def test_admin_calls_are_not_limited() -> None:
    sent: list[httpx.Request] = []
    with client(rate_limited_gateway(1000, sent)) as c:
        for _ in range(3):
            c.run(o.get_balance("a"))
        assert c.windows.count("a") == 0
    assert all(r.headers["authorization"] == f"Bearer {ADMIN}" for r in sent)


def test_money_ops_send_one_idempotency_key_across_retries() -> None:
    sent: list[httpx.Request] = []

    def handler(r: httpx.Request) -> httpx.Response:
        sent.append(r)
        if len(sent) < 3:
            return problem(502, "bad-gateway")
        return answer('{"new_balance": "600.00", "transaction_id": 9}')

    with client(handler) as c:
        assert c.run(o.deposit("a", "100.00", "top-up")).new_balance == Decimal("600.00")
        c.run(o.deposit("a", "1", "again"))
    keys = [r.headers.get("idempotency-key") for r in sent]
    assert keys[0] and keys[0] == keys[1] == keys[2]
    assert keys[3] and keys[3] != keys[0]  # a new logical call, a new key
    assert json.loads(sent[0].content) == {"amount": "100.00", "description": "top-up"}


def test_a_caller_supplied_idempotency_key_is_used() -> None:
    sent: list[httpx.Request] = []
    with client(recorder(sent, lambda: answer('{"new_balance": "1", "transaction_id": 1}'))) as c:
        c.run(o.withdraw("a", "1.00", "x"), idempotency_key="job-7:a:withdraw")
    assert sent[0].headers["idempotency-key"] == "job-7:a:withdraw"


def test_reads_carry_no_idempotency_key() -> None:
    sent: list[httpx.Request] = []
    with client(recorder(sent, lambda: answer('{"balance": "1"}'))) as c:
        c.run(o.get_balance("a"))
    assert "idempotency-key" not in sent[0].headers
    assert sent[0].method == "GET" and sent[0].url.path == "/v1/billing/wallets/a/balance"


def dropping_then(body: str, sent: list[httpx.Request]) -> Handler:
    def handler(r: httpx.Request) -> httpx.Response:
        sent.append(r)
        if len(sent) == 1:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        return answer(body)

    return handler


def test_idempotent_request_is_resent_once_after_a_dropped_connection() -> None:
    sent: list[httpx.Request] = []
    with client(dropping_then('{"balance": "1"}', sent)) as c:
        res = c.send(o.get_balance("a"))
    assert res.value.balance == Decimal("1") and len(sent) == 2 and res.attempts == 2


def test_non_idempotent_request_without_key_is_never_resent() -> None:
    sent: list[httpx.Request] = []
    body = '{"id": "m", "sender": "a", "recipient": "b", "message_type": "text"}'
    with client(dropping_then(body, sent)) as c, pytest.raises(Unavailable) as caught:
        c.run(o.send_message("a", "b", "text", "s", "b"))
    assert caught.value.maybe_processed
    assert len(sent) == 1


def test_dropped_twice_is_a_transport_failure_retried_by_the_ceiling_only_when_safe() -> None:
    sent: list[httpx.Request] = []

    def handler(r: httpx.Request) -> httpx.Response:
        sent.append(r)
        raise httpx.RemoteProtocolError("gone")

    with client(handler) as c, pytest.raises(Unavailable):
        c.run(o.get_balance("a"))
    assert len(sent) == 4  # one resend after the first drop, then the ceiling's two retries


@pytest.mark.parametrize(
    ("op", "admin", "expected"),
    [
        (o.get_balance("a"), ADMIN, ADMIN),  # operator: admin when configured
        (o.get_balance("a"), None, KEY_A),  # ... else the agent's own
        (o.build_claim_chain("a"), ADMIN, KEY_A),  # own, even with an admin key
        (o.get_identity("a"), None, KEY_A),  # any: the subject's key without admin
        (o.freeze_wallet("a"), ADMIN, ADMIN),
        (o.register("a"), ADMIN, None),  # no key at all
    ],
)
def test_key_selection_per_auth(
    op: o.Operation[Any], admin: str | None, expected: str | None
) -> None:
    sent: list[httpx.Request] = []
    with client(recorder(sent, lambda: httpx.Response(599)), admin=admin) as c:
        with pytest.raises(GatewayError):
            c.run(op)
    auth = sent[0].headers.get("authorization")
    assert auth == (f"Bearer {expected}" if expected else None)


@pytest.mark.parametrize(
    ("op", "admin", "agents"),
    [
        (o.freeze_wallet("a"), None, {"a": KEY_A}),
        (o.build_claim_chain("b"), ADMIN, {"a": KEY_A}),
        (o.get_balance("b"), None, {"a": KEY_A}),
        (o.get_identity("a"), None, {}),
    ],
)
def test_missing_key_makes_no_request(
    op: o.Operation[Any], admin: str | None, agents: dict[str, str]
) -> None:
    sent: list[httpx.Request] = []
    with client(recorder(sent, lambda: answer("{}")), admin=admin, agents=agents) as c:
        with pytest.raises(MissingKey):
            c.run(op)
    assert sent == []


def test_auth_override() -> None:
    sent: list[httpx.Request] = []
    with client(recorder(sent, lambda: answer('{"balance": "1"}'))) as c:
        c.run(o.get_balance("a", auth=Auth.own("a")))
    assert sent[0].headers["authorization"] == f"Bearer {KEY_A}"


def test_rotate_sends_the_confirmation_header_and_is_not_resent() -> None:
    sent: list[httpx.Request] = []

    def handler(r: httpx.Request) -> httpx.Response:
        sent.append(r)
        raise httpx.RemoteProtocolError("gone")

    with client(handler) as c, pytest.raises(Unavailable):
        c.run(o.rotate_key(KEY_A))
    assert len(sent) == 1
    assert sent[0].headers["x-rotate-confirmation"] == "confirm"
    assert sent[0].url.path == "/v1/infra/keys/rotate"


def test_rotated_key_stays_secret_and_keys_are_redacted_from_messages() -> None:
    body = (
        '{"new_key": "a2a_free_1111111111111111", "tier": "free", "agent_id": "a",'
        ' "grace_period_seconds": 300, "grace_expires_at": 1796153266}'
    )
    with client(lambda r: answer(body)) as c:
        res = c.run(o.rotate_key(KEY_A))
    assert "a2a_free_1111" not in repr(res)
    assert res.new_key.get_secret_value() == "a2a_free_1111111111111111"
    with client(lambda r: problem(401, "authentication-error", f"bad key {KEY_A}")) as c:
        with pytest.raises(AuthError) as caught:
            c.run(o.get_balance("a"))
    assert KEY_A not in str(caught.value)


def test_money_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="2 decimal"):
        o.deposit("a", "1.555", "x")
    with pytest.raises(TypeError):
        o.deposit("a", 1.5, "x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="negative"):
        o.withdraw("a", "-1", "x")
