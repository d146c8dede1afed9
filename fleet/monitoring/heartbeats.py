"""Agents' signed heartbeats: the measurements an agent reports about itself.

An agent publishes one event on the gateway's bus at its cadence::

    POST /v1/infra/events
    {"event_type": "fleet.agent.heartbeat", "source": "<agent_id>",
     "payload": {"v": 1, "agent_id": "<agent_id>", "seq": 17, "sent_at": 1796152895.27,
                 "interval_s": 60, "metrics": {"latency_p99_ms": 820, "error_rate": 0.012, …},
                 "sig": "<Ed25519 signature, 128 hex>"}}

The bus authenticates nothing: any key may publish any ``source``. So the payload
is signed with the agent's Ed25519 identity key over ``DOMAIN`` followed by the
RFC 8785 canonical JSON of the payload without ``sig``; the verifier holds the
public key the agent was provisioned with, never one the event brings. ``seq``
rises with every heartbeat of an agent, so a replayed event is told from a new one.
Any implementation with Ed25519 and RFC 8785 can produce a heartbeat we accept.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

import orjson
import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

EVENT_TYPE = "fleet.agent.heartbeat"
# Signed before the canonical payload: a signature made for anything else the
# identity key signs can never pass as a heartbeat.
DOMAIN = b"fleet.agent.heartbeat/v1\n"
FORMAT_VERSION = 1

NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Ratio = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0)]


class HeartbeatMetrics(BaseModel):
    """What an agent measures of itself over the interval that ends at ``sent_at``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    latency_p50_ms: NonNegative | None = None
    latency_p99_ms: NonNegative | None = None
    error_rate: Ratio | None = None
    tool_calls: Count | None = None
    task_completion_rate: Ratio | None = None
    retries: Count | None = None
    escalations: Count | None = None


class Heartbeat(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1
    agent_id: Annotated[str, Field(min_length=1, max_length=128)]
    seq: Count
    sent_at: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    interval_s: Annotated[float, Field(gt=0, le=86400, allow_inf_nan=False)]
    metrics: HeartbeatMetrics = HeartbeatMetrics()


class Rejection(StrEnum):
    """Why a heartbeat was not believed: counted per reason, never acted on."""

    MALFORMED = "malformed"
    UNSIGNED = "unsigned"
    SOURCE_MISMATCH = "source_mismatch"  # the event's source is not the payload's agent
    UNKNOWN_AGENT = "unknown_agent"  # no identity key on record for that agent
    BAD_SIGNATURE = "bad_signature"
    REPLAYED = "replayed"  # seq not above the last one believed


class HeartbeatRejected(ValueError):
    def __init__(self, reason: Rejection, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


def signed_bytes(payload: Mapping[str, Any]) -> bytes:
    """What the signature covers: ``DOMAIN`` + RFC 8785 of the payload without ``sig``."""
    body = {k: v for k, v in payload.items() if k != "sig"}
    return DOMAIN + canonical_json(body)


# Non-integral floats orjson writes as ECMAScript does, conservatively: orjson writes
# 1e-6 as "1e-6" where ES writes "0.000001". Integral floats go out as integers,
# exact only below 2**53 (ES writes 1e16 as "10000000000000000", orjson "1e+16").
_PLAIN_LOW, _PLAIN_HIGH = 1e-4, 1e16
_SAFE_INT = 2**53


def canonical_json(value: Any) -> bytes:
    """RFC 8785 canonical JSON of ``value``, fast for what a heartbeat holds.

    JSON from a parser that reads numbers as ``Decimal`` (the gateway client does)
    is taken as the floats those numbers are. The common case (ASCII keys,
    printable strings, integers and floats that orjson and ECMAScript write alike)
    goes through orjson with integral floats as integers, about 3x faster than
    ``rfc8785`` (35 against 115 µs a heartbeat, shared box); anything else goes to
    ``rfc8785``, so the bytes are always RFC 8785's (a property test checks both).
    """
    plain = _plain(value)
    if plain is None:
        return rfc8785.dumps(_floats(value))
    return orjson.dumps(plain, option=orjson.OPT_SORT_KEYS)


def _plain(value: Any) -> Any:
    """``value`` with integral floats as ints, or None if orjson could differ from RFC 8785."""
    kind = type(value)
    # Exact types first, in the order a heartbeat holds them: this runs per value.
    if kind is dict:
        out = {}
        for key, item in value.items():
            if type(key) is not str or not (key.isascii() and key.isprintable()):
                return None  # RFC 8785 sorts by UTF-16 code units
            plain = _plain(item)
            if plain is None and item is not None:
                return None
            out[key] = plain
        return out
    if kind is float or kind is Decimal:
        number = float(value)
        if number.is_integer():
            return int(number) if -_SAFE_INT < number < _SAFE_INT else None
        if not math.isfinite(number):
            return None
        return number if _PLAIN_LOW <= abs(number) < _PLAIN_HIGH else None
    if kind is int:
        return value if -_SAFE_INT < value < _SAFE_INT else None
    if kind is str:
        return value if value.isprintable() else None
    if kind is bool or value is None:
        return value
    if isinstance(value, Mapping):
        return _plain(dict(value))
    if isinstance(value, list | tuple):
        items = []
        for item in value:
            plain = _plain(item)
            if plain is None and item is not None:
                return None
            items.append(plain)
        return items
    return None  # subclasses of int, float, str (enums…): rfc8785 decides


def _floats(value: Any) -> Any:
    """Decimals as the floats they stand for, for ``rfc8785`` (it takes no Decimal)."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, Mapping):
        return {k: _floats(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_floats(v) for v in value]
    return value


def sign_heartbeat(heartbeat: Heartbeat, key: Ed25519PrivateKey) -> dict[str, Any]:
    """The event payload for ``heartbeat``, signed with the agent's identity key."""
    payload: dict[str, Any] = heartbeat.model_dump(mode="json", exclude_none=True)
    payload["sig"] = key.sign(signed_bytes(payload)).hex()
    return payload


def heartbeat_event(heartbeat: Heartbeat, key: Ed25519PrivateKey) -> dict[str, Any]:
    """The body of ``POST /v1/infra/events`` that publishes ``heartbeat``."""
    return {
        "event_type": EVENT_TYPE,
        "source": heartbeat.agent_id,
        "payload": sign_heartbeat(heartbeat, key),
    }


def verify_heartbeat(
    source: str, payload: object, public_key: Ed25519PublicKey | None
) -> Heartbeat:
    """The heartbeat in a bus event's ``payload``, if its agent signed it.

    ``public_key`` is the key on record for ``source`` (None: no key on record).
    Raises :class:`HeartbeatRejected` naming why it is not believed. Replays are
    the caller's check: it knows the last ``seq`` it believed.
    """
    if not isinstance(payload, Mapping):
        raise HeartbeatRejected(Rejection.MALFORMED, "the payload is not an object")
    sig = payload.get("sig")
    if not isinstance(sig, str) or not sig:
        raise HeartbeatRejected(Rejection.UNSIGNED, "the payload carries no 'sig'")
    try:
        heartbeat = Heartbeat.model_validate({k: v for k, v in payload.items() if k != "sig"})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'payload'}: {e['msg']}" for e in exc.errors()
        )
        raise HeartbeatRejected(Rejection.MALFORMED, problems) from None
    if heartbeat.agent_id != source:
        raise HeartbeatRejected(
            Rejection.SOURCE_MISMATCH,
            f"published as {source!r} for agent {heartbeat.agent_id!r}",
        )
    if public_key is None:
        raise HeartbeatRejected(Rejection.UNKNOWN_AGENT, f"no identity key on record for {source}")
    try:
        public_key.verify(bytes.fromhex(sig), signed_bytes(payload))
    except (InvalidSignature, ValueError):
        raise HeartbeatRejected(
            Rejection.BAD_SIGNATURE, f"the signature does not verify with {source}'s key"
        ) from None
    return heartbeat


def new_identity_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_hex(key: Ed25519PrivateKey) -> str:
    """The raw 32-byte private key as 64 hex characters, as the gateway's identity API uses."""
    raw = key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    return raw.hex()


def public_key_hex(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def load_private_key(hex_key: str) -> Ed25519PrivateKey:
    try:
        return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(hex_key.strip()))
    except ValueError as exc:
        raise ValueError(f"not an Ed25519 private key (64 hex characters): {exc}") from None


def load_public_key(hex_key: str) -> Ed25519PublicKey:
    """A public key as the gateway's identity API stores it: 64 hex characters,
    optionally prefixed ``ed25519:``."""
    text = hex_key.strip().removeprefix("ed25519:")
    try:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text))
    except ValueError as exc:
        raise ValueError(f"not an Ed25519 public key (64 hex characters): {exc}") from None
