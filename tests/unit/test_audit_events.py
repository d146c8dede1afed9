"""The producer side: what an audit event accepts, refuses and redacts, and where it goes."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
import rfc8785
from pydantic import ValidationError

from fleet import audit
from fleet.audit.canonical import GENESIS, canonical, entry_hash, envelope, event_object
from fleet.audit.events import is_secret_key
from fleet.clock import ManualClock


def _event(**overrides: object) -> audit.AuditEvent:
    fields: dict[str, object] = {
        "actor": "fleet-commander/test",
        "action": "restart_agent",
        "subject": "seg0-0001-1a2b3c4d",
    }
    fields.update(overrides)
    return audit.build_event(**fields)  # type: ignore[arg-type]


def test_floats_are_refused_with_the_path_named() -> None:
    with pytest.raises(
        ValidationError, match=r"details\.metrics\.error_rate: floats are not allowed"
    ):
        _event(details={"metrics": {"error_rate": 0.12}})


def test_money_and_times_become_strings() -> None:
    when = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    event = _event(
        details={
            "amount": Decimal("12.50"),
            "at": when,
            "n": 3,
            "ok": True,
            "none": None,
            "ids": ("a", "b"),
        }
    )
    assert event.details == {
        "amount": "12.50",
        "at": "2026-03-01T12:00:00.000000Z",
        "n": 3,
        "ok": True,
        "none": None,
        "ids": ["a", "b"],
    }


def test_integers_beyond_canonical_json_are_refused() -> None:
    with pytest.raises(ValidationError, match="too large"):
        _event(details={"n": 2**60})


def test_secret_looking_keys_are_redacted_at_any_depth_but_descriptions_are_kept() -> None:
    event = _event(
        details={
            "api_key": "sk-live-123",
            "nested": {"client_secret": "s3cret", "tokens": ["a"]},
            "Password": "pw",
            "key_id": "k-1",
            "key_rotated_at": "2026-01-01",
            "wallet_id": "w-1",
        }
    )
    assert event.details["api_key"] == audit.REDACTED
    assert event.details["nested"] == {"client_secret": audit.REDACTED, "tokens": audit.REDACTED}
    assert event.details["Password"] == audit.REDACTED
    assert event.details["key_id"] == "k-1" and event.details["key_rotated_at"] == "2026-01-01"
    assert event.details["wallet_id"] == "w-1"
    assert "sk-live-123" not in event.model_dump_json()


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("api_key", True),
        ("authorization", True),
        ("private_key_pem", True),
        ("session_token", True),
        ("key_fingerprint", False),
        ("key_version", False),
        ("tier", False),
        ("balance", False),
    ],
)
def test_is_secret_key(name: str, secret: bool) -> None:
    assert is_secret_key(name) is secret


def test_naive_times_and_bad_trace_ids_are_refused() -> None:
    with pytest.raises(ValidationError):
        _event(time=datetime(2026, 1, 1))
    with pytest.raises(ValidationError):
        _event(trace_id="not-hex")


def test_build_event_reads_the_clock_and_a_trace_context() -> None:
    class Trace:
        trace_id, span_id = "a" * 32, "b" * 16

    clock = ManualClock(datetime(2026, 5, 1, tzinfo=UTC))
    event = _event(
        clock=clock, trace=Trace(), article=audit.Article.HUMAN_OVERSIGHT, approval="approved"
    )
    assert event.time == clock.now()
    assert (event.trace_id, event.span_id) == ("a" * 32, "b" * 16)
    assert (
        event.article is audit.Article.HUMAN_OVERSIGHT
        and event.approval is audit.ApprovalState.APPROVED
    )
    assert event.agent_id == "seg0-0001-1a2b3c4d"
    assert _event(subject=audit.fleet_subject("demo")).agent_id is None


def test_an_event_survives_the_queue_round_trip_unchanged() -> None:
    event = _event(details={"amount": Decimal("1.10"), "nested": {"x": [1, "2"]}})
    again = audit.AuditEvent.model_validate(event.model_dump(mode="json"))
    assert again == event
    assert canonical(event_object(again)) == canonical(event_object(event))


def test_record_without_a_sink_raises_rather_than_dropping() -> None:
    previous = audit.use_sink(None)
    try:
        with pytest.raises(audit.AuditNotConfigured):
            audit.record(actor="a", action="b", subject="c")
    finally:
        audit.use_sink(previous)


def test_capture_and_batch() -> None:
    sent: list[list[audit.AuditEvent]] = []
    previous = audit.use_sink(lambda events: sent.append(list(events)))
    try:
        with audit.batch() as held:
            audit.record(actor="a", action="one", subject="x")
            with audit.batch():  # joins the outer batch
                audit.record(actor="a", action="two", subject="x")
            assert len(held) == 2 and not sent
        assert [[e.action for e in message] for message in sent] == [["one", "two"]]

        with pytest.raises(RuntimeError), audit.batch():
            audit.record(actor="a", action="three", subject="x")
            raise RuntimeError("the step failed after acting")
        assert [e.action for e in sent[-1]] == ["three"], (
            "what was recorded did happen: it is still sent"
        )
    finally:
        audit.use_sink(previous)

    with audit.capture() as captured:
        audit.record(actor="a", action="four", subject="x")
    assert [e.action for e in captured] == ["four"]


@pytest.mark.parametrize("chain", ["main", "fleet-é", 'quo"te', "tab\there"])
@pytest.mark.parametrize("seq", [1, 9, 10, 123456789012])
def test_the_envelope_is_exactly_rfc8785(chain: str, seq: int) -> None:
    event = _event(details={"ü": "ß", "emoji": "🙂", "ctl": "\u0001", "z": 1, "a": [None, True]})
    event_json = canonical(event_object(event))
    prev = "f" * 64
    body = envelope(canonical(chain), event_json, prev, seq)
    expected = rfc8785.dumps(
        {"chain": chain, "entry": event_object(event), "prev": prev, "seq": seq, "v": 1}
    )
    assert body == expected
    assert entry_hash(body) == entry_hash(expected)
    assert GENESIS == "0" * 64


def test_text_that_cannot_be_canonical_is_refused_at_the_producer() -> None:
    with pytest.raises(ValidationError, match="not valid Unicode"):
        _event(details={"note": "broken \ud800"})
    with pytest.raises(ValidationError, match="(?i)unicode"):
        _event(actor="someone \udfff")
