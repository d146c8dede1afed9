"""Signed heartbeats: what is signed, what verifies, why each refusal; the agent's publisher."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import httpx
import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.gateway import GatewayClient, GatewayConfig, StaticKeyRing
from fleet.gateway.errors import AuthError
from fleet.monitoring import heartbeats
from fleet.monitoring.heartbeats import (
    DOMAIN,
    EVENT_TYPE,
    Heartbeat,
    HeartbeatMetrics,
    HeartbeatRejected,
    Rejection,
    canonical_json,
    heartbeat_event,
    load_private_key,
    load_public_key,
    private_key_hex,
    public_key_hex,
    sign_heartbeat,
    signed_bytes,
    verify_heartbeat,
)
from fleet.monitoring.publisher import HeartbeatPublisher, parse_metrics

AGENT = "cs-triage-0001-1a2b3c4d"


def _heartbeat(**changes: Any) -> Heartbeat:
    fields: dict[str, Any] = {
        "agent_id": AGENT,
        "seq": 17,
        "sent_at": 1796152895.25,
        "interval_s": 60,
        "metrics": HeartbeatMetrics(latency_p99_ms=820, error_rate=0.5, tool_calls=12),
    }
    return Heartbeat(**{**fields, **changes})


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def test_a_signed_heartbeat_verifies_with_its_agents_key(key: Ed25519PrivateKey) -> None:
    event = heartbeat_event(_heartbeat(), key)
    assert event["event_type"] == EVENT_TYPE and event["source"] == AGENT
    hb = verify_heartbeat(AGENT, event["payload"], key.public_key())
    assert hb == _heartbeat()


def test_the_signature_covers_the_domain_and_canonical_json(key: Ed25519PrivateKey) -> None:
    # Any implementation can produce one: sorted keys, no spaces, numbers as
    # ECMAScript writes them (60.0 is "60"); for these values that is Python's
    # sorted compact JSON with integral floats written as integers.
    payload = sign_heartbeat(_heartbeat(), key)

    def es_numbers(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: es_numbers(v) for k, v in value.items()}
        return int(value) if isinstance(value, float) and value.is_integer() else value

    body = es_numbers({k: v for k, v in payload.items() if k != "sig"})
    independent = DOMAIN + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    assert b'"interval_s":60,' in independent
    assert signed_bytes(payload) == independent
    key.public_key().verify(bytes.fromhex(payload["sig"]), independent)


def test_absent_metrics_are_not_sent(key: Ed25519PrivateKey) -> None:
    payload = sign_heartbeat(_heartbeat(metrics=HeartbeatMetrics(error_rate=0.0)), key)
    assert payload["metrics"] == {"error_rate": 0.0}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda p: p["metrics"].update(error_rate=0.001), Rejection.BAD_SIGNATURE),
        (lambda p: p.update(seq=18), Rejection.BAD_SIGNATURE),
        (lambda p: p.update(sig="00" * 64), Rejection.BAD_SIGNATURE),
        (lambda p: p.update(sig="not hex"), Rejection.BAD_SIGNATURE),
        (lambda p: p.pop("sig"), Rejection.UNSIGNED),
        (lambda p: p.update(sig=""), Rejection.UNSIGNED),
        (lambda p: p.update(seq=-1), Rejection.MALFORMED),
        (lambda p: p["metrics"].update(error_rate=1.5), Rejection.MALFORMED),
        (lambda p: p.update(extra="field"), Rejection.MALFORMED),
        (lambda p: p.update(v=2), Rejection.MALFORMED),
    ],
)
def test_a_changed_payload_is_refused_naming_why(
    key: Ed25519PrivateKey, change: Any, reason: Rejection
) -> None:
    payload = sign_heartbeat(_heartbeat(), key)
    change(payload)
    with pytest.raises(HeartbeatRejected) as info:
        verify_heartbeat(AGENT, payload, key.public_key())
    assert info.value.reason is reason


def test_another_agents_key_or_source_is_refused(key: Ed25519PrivateKey) -> None:
    payload = sign_heartbeat(_heartbeat(), key)
    forger = Ed25519PrivateKey.generate()
    with pytest.raises(HeartbeatRejected) as wrong_key:
        verify_heartbeat(AGENT, sign_heartbeat(_heartbeat(), forger), key.public_key())
    assert wrong_key.value.reason is Rejection.BAD_SIGNATURE
    with pytest.raises(HeartbeatRejected) as wrong_source:
        verify_heartbeat("someone-else", payload, key.public_key())
    assert wrong_source.value.reason is Rejection.SOURCE_MISMATCH
    with pytest.raises(HeartbeatRejected) as no_key:
        verify_heartbeat(AGENT, payload, None)
    assert no_key.value.reason is Rejection.UNKNOWN_AGENT
    with pytest.raises(HeartbeatRejected) as not_object:
        verify_heartbeat(AGENT, ["a", "list"], key.public_key())
    assert not_object.value.reason is Rejection.MALFORMED


def test_keys_round_trip_as_the_gateways_hex(key: Ed25519PrivateKey) -> None:
    assert len(private_key_hex(key)) == 64 and len(public_key_hex(key)) == 64
    again = load_private_key(private_key_hex(key))
    assert public_key_hex(again) == public_key_hex(key)
    assert public_key_hex(load_public_key("ed25519:" + public_key_hex(key))) == public_key_hex(key)
    with pytest.raises(ValueError, match="not an Ed25519 private key"):
        load_private_key("abc")
    with pytest.raises(ValueError, match="not an Ed25519 public key"):
        load_public_key("zz" * 32)


# --- the publisher ---------------------------------------------------------------------


class _Bus:
    """A gateway answering POST /v1/infra/events, keeping what it was sent."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.status != 200:
            problem = {"type": "https://api.greenhelix.net/errors/authentication-error"}
            return httpx.Response(self.status, json={**problem, "status": self.status})
        return httpx.Response(200, json={"event_id": len(self.requests)})

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests]


def _publisher(
    bus: _Bus, key: Ed25519PrivateKey, clock: Any = lambda: 1796152895.0
) -> HeartbeatPublisher:
    client = GatewayClient(
        GatewayConfig(url="http://gw.test", max_attempts=1),
        StaticKeyRing(admin="admin-key", agents={AGENT: "agent-key"}),
        transport=httpx.MockTransport(bus),
    )
    return HeartbeatPublisher(client, AGENT, key, interval_s=60, clock=clock)


def test_the_publisher_sends_a_verifiable_heartbeat_with_the_agents_own_key(
    key: Ed25519PrivateKey,
) -> None:
    bus = _Bus()
    published = _publisher(bus, key).publish(HeartbeatMetrics(latency_p99_ms=820))
    (request,) = bus.requests
    assert request.url.path == "/v1/infra/events"
    assert request.headers["Authorization"] == "Bearer agent-key"  # never the admin's
    (body,) = bus.bodies()
    assert body["event_type"] == EVENT_TYPE and body["source"] == AGENT
    hb = verify_heartbeat(AGENT, body["payload"], key.public_key())
    assert hb == published.heartbeat and published.event_id == 1
    assert hb.metrics.latency_p99_ms == 820 and hb.interval_s == 60


def test_seq_rises_even_when_the_clock_stands_still_or_goes_back(
    key: Ed25519PrivateKey,
) -> None:
    times = iter([100.0, 100.0, 99.0, 200.0])
    publisher = _publisher(_Bus(), key, clock=lambda: next(times))
    seqs = [publisher.next_heartbeat(HeartbeatMetrics()).seq for _ in range(4)]
    assert seqs == [100_000, 100_001, 100_002, 200_000]
    # A restarted agent starts from its clock: above what it sent before.
    restarted = _publisher(_Bus(), key, clock=lambda: 201.0)
    assert restarted.next_heartbeat(HeartbeatMetrics()).seq > seqs[-1]


def test_run_keeps_going_past_a_failed_beat_and_stops_on_a_refused_key(
    key: Ed25519PrivateKey,
) -> None:
    readings = iter([HeartbeatMetrics(), ValueError("bad reading"), HeartbeatMetrics()])

    def metrics() -> HeartbeatMetrics:
        value = next(readings)
        if isinstance(value, Exception):
            raise value
        return value

    bus = _Bus()
    publisher = _publisher(bus, key)
    publisher.interval_s = 0.001
    summary = publisher.run(metrics, beats=3)
    assert (summary.sent, summary.failed) == (2, 1)
    assert len(bus.requests) == 2
    with pytest.raises(AuthError):
        _publisher(_Bus(status=401), key).run(HeartbeatMetrics, beats=3)


def test_metrics_from_outside_are_validated_naming_the_field() -> None:
    assert parse_metrics({"error_rate": 0.25}).error_rate == 0.25
    with pytest.raises(ValueError, match="error_rate"):
        parse_metrics({"error_rate": 2})
    with pytest.raises(ValueError, match="latency_p99"):
        parse_metrics({"latency_p99": 3})


# --- the canonical encoder -------------------------------------------------------------

_safe_ints = st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
# Plus the band where orjson and ECMAScript write the same float differently (1e-6: "1e-6"
# against "0.000001").
_floats = st.floats(allow_nan=False, allow_infinity=False) | st.floats(1e-7, 1e-4)
_scalars = st.none() | st.booleans() | _safe_ints | _floats | st.text()
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(_json)
def test_canonical_json_is_rfc8785_for_any_json(value: Any) -> None:
    assert canonical_json(value) == rfc8785.dumps(value)


@settings(max_examples=150, deadline=None)
@given(
    st.fixed_dictionaries(
        {
            "seq": st.integers(min_value=0, max_value=2**53 - 1),
            "sent_at": st.floats(min_value=1e-9, max_value=1e12),
            "interval_s": st.floats(min_value=1e-3, max_value=86400),
            "metrics": st.dictionaries(
                st.sampled_from(sorted(HeartbeatMetrics.model_fields)), _floats | _safe_ints
            ),
        }
    )
)
def test_numbers_read_as_decimal_encode_as_the_floats_they_are(payload: dict[str, Any]) -> None:
    # The gateway client parses JSON numbers as Decimal: the signed bytes must not change.
    as_decimal = json.loads(json.dumps(payload), parse_float=Decimal)
    assert canonical_json(as_decimal) == rfc8785.dumps(payload)


def test_a_heartbeat_takes_the_fast_path(key: Ed25519PrivateKey) -> None:
    payload = sign_heartbeat(_heartbeat(), key)
    assert heartbeats._plain(payload) is not None  # orjson, not the rfc8785 fallback


def test_numbers_python_and_ecmascript_print_differently_go_to_rfc8785() -> None:
    for number in (1e-5, 1e-6, 3.5e-6, 1e-7, 1e16, 1.5e20, 1e21, 2.0**53, -0.0, 5e-324):
        assert canonical_json({"x": number}) == rfc8785.dumps({"x": number}), number
