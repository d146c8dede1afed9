"""The gateway client over httpx.MockTransport: errors, retries, breaker, tracing.

Every behaviour test runs against both forms (sync and async) through one
harness, so "the async client behaves the same" is checked, not assumed.
Waits are recorded instead of slept; the breaker reads a fake clock.
"""

from __future__ import annotations

import asyncio
import json
import pickle
import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from config.settings import load_settings
from fleet.gateway import (
    AsyncGatewayClient,
    AuthError,
    BadInput,
    BreakerState,
    CircuitOpen,
    Conflict,
    GatewayClient,
    GatewayConfig,
    GatewayError,
    GatewayResult,
    InvalidResponse,
    NotFound,
    RateLimited,
    TraceContext,
    Unavailable,
    parse_retry_after,
    tools,
)
from fleet.gateway.schemas import BalanceResult, RegisterAgentResult

URL = "http://gateway.test/v1"
ADMIN_KEY = "admin-secret-key-123"
AGENT_KEY = "agent-secret-key-456"

BALANCE = {"balance": "50.00", "burn_rate_per_hour": "1.25"}

Step = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def ok(body: dict[str, Any] | None = None) -> httpx.Response:
    return httpx.Response(200, json=BALANCE if body is None else body)


def fail(status: int, code: str = "err", message: str = "nope", **headers: str) -> httpx.Response:
    return httpx.Response(
        status, json={"error": {"code": code, "message": message}}, headers=headers
    )


class Harness:
    """One client (sync or async) over a scripted MockTransport.

    ``script`` holds the answers in order; the last one repeats. An exception
    in the script is raised by the transport, as a network failure would be.
    """

    def __init__(self, mode: str, **config: Any) -> None:
        self.mode = mode
        self.requests: list[httpx.Request] = []
        self.script: list[Step] = [ok()]
        self.sleeps: list[float] = []
        self.clock = FakeClock()
        settings: dict[str, Any] = {
            "url": URL,
            "admin_key": ADMIN_KEY,
            "max_attempts": 3,
            "backoff_initial_s": 0.0,
            "backoff_max_s": 0.0,
            "retry_after_max_s": 30.0,
            "breaker_failure_threshold": 5,
            "breaker_reset_s": 30.0,
        }
        settings.update(config)
        self.config = GatewayConfig(**settings)
        self.client: GatewayClient | AsyncGatewayClient
        if mode == "sync":
            self.client = GatewayClient(
                self.config,
                transport=httpx.MockTransport(self._handle),
                sleep=self.sleeps.append,
                clock=self.clock,
            )
        else:

            async def sleep(seconds: float) -> None:
                self.sleeps.append(seconds)

            self.client = AsyncGatewayClient(
                self.config,
                transport=httpx.MockTransport(self._handle),
                sleep=sleep,
                clock=self.clock,
            )

    def _handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.script[min(len(self.requests), len(self.script)) - 1]
        if isinstance(step, Exception):
            raise step
        response = step if isinstance(step, httpx.Response) else step(request)
        # A fresh copy each time: a client rebinds the stream of a response it has read.
        return httpx.Response(
            response.status_code, headers=response.headers, content=response.content
        )

    def answers(self, *steps: Step) -> Harness:
        self.script = list(steps)
        return self

    def _do(self, method: str, *args: Any, **kwargs: Any) -> Any:
        result = getattr(self.client, method)(*args, **kwargs)
        if self.mode == "async":
            return asyncio.run(result)
        return result

    def call(
        self, tool: str = "get_balance", input: dict[str, Any] | None = None, **kw: Any
    ) -> Any:
        return self._do("call", tool, {"agent_id": "a-1"} if input is None else input, **kw)

    def send(
        self, tool: str = "get_balance", input: dict[str, Any] | None = None, **kw: Any
    ) -> GatewayResult:
        result: GatewayResult = self._do(
            "send", tool, {"agent_id": "a-1"} if input is None else input, **kw
        )
        return result

    def run(self, call: tools.ToolCall[Any], **kw: Any) -> Any:
        return self._do("run", call, **kw)

    def error(
        self, tool: str = "get_balance", input: dict[str, Any] | None = None, **kw: Any
    ) -> GatewayError:
        with pytest.raises(GatewayError) as info:
            self.call(tool, input, **kw)
        return info.value

    def close(self) -> None:
        if isinstance(self.client, AsyncGatewayClient):
            asyncio.run(self.client.aclose())
        else:
            self.client.close()

    def state(self, tool: str) -> BreakerState:
        return self.client.breakers[tool].state

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests]


@pytest.fixture(params=["sync", "async"])
def make(request: pytest.FixtureRequest) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def factory(**config: Any) -> Harness:
        harness = Harness(request.param, **config)
        made.append(harness)
        return harness

    yield factory
    for harness in made:
        harness.close()


@pytest.fixture
def gw(make: Callable[..., Harness]) -> Harness:
    return make()


# -- the envelope --------------------------------------------------------------


def test_envelope_posts_tool_and_input_with_admin_key(gw: Harness) -> None:
    assert gw.call("get_balance", {"agent_id": "a-1"}) == BALANCE
    (request,) = gw.requests
    assert request.method == "POST"
    assert str(request.url) == URL
    assert request.headers["authorization"] == f"Bearer {ADMIN_KEY}"
    assert request.headers["content-type"] == "application/json"
    assert gw.bodies() == [{"tool": "get_balance", "input": {"agent_id": "a-1"}}]


def test_agent_key_overrides_admin_key(gw: Harness) -> None:
    gw.call(api_key=AGENT_KEY)
    assert gw.requests[0].headers["authorization"] == f"Bearer {AGENT_KEY}"


def test_typed_call_returns_model_with_decimal_money(gw: Harness) -> None:
    result = gw.run(tools.get_balance("a-1"))
    assert isinstance(result, BalanceResult)
    assert result.balance == Decimal("50.00")
    assert gw.bodies() == [{"tool": "get_balance", "input": {"agent_id": "a-1"}}]


def test_money_arguments_go_on_the_wire_as_strings(gw: Harness) -> None:
    gw.answers(ok({"wallet_id": "w-1", "balance": "12.50"}))
    wallet = gw.run(tools.create_wallet("a-1", Decimal("12.50")))
    assert wallet.balance == Decimal("12.50")
    gw.answers(ok({"transaction_id": "t-1"}))
    gw.call(
        "record_transaction",
        {"agent_id": "a-1", "cost": Decimal("0.001"), "nested": {"x": Decimal("1E+1")}},
    )
    assert gw.bodies()[0]["input"]["initial_balance"] == "12.50"
    assert gw.bodies()[1]["input"]["cost"] == "0.001"
    assert gw.bodies()[1]["input"]["nested"]["x"] == "10"


def test_unserialisable_input_fails_before_any_request(gw: Harness) -> None:
    error = gw.error("get_balance", {"agent_id": object()})
    assert isinstance(error, BadInput)
    assert gw.requests == []


def test_unknown_tool_answer_is_only_checked_to_be_an_object(gw: Harness) -> None:
    gw.answers(ok({"anything": 1}))
    assert gw.call("some_other_tool", {}) == {"anything": 1}


# -- errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, BadInput),
        (422, BadInput),
        (401, AuthError),
        (403, AuthError),
        (404, NotFound),
        (409, Conflict),
        (418, GatewayError),
    ],
)
def test_client_errors_map_to_types_and_are_not_retried(
    gw: Harness, status: int, error_type: type[GatewayError]
) -> None:
    gw.answers(fail(status, code="some_code", message="some message"))
    error = gw.error()
    assert type(error) is error_type
    assert (error.tool, error.status, error.code, error.message) == (
        "get_balance",
        status,
        "some_code",
        "some message",
    )
    assert len(gw.requests) == 1
    assert gw.sleeps == []
    assert gw.state("get_balance") is BreakerState.CLOSED


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_are_unavailable_and_retried_to_the_ceiling(gw: Harness, status: int) -> None:
    gw.answers(fail(status, code="down"))
    error = gw.error()
    assert type(error) is Unavailable
    assert (error.status, error.code) == (status, "down")
    assert len(gw.requests) == 3
    assert len(gw.sleeps) == 2


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (httpx.ConnectError("refused"), "connection_error"),
        (httpx.ReadTimeout("slow"), "timeout"),
        (httpx.ConnectTimeout("slow"), "timeout"),
        (
            httpx.RemoteProtocolError("Server disconnected without sending a response."),
            "connection_error",
        ),
        (httpx.ReadError("reset by peer"), "connection_error"),
    ],
)
def test_transport_failures_are_unavailable_and_retried(
    gw: Harness, exc: Exception, code: str
) -> None:
    gw.answers(exc)
    error = gw.error()
    assert type(error) is Unavailable
    assert error.status is None
    assert error.code == code
    assert isinstance(error.__cause__, type(exc))
    assert len(gw.requests) == 3


@pytest.mark.parametrize(
    ("step", "attempts", "maybe_processed"),
    [
        (httpx.ConnectError("refused"), 3, False),
        (httpx.ConnectTimeout("slow connect"), 3, False),
        (fail(503, code="outage"), 3, False),
        (httpx.ReadTimeout("slow answer"), 1, True),
        (httpx.RemoteProtocolError("Server disconnected without sending a response."), 1, True),
        (fail(500), 1, True),
        (fail(504), 1, True),
    ],
    ids=["connect-error", "connect-timeout", "503", "read-timeout", "dropped", "500", "504"],
)
def test_money_moves_are_not_repeated_after_failures_that_may_have_landed(
    gw: Harness, step: Step, attempts: int, maybe_processed: bool
) -> None:
    gw.answers(step)
    with pytest.raises(Unavailable) as info:
        gw.run(tools.record_transaction("a-1", "task-1", "search", Decimal("0.01")))
    assert info.value.maybe_processed is maybe_processed
    assert len(gw.requests) == attempts


def test_repeatable_tools_retry_failures_that_may_have_landed(gw: Harness) -> None:
    gw.answers(httpx.ReadTimeout("slow answer"), fail(500), ok({"wallet_id": "w", "frozen": True}))
    assert gw.run(tools.freeze_wallet("a-1", "retire")).frozen
    assert len(gw.requests) == 3


def test_circuit_open_never_reached_the_gateway(make: Callable[..., Harness]) -> None:
    gw = make(max_attempts=1, breaker_failure_threshold=1)
    gw.answers(fail(500))
    gw.error()
    error = gw.error()
    assert isinstance(error, CircuitOpen) and error.maybe_processed is False


def test_error_body_that_is_not_ours_still_maps(gw: Harness) -> None:
    gw.answers(httpx.Response(502, text="<html>Bad Gateway</html>"))
    error = gw.error()
    assert type(error) is Unavailable
    assert error.code == "http_502"
    assert "Bad Gateway" in error.message


def test_unexpected_success_status_is_invalid_response(gw: Harness) -> None:
    gw.answers(httpx.Response(204))
    error = gw.error()
    assert type(error) is InvalidResponse
    assert len(gw.requests) == 1


def test_errors_survive_pickling_with_their_fields() -> None:
    error = RateLimited("slow down", tool="get_balance", status=429, code="rate", retry_after=2.0)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is RateLimited
    assert (copy.tool, copy.status, copy.code, copy.message, copy.retry_after) == (
        "get_balance",
        429,
        "rate",
        "slow down",
        2.0,
    )
    assert str(copy) == str(error) == "get_balance: 429 rate: slow down"


# -- invalid answers -----------------------------------------------------------


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, text="not json"),
        httpx.Response(200, json=["a", "list"]),
        httpx.Response(200, json={"balance": "50.00"}),  # missing burn_rate_per_hour
        httpx.Response(200, json={"balance": 50.1, "burn_rate_per_hour": "1"}),  # float money
        httpx.Response(200, json={"balance": "lots", "burn_rate_per_hour": "1"}),
    ],
    ids=["not-json", "not-object", "missing-field", "float-money", "not-decimal"],
)
def test_invalid_answers_raise_invalid_response_without_retry(
    gw: Harness, response: httpx.Response
) -> None:
    gw.answers(response)
    with pytest.raises(InvalidResponse) as info:
        gw.run(tools.get_balance("a-1"))
    assert info.value.tool == "get_balance"
    assert len(gw.requests) == 1
    # The raw form checks the same schema.
    with pytest.raises(InvalidResponse):
        gw.call("get_balance")
    assert gw.state("get_balance") is BreakerState.CLOSED


def test_extra_answer_fields_are_kept(gw: Harness) -> None:
    gw.answers(ok({**BALANCE, "currency": "USD"}))
    result = gw.run(tools.get_balance("a-1"))
    assert result.model_extra == {"currency": "USD"}


# -- retries -------------------------------------------------------------------


@pytest.mark.parametrize("max_attempts", [1, 2, 5])
def test_retry_ceiling_is_exact(make: Callable[..., Harness], max_attempts: int) -> None:
    gw = make(max_attempts=max_attempts, breaker_failure_threshold=100)
    gw.answers(fail(503))
    with pytest.raises(Unavailable):
        gw.call()
    assert len(gw.requests) == max_attempts
    assert len(gw.sleeps) == max_attempts - 1


def test_success_after_transient_failures_reports_attempts(gw: Harness) -> None:
    gw.answers(fail(503), httpx.ConnectError("refused"), ok())
    result = gw.send()
    assert result.data == BALANCE
    assert result.attempts == 3
    assert len(gw.requests) == 3


def test_backoff_is_capped_exponential_with_jitter(make: Callable[..., Harness]) -> None:
    gw = make(
        max_attempts=6, backoff_initial_s=1.0, backoff_max_s=4.0, breaker_failure_threshold=100
    )
    gw.answers(fail(500))
    with pytest.raises(Unavailable):
        gw.call()
    assert len(gw.sleeps) == 5
    for retry, slept in enumerate(gw.sleeps, start=1):
        assert 0.0 <= slept <= min(4.0, 2.0 ** (retry - 1))


def test_retry_after_is_honoured(gw: Harness) -> None:
    gw.answers(fail(429, **{"Retry-After": "2"}), ok())
    assert gw.call() == BALANCE
    assert gw.sleeps == [2.0]
    assert len(gw.requests) == 2


def test_retry_after_beyond_the_cap_fails_fast(make: Callable[..., Harness]) -> None:
    gw = make(retry_after_max_s=10.0)
    gw.answers(fail(429, code="rate_limited", **{"Retry-After": "60"}))
    error = gw.error()
    assert type(error) is RateLimited
    assert error.retry_after == 60.0
    assert len(gw.requests) == 1
    assert gw.sleeps == []


def test_rate_limit_without_retry_after_backs_off_to_the_ceiling(gw: Harness) -> None:
    gw.answers(fail(429))
    error = gw.error()
    assert type(error) is RateLimited
    assert error.retry_after is None
    assert len(gw.requests) == 3


def test_rate_limits_do_not_trip_the_breaker(make: Callable[..., Harness]) -> None:
    gw = make(breaker_failure_threshold=2)
    gw.answers(fail(429, **{"Retry-After": "0"}))
    for _ in range(3):
        gw.error()
    assert gw.state("get_balance") is BreakerState.CLOSED
    assert len(gw.requests) == 9


def test_parse_retry_after_accepts_seconds_and_http_dates() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    now = 1_700_000_000.0  # 2023-11-14T22:13:20Z
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:50 GMT", now=now) == 30.0


# -- circuit breaker -------------------------------------------------------------


def test_breaker_opens_after_threshold_and_then_makes_no_request(
    make: Callable[..., Harness],
) -> None:
    gw = make(max_attempts=2, breaker_failure_threshold=3, breaker_reset_s=30.0)
    gw.answers(fail(503))

    gw.error()  # 2 failures
    error = gw.error()  # 1 more: threshold reached, no retry into an open breaker
    assert type(error) is Unavailable
    assert len(gw.requests) == 3
    assert gw.state("get_balance") is BreakerState.OPEN

    for _ in range(10):
        error = gw.error()
        assert type(error) is CircuitOpen
        assert isinstance(error, Unavailable)
        assert error.retry_after == pytest.approx(30.0)
    assert len(gw.requests) == 3  # not one more request while open


def test_breaker_half_opens_lets_one_trial_through_and_reopens_on_failure(
    make: Callable[..., Harness],
) -> None:
    gw = make(max_attempts=3, breaker_failure_threshold=2, breaker_reset_s=30.0)
    gw.answers(fail(503))
    gw.error()
    assert len(gw.requests) == 2
    gw.clock.advance(29.9)
    assert type(gw.error()) is CircuitOpen
    assert len(gw.requests) == 2

    gw.clock.advance(0.1)
    assert gw.state("get_balance") is BreakerState.HALF_OPEN
    assert type(gw.error()) is Unavailable  # the trial: one request, not retried
    assert len(gw.requests) == 3
    assert gw.state("get_balance") is BreakerState.OPEN
    assert type(gw.error()) is CircuitOpen
    assert len(gw.requests) == 3


def test_breaker_closes_after_a_successful_trial(make: Callable[..., Harness]) -> None:
    gw = make(max_attempts=1, breaker_failure_threshold=2, breaker_reset_s=30.0)
    gw.answers(fail(503))
    gw.error()
    gw.error()
    assert gw.state("get_balance") is BreakerState.OPEN
    gw.clock.advance(30.0)
    gw.answers(ok())
    assert gw.call() == BALANCE
    assert gw.state("get_balance") is BreakerState.CLOSED
    assert gw.call() == BALANCE
    assert len(gw.requests) == 4


def test_caller_errors_do_not_trip_the_breaker(make: Callable[..., Harness]) -> None:
    gw = make(breaker_failure_threshold=2)
    gw.answers(fail(404))
    for _ in range(5):
        assert type(gw.error()) is NotFound
    assert gw.state("get_balance") is BreakerState.CLOSED
    assert len(gw.requests) == 5


def test_an_answer_resets_the_consecutive_failure_count(make: Callable[..., Harness]) -> None:
    gw = make(max_attempts=1, breaker_failure_threshold=3)
    gw.answers(fail(503), fail(503), fail(404), fail(503), fail(503), ok())
    for _ in range(5):
        gw.error()
    assert gw.call() == BALANCE
    assert gw.state("get_balance") is BreakerState.CLOSED


def test_breakers_are_per_tool(make: Callable[..., Harness]) -> None:
    gw = make(max_attempts=1, breaker_failure_threshold=1)

    def by_tool(request: httpx.Request) -> httpx.Response:
        tool = json.loads(request.content)["tool"]
        return fail(503) if tool == "get_balance" else ok({"score": 0.9})

    gw.answers(by_tool)
    gw.error("get_balance")
    assert type(gw.error("get_balance")) is CircuitOpen
    assert gw.call("get_agent_reputation") == {"score": 0.9}
    assert gw.client.breakers.states() == {
        "get_balance": BreakerState.OPEN,
        "get_agent_reputation": BreakerState.CLOSED,
    }


# -- tracing ---------------------------------------------------------------------


def _traceparents(gw: Harness) -> list[TraceContext]:
    return [TraceContext.from_traceparent(r.headers["traceparent"]) for r in gw.requests]


def test_every_attempt_carries_traceparent_with_a_new_span(gw: Harness) -> None:
    gw.answers(fail(503), fail(503), ok())
    result = gw.send()
    for request in gw.requests:
        assert request.headers["traceparent"].startswith("00-")
        assert request.headers["traceparent"].endswith("-01")
    contexts = _traceparents(gw)
    assert len({c.trace_id for c in contexts}) == 1
    assert len({c.span_id for c in contexts}) == 3
    assert result.trace == contexts[-1]


def test_caller_trace_is_continued(gw: Harness) -> None:
    parent = TraceContext.new()
    result = gw.send(trace=parent)
    (sent,) = _traceparents(gw)
    assert sent.trace_id == parent.trace_id
    assert sent.span_id != parent.span_id
    assert result.trace == sent


def test_typed_result_and_errors_carry_the_trace(gw: Harness) -> None:
    parent = TraceContext.new()
    balance = gw.run(tools.get_balance("a-1"), trace=parent)
    assert balance.trace == _traceparents(gw)[-1]
    assert balance.trace is not None and balance.trace.trace_id == parent.trace_id

    gw.answers(fail(404))
    error = gw.error(trace=parent)
    assert error.trace == _traceparents(gw)[-1]


def test_calls_without_a_trace_start_their_own(gw: Harness) -> None:
    gw.call()
    gw.call()
    first, second = _traceparents(gw)
    assert first.trace_id != second.trace_id


# -- secrets ---------------------------------------------------------------------


def test_keys_never_appear_in_errors_or_reprs(gw: Harness) -> None:
    gw.answers(
        fail(401, code="bad_key", message=f"key {AGENT_KEY} revoked; header Bearer {AGENT_KEY}")
    )
    error = gw.error(api_key=AGENT_KEY)
    assert type(error) is AuthError
    for text in (str(error), repr(error), error.message):
        assert AGENT_KEY not in text
    assert "***" in error.message

    gw.answers(httpx.ConnectError(f"failed with {ADMIN_KEY}"))
    error = gw.error()
    assert ADMIN_KEY not in str(error)
    assert ADMIN_KEY not in repr(gw.client)
    assert ADMIN_KEY not in repr(gw.config)


def test_registered_agent_key_is_secret_in_the_model(gw: Harness) -> None:
    gw.answers(
        ok(
            {
                "agent_id": "a-1",
                "api_key": AGENT_KEY,
                "tier": "standard",
                "registered_at": "2025-01-01T00:00:00Z",
            }
        )
    )
    agent = gw.run(tools.register_agent("a-1", "standard", ["search"], {"fleet": "demo"}))
    assert isinstance(agent, RegisterAgentResult)
    assert AGENT_KEY not in repr(agent) and AGENT_KEY not in str(agent)
    assert agent.api_key is not None and agent.api_key.get_secret_value() == AGENT_KEY


# -- construction ------------------------------------------------------------------


def test_clients_build_from_settings() -> None:
    settings = load_settings(
        gateway={
            "base_url": "https://gw.example/v1",
            "max_attempts": 4,
            "breaker_failure_threshold": 7,
        }
    )
    with GatewayClient.from_settings(
        settings, transport=httpx.MockTransport(lambda r: ok())
    ) as client:
        assert client.config.url == "https://gw.example/v1"
        assert client.config.max_attempts == 4
        assert client.breakers.failure_threshold == 7
        assert client.config.admin_key != "sandbox-admin-key"  # kept secret

    async def build() -> None:
        async with AsyncGatewayClient.from_settings(settings) as client:
            assert client.config.url == "https://gw.example/v1"

    asyncio.run(build())


# -- async specifics -------------------------------------------------------------


def test_async_client_fans_out_on_one_loop() -> None:
    seen: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0)
        seen.append(json.loads(request.content)["input"]["agent_id"])
        return ok()

    async def main() -> list[BalanceResult]:
        config = GatewayConfig(url=URL, admin_key=ADMIN_KEY)
        async with AsyncGatewayClient(config, transport=httpx.MockTransport(handler)) as client:
            return await asyncio.gather(
                *(client.run(tools.get_balance(f"a-{i}")) for i in range(50))
            )

    results = asyncio.run(main())
    assert len(results) == 50 and all(r.balance == Decimal("50.00") for r in results)
    assert sorted(seen) == sorted(f"a-{i}" for i in range(50))


def test_cancelled_trial_call_frees_the_half_open_slot() -> None:
    clock = FakeClock()
    release = asyncio.Event

    async def main() -> None:
        gate = release()
        calls = 0

        async def handler(request: httpx.Request) -> httpx.Response:
            nonlocal calls
            calls += 1
            if calls == 1:
                return fail(503)
            if calls == 2:
                await gate.wait()  # the trial hangs until cancelled
            return ok()

        config = GatewayConfig(
            url=URL, admin_key=ADMIN_KEY, max_attempts=1, breaker_failure_threshold=1
        )
        async with AsyncGatewayClient(
            config, transport=httpx.MockTransport(handler), clock=clock
        ) as client:
            with pytest.raises(Unavailable):
                await client.call("get_balance", {"agent_id": "a"})
            clock.advance(config.breaker_reset_s)
            trial = asyncio.create_task(client.call("get_balance", {"agent_id": "a"}))
            await asyncio.sleep(0.01)
            with pytest.raises(CircuitOpen):  # the trial slot is taken
                await client.call("get_balance", {"agent_id": "a"})
            trial.cancel()
            with pytest.raises(asyncio.CancelledError):
                await trial
            assert await client.call("get_balance", {"agent_id": "a"}) == BALANCE
            assert client.breakers["get_balance"].state is BreakerState.CLOSED

    asyncio.run(main())


# -- threads -----------------------------------------------------------------------


def test_sync_client_shared_by_threads_still_bounds_an_outage() -> None:
    threads, calls_each, threshold = 8, 25, 5
    requests = 0
    lock = threading.Lock()

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal requests
        with lock:
            requests += 1
        return fail(503)

    config = GatewayConfig(
        url=URL,
        admin_key=ADMIN_KEY,
        max_attempts=3,
        backoff_initial_s=0.0,
        backoff_max_s=0.0,
        breaker_failure_threshold=threshold,
    )
    with GatewayClient(
        config, transport=httpx.MockTransport(handler), sleep=lambda s: None
    ) as client:
        start = threading.Barrier(threads)

        def worker() -> None:
            start.wait()
            for _ in range(calls_each):
                with pytest.raises(Unavailable):
                    client.call("get_balance", {"agent_id": "a-1"})

        pool = [threading.Thread(target=worker) for _ in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        assert client.breakers.states()["get_balance"] is BreakerState.OPEN
    # At most the threshold, plus the requests already in flight when it opened.
    assert threshold <= requests <= threshold + threads - 1
