"""Budgets' pure rules: estimates, the policy (the gateway caps follow the budgets, the
HIGH actions), raise requests checked, a store that does not answer refuses, and the
HTTP API's asks open HIGH approval requests."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import redis

from config.errors import ConfigError
from config.policy import Risk, load_policy
from config.settings import DEFAULT_POLICY_FILE
from fleet.approvals.risk import classify
from fleet.budgets import control
from fleet.budgets.admission import (
    BUDGET_PAUSE_TASK,
    Budgets,
    Charge,
    PauseEvent,
    Refused,
    estimate_cost,
    from_micros,
    pause_from_message,
    pause_message,
    to_micros,
)
from fleet.clock import SystemClock
from stack.processes import free_port
from tests.conftest import RecordingRuntime
from workers.queues import TaskName

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

POLICY = load_policy(DEFAULT_POLICY_FILE)
AUTH = {"Authorization": "Bearer fleet-demo-token"}


def test_the_gateway_estimate_wins_unless_it_is_zero() -> None:
    assert estimate_cost(POLICY, "frontier", 5000, Decimal("0.10")) == Decimal("0.1")
    # The gateway estimates percentage tools at 0.0: the model's price instead.
    assert estimate_cost(POLICY, "frontier", 5000, Decimal("0")) == Decimal("0.075")
    assert estimate_cost(POLICY, "frontier", 5000, None) == Decimal("0.075")


def test_model_prices_have_a_per_task_minimum_and_round_up() -> None:
    assert estimate_cost(POLICY, "small", 50, None) == Decimal("0.001"), "the minimum"
    assert estimate_cost(POLICY, "mid", 1000, None) == Decimal("0.008")
    assert estimate_cost(POLICY, "small", 10, Decimal("0.1234561")) == Decimal("0.123457")
    assert to_micros(Decimal("0.0000001")) == 1 and from_micros(1) == Decimal("0.000001")


def test_an_unknown_model_or_negative_tokens_is_named() -> None:
    with pytest.raises(ValueError, match="no price for model 'gpt-x'.*frontier, mid, small"):
        estimate_cost(POLICY, "gpt-x", 100, None)
    with pytest.raises(ValueError, match="tokens must be"):
        estimate_cost(POLICY, "small", -1, None)


def test_wallet_caps_at_the_gateway_follow_the_budgets(tmp_path: Path) -> None:
    cap = POLICY.provisioning.budget_cap
    assert cap.daily == min(POLICY.budgets.per_agent_hour * 24, POLICY.budgets.fleet_day)
    assert cap.monthly == cap.daily * 30
    small = tmp_path / "small.yaml"
    small.write_text(
        f"extends: {DEFAULT_POLICY_FILE}\n"
        "budgets: {per_task: '1.00', per_agent_hour: '2.00', fleet_day: '10.00',"
        " gateway_credits_per_unit: '100'}\n"
    )
    derived = load_policy(small).provisioning.budget_cap
    assert (derived.daily, derived.monthly) == (Decimal("1000.00"), Decimal("30000.00"))
    pinned = tmp_path / "pinned.yaml"
    pinned.write_text(
        f"extends: {DEFAULT_POLICY_FILE}\n"
        "provisioning: {budget_cap: {daily: '7.00', monthly: '70.00'}}\n"
    )
    kept = load_policy(pinned).provisioning.budget_cap
    assert (kept.daily, kept.monthly) == (Decimal("7.00"), Decimal("70.00"))


def test_a_per_task_cap_above_the_windows_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"extends: {DEFAULT_POLICY_FILE}\nbudgets: {{per_task: '60.00'}}\n")
    with pytest.raises(ConfigError, match="per_task must not be above"):
        load_policy(bad)


def test_resuming_and_raising_are_high_and_the_pause_task_name_is_the_workers() -> None:
    for action in (control.RESUME_ACTION, control.RAISE_ACTION):
        assert classify(POLICY.approvals, action) is Risk.HIGH
    assert BUDGET_PAUSE_TASK == TaskName.BUDGET_RECORD_PAUSE
    event = PauseEvent("f", Decimal("5"), Decimal("5.03"), 1.5, "t1")
    assert pause_from_message(pause_message(event)) == event
    traced = PauseEvent("f", Decimal("5"), Decimal("5.03"), 1.5, "t1", "ab" * 16)
    assert pause_from_message(pause_message(traced)) == traced


@pytest.mark.parametrize(
    ("budget", "subject", "limit", "problem"),
    [
        ("weekly", "*", "1", "budget: must be one of"),
        ("fleet_day", "", "1", "subject: must not be empty"),
        ("fleet_day", "demo", "0", "limit: must be a positive amount"),
        ("fleet_day", "demo", "1.0000001", "at most 6 decimal places"),
    ],
)
def test_a_raise_names_what_is_wrong(budget: str, subject: str, limit: str, problem: str) -> None:
    with pytest.raises(control.BudgetRequestError, match=problem):
        control.check_raise(budget, subject, Decimal(limit))


def test_a_store_that_does_not_answer_refuses_and_counts_as_paused() -> None:
    nowhere = redis.Redis.from_url(
        f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5, socket_timeout=0.5
    )
    budgets = Budgets(nowhere, POLICY.budgets, SystemClock())
    started = time.monotonic()
    answer = budgets.reserve(Charge("t1", "a1", "demo", Decimal("0.01"), "small"))
    assert time.monotonic() - started < 1.0, "refused at once, not after retries"
    assert isinstance(answer, Refused) and answer.budget == "store_unreachable"
    assert "refused, not admitted" in answer.reason
    assert budgets.spending_paused("demo")


def test_a_charge_with_a_bad_amount_is_refused_before_redis() -> None:
    budgets = Budgets(redis.Redis(port=free_port()), POLICY.budgets, SystemClock())
    with pytest.raises(ValueError, match="charge.amount must be a finite amount"):
        budgets.reserve(Charge("t1", "a1", "demo", Decimal("-1"), "small"))
    with pytest.raises(ValueError, match="charge.agent_id must not be empty"):
        budgets.reserve(Charge("t1", "", "demo", Decimal("1"), "small"))


@pytest.fixture
def no_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_REDIS__URL", f"redis://127.0.0.1:{free_port()}/0")
    monkeypatch.setenv("FLEET_BUDGETS__REDIS_TIMEOUT_S", "0.5")


@pytest.fixture
def api(no_redis: None, runtime: RecordingRuntime) -> Iterator[TestClient]:
    from web.app import create_api

    with TestClient(create_api(lambda: runtime)) as client:
        yield client


def test_the_api_asks_for_high_approvals_and_validates_by_field(api: TestClient) -> None:
    assert api.get("/api/v1/budgets").status_code == 401
    answer = api.post("/api/v1/budgets/resume", json={"fleet": "demo"}, headers=AUTH)
    assert answer.status_code == 202, answer.text
    assert answer.json()["risk"] == "HIGH" and answer.json()["status"] == "awaiting-approval"
    raised = api.post(
        "/api/v1/budgets/raise",
        json={"budget": "fleet_day", "subject": "demo", "limit": "3000.00"},
        headers=AUTH,
    )
    assert raised.status_code == 202 and raised.json()["approval_id"]
    bad = api.post(
        "/api/v1/budgets/raise",
        json={"budget": "weekly", "subject": "demo", "limit": "-1", "extra": 1},
        headers=AUTH,
    )
    assert bad.status_code == 422
    text = bad.text
    assert "budget" in text and "limit" in text and "extra" in text
    # Pausing is not gated, and holds with the store away: recorded, set by the next sync.
    blank = api.post("/api/v1/budgets/pause", json={"fleet": "demo", "reason": " "}, headers=AUTH)
    assert blank.status_code == 422 and "reason" in blank.text
    paused = api.post(
        "/api/v1/budgets/pause", json={"fleet": "demo", "reason": "odd spend"}, headers=AUTH
    )
    assert paused.status_code == 200, paused.text
    assert paused.json()["status"] == "paused" and paused.json()["in_store"] is False
    again = api.post(
        "/api/v1/budgets/pause", json={"fleet": "demo", "reason": "odd spend"}, headers=AUTH
    )
    assert again.json()["status"] == "already-paused"
    # The store away: the state is a 503 naming it, never a made-up answer.
    state = api.get("/api/v1/budgets", headers=AUTH)
    assert state.status_code == 503 and "admissions are refused" in state.text
