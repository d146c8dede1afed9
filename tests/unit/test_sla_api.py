"""The SLA endpoints and `fleet sla status` (in-process, SQLite)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from fleet import audit
from fleet.identity import Role
from fleet.sla.models import SlaEpisode, SlaEscalation
from fleet.storage.db import write_session
from fleet.storage.records import Agent, AgentStatus
from tests.conftest import RecordingRuntime
from tests.support.identities import signed_in
from workers import runtime as process_runtime

AUTH = {"Authorization": "Bearer fleet-demo-token"}
AGENT = "api-0001-0000abcd"


@pytest.fixture
def redis_nowhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_REDIS__URL", "redis://127.0.0.1:1/0")  # nothing listens: unknown


@pytest.fixture
def api(
    redis_nowhere: None, runtime: RecordingRuntime
) -> Iterator[tuple[TestClient, list[audit.AuditEvent]]]:
    now = datetime.now(UTC)
    with write_session(runtime.sessions) as s:
        s.add(
            Agent(
                agent_id=AGENT,
                fleet="demo",
                environment="test",
                id_prefix="api",
                tier="standard",
                capabilities=[],
                sla_template="standard-support",
                status=AgentStatus.ACTIVE,
                steps_done=[],
                traffic_weight="0.5",
                extra={},
                created_at=now,
                updated_at=now,
            )
        )
        s.flush()
        s.add(
            SlaEpisode(
                episode_id="a" * 32,
                agent_id=AGENT,
                fleet="demo",
                state="open",
                open_agent=AGENT,
                breached_terms=["uptime_pct"],
                opened_at=now - timedelta(minutes=7),
                opened_by="sweep",
                last_breach_at=now,
                compliant_streak=0,
                weight_before="1",
            )
        )
        s.flush()
        for tier, age in ((1, 0), (2, 300)):
            s.add(
                SlaEscalation(
                    episode_id="a" * 32,
                    tier=tier,
                    action="x",
                    task=f"escalation.tier{tier}.x",
                    status="done",
                    dispatched_at=now,
                    episode_age_s=age,
                    queue=f"escalation.tier{tier}",
                    steps={},
                    result={"after": "0.5"} if tier == 2 else {},
                )
            )
    from web.app import create_api

    with TestClient(create_api(lambda: runtime)) as client:
        yield client, runtime.events


def test_sla_endpoints(
    api: tuple[TestClient, list[audit.AuditEvent]], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, events = api
    assert client.get("/api/v1/sla/status").status_code == 401
    report = client.get("/api/v1/sla/status", headers=AUTH).json()
    assert report["budgets"]["demo"]["agents"] == 1 and report["budgets"]["demo"][
        "consumed_minutes"
    ] == pytest.approx(7, abs=0.1)
    assert report["budgets"]["demo"]["time_to_exhaustion_s"] is not None
    [episode] = report["open_episodes"]
    assert episode["tier_reached"] == 2 and [e["queue"] for e in episode["escalations"]] == [
        "escalation.tier1",
        "escalation.tier2",
    ]
    agent = client.get(f"/api/v1/sla/agents/{AGENT}", headers=AUTH).json()
    assert agent["traffic_weight"] == "0.5" and agent["budget"]["remaining"] < 1
    assert client.get("/api/v1/sla/agents/nobody", headers=AUTH).status_code == 404
    assert len(client.get("/api/v1/sla/episodes?state=open", headers=AUTH).json()) == 1
    assert client.get("/api/v1/sla/episodes?state=weird", headers=AUTH).status_code == 422
    assert client.get("/api/v1/sla/episodes/" + "a" * 32, headers=AUTH).json()["disputes"] == []
    assert client.get("/api/v1/sla/episodes/nope", headers=AUTH).status_code == 404

    alice = signed_in(process_runtime.runtime().identities, "alice", Role.OPERATOR)
    acked = client.post(
        f"/api/v1/sla/episodes/{'a' * 32}/ack", json={"note": "on it"}, headers=alice
    )
    assert acked.status_code == 200 and acked.json()["acked_by"] == "user:alice"
    assert [e.action for e in events] == ["sla_episode_acknowledged"] and events[
        0
    ].actor == "user:alice"

    from tasks import sla as sla_tasks

    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(
        sla_tasks.evaluate_agent,
        "apply_async",
        lambda kwargs: sent.append(kwargs) or type("R", (), {"id": "t1"})(),
    )
    checked = client.post(
        f"/api/v1/sla/agents/{AGENT}/check",
        json={"counterparty": "buyer-1", "amount": "3.50"},
        headers=AUTH,
    )
    assert checked.status_code == 202 and sent == [
        {"agent_id": AGENT, "source": "api", "counterparty": "buyer-1", "amount": "3.50"}
    ]
    assert set(client.get("/api/v1/sla/templates", headers=AUTH).json()) == {
        "standard-support",
        "premium-support",
    }


def test_fleet_sla_status_shows_episodes_tiers_and_budget(
    api: tuple[TestClient, list[audit.AuditEvent]],
) -> None:
    from cli.main import main

    runner = CliRunner()
    fleet = runner.invoke(main, ["sla", "status"])
    assert fleet.exit_code == 0, fleet.output
    assert "fleet demo" in fleet.output and "budget left" in fleet.output
    assert AGENT in fleet.output and "tier 2" in fleet.output and "T1:done T2:done" in fleet.output
    one = runner.invoke(main, ["sla", "status", AGENT])
    assert one.exit_code == 0, one.output
    assert "error budget" in one.output and "traffic weight 0.5" in one.output
    assert "on escalation.tier2" in one.output
    assert runner.invoke(main, ["sla", "status", "nobody"]).exit_code == 1
    assert runner.invoke(main, ["sla", "status", "--json"]).exit_code == 0
