"""One alert per condition while it holds, whatever redeliveries or concurrent evaluations."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from fleet import audit
from fleet.monitoring.alerts import Handoff, apply_changes, list_alerts
from fleet.monitoring.rules import Change, Rule
from fleet.storage.db import create_db_engine, migrate, session_factory

RULE = Rule(
    "agent.low_balance", "critical", "page", 0, ("escalate",), summary="balance below $5.00"
)
INFO_RULE = Rule("agent.p99_baseline", "info", "info", 300)


def change(
    fired: bool = True,
    subject: str = "seg0-0001-00000001",
    rule: Rule = RULE,
    at: float = 1_800_000_000.0,
) -> Change:
    return Change(rule, fired, subject, at - 60, at, "4.20", "5.00", fleet="demo")


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, Any]]:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    migrate(engine)
    notified: list[str] = []
    escalated: list[tuple[str, str]] = []
    with audit.capture():
        yield {
            "sessions": session_factory(engine),
            "r": fakeredis.FakeRedis(decode_responses=True),
            "handoff": Handoff(notified.extend, escalated.extend),
            "notified": notified,
            "escalated": escalated,
        }
    engine.dispose()


def apply(env: dict[str, Any], *changes: Change) -> tuple[list[Any], list[Any]]:
    return apply_changes(env["sessions"], list(changes), env["handoff"], 1_800_000_000.0)


def test_the_same_firing_twice_opens_one_alert_and_notifies_once(env: dict[str, Any]) -> None:
    opened, _ = apply(env, change())
    again, _ = apply(env, change())  # a redelivered batch
    both, _ = apply(env, change(), change())  # or the same change twice in one batch
    assert len(opened) == 1 and again == [] and both == []
    assert len(list_alerts(env["sessions"], open_only=False)) == 1
    assert env["notified"] == [opened[0].alert_id]
    assert env["escalated"] == [("seg0-0001-00000001", "alert:agent.low_balance")]


def test_resolve_closes_it_and_the_next_episode_is_a_new_alert(env: dict[str, Any]) -> None:
    (first,), _ = apply(env, change())
    _, closed = apply(env, change(fired=False))
    _, closed_again = apply(env, change(fired=False))
    assert [a.alert_id for a in closed] == [first.alert_id] and closed_again == []
    (second,), _ = apply(env, change(at=1_800_000_600.0))
    assert second.alert_id != first.alert_id
    rows = list_alerts(env["sessions"], open_only=False)  # newest first
    assert [(a["alert_id"], a["state"]) for a in rows] == [
        (second.alert_id, "open"),
        (first.alert_id, "resolved"),
    ]
    assert env["notified"] == [first.alert_id, first.alert_id, second.alert_id]


def test_each_rule_and_subject_is_its_own_condition(env: dict[str, Any]) -> None:
    opened, _ = apply(env, change(), change(subject="seg0-0002-00000002"), change(rule=INFO_RULE))
    assert len(opened) == 3
    assert env["escalated"] == [
        ("seg0-0001-00000001", "alert:agent.low_balance"),
        ("seg0-0002-00000002", "alert:agent.low_balance"),
    ]
    assert {a["severity"] for a in list_alerts(env["sessions"])} == {"critical", "info"}


def test_nothing_to_do_sends_nothing(env: dict[str, Any]) -> None:
    assert apply(env) == ([], [])
    assert apply(env, change(fired=False)) == ([], [])
    assert env["notified"] == [] and env["escalated"] == []
