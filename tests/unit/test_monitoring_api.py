"""The monitoring endpoints and commands over a sweep's state (in-process: fakeredis, SQLite)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import fakeredis
import orjson
import pytest
from click.testing import CliRunner

with warnings.catch_warnings():
    # Starlette asks for its own httpx fork; the stock httpx client works the same for these calls.
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from fleet import audit
from fleet.monitoring import sweep
from fleet.monitoring.alerts import Handoff, apply_changes
from fleet.monitoring.rules import Change, Rule
from fleet.monitoring.snapshot import Health, Snapshot, write_snapshots
from tests.conftest import RecordingRuntime

AUTH = {"Authorization": "Bearer fleet-demo-token"}
AGENT = "seg0-0001-00000001"


@pytest.fixture
def env(runtime: RecordingRuntime) -> Iterator[dict[str, Any]]:
    sessions = runtime.sessions
    r = fakeredis.FakeRedis(decode_responses=True)
    runtime.redis = r
    r.hset(
        sweep.HEALTH_KEY,
        mapping={
            "demo": orjson.dumps(
                {
                    "fleet": "demo",
                    "agents": 1,
                    "healthy": 0,
                    "degraded": 0,
                    "critical": 1,
                    "unknown": 0,
                    "latency_p99": 6000.0,
                    "error_rate": 0.2,
                    "sla_compliance": 0.0,
                    "burn_rate_per_hour": "3.00",
                }
            )
        },
    )
    r.hset(
        sweep.HEALTH_META_KEY,
        mapping={"sweep_id": "s1", "finished_at": "1800000000.0", "wall_s": "2.5"},
    )
    write_snapshots(
        r,
        [
            Snapshot(
                AGENT,
                1.0,
                Health.CRITICAL,
                latency_p99=6000.0,
                error_rate=0.2,
                fleet="demo",
                breached_terms=("p99_latency_ms",),
            )
        ],
    )
    r.hset(
        sweep.sweep_key("s1"),
        mapping={"sweep_id": "s1", "status": "finished", "agents": 1, "batches": 1},
    )
    r.hset(sweep.sweep_key("s1") + ":done", "0", "1:0")
    r.lpush(sweep.RECENT_KEY, "s1")
    with audit.capture():
        apply_changes(
            sessions,
            [
                Change(
                    Rule("agent.sla_breach", "critical", "page"),
                    True,
                    AGENT,
                    0.0,
                    60.0,
                    "breached",
                    "compliant",
                    "demo",
                )
            ],
            Handoff(lambda ids: None, lambda p: None),
            60.0,
        )
    yield {"r": r, "sessions": sessions, "runtime": runtime}


def test_metrics_needs_a_token_off_loopback_and_so_does_the_rest(env: dict[str, Any]) -> None:
    from web.app import create_api

    with TestClient(create_api(lambda: env["runtime"])) as client:
        assert client.get("/metrics").status_code == 401  # the test client is no loopback peer
        metrics = client.get("/metrics", headers=AUTH)
        assert metrics.status_code == 200 and metrics.headers["content-type"].startswith(
            "text/plain"
        )
        assert 'fleet_agents{fleet="demo",health="critical"} 1.0' in metrics.text
        assert 'fleet_alerts_open{severity="critical"} 1.0' in metrics.text
        assert client.get("/api/v1/monitoring/fleet").status_code == 401
        fleet = client.get("/api/v1/monitoring/fleet", headers=AUTH).json()
        assert fleet["fleets"]["demo"]["critical"] == 1 and fleet["open_alerts"] == {"critical": 1}
        agent = client.get(f"/api/v1/monitoring/agents/{AGENT}", headers=AUTH).json()
        assert agent["health"] == "critical" and agent["breached_terms"] == ["p99_latency_ms"]
        assert client.get("/api/v1/monitoring/agents/nobody", headers=AUTH).status_code == 404
        assert client.get("/api/v1/monitoring/sweeps", headers=AUTH).json()[0]["agents_done"] == 1
        assert client.get("/api/v1/monitoring/sweeps/s1", headers=AUTH).json()["failures"] == {}
        alerts = client.get("/api/v1/monitoring/alerts", headers=AUTH).json()
        assert [(a["rule"], a["state"]) for a in alerts] == [("agent.sla_breach", "open")]
        accepted = client.post(
            "/api/v1/monitoring/task-logs",
            headers=AUTH,
            json=[{"agent_id": AGENT, "task_id": "t1", "tool_calls": 3, "unique_tools": 2}],
        )
        assert accepted.status_code == 202 and accepted.json() == {"received": 1, "accepted": 1}
        assert (
            client.post(
                "/api/v1/monitoring/task-logs", headers=AUTH, json=[{"agent_id": AGENT}]
            ).status_code
            == 422
        )


def test_fleet_alerts_and_status(env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from cli import main as cli_main
    from cli.commands.status import echo_fleet_health

    runner = CliRunner()
    out = runner.invoke(cli_main.main, ["alerts"])
    assert out.exit_code == 0, out.output
    assert "agent.sla_breach" in out.output and AGENT in out.output and "critical" in out.output
    as_json = runner.invoke(cli_main.main, ["alerts", "--json", "--severity", "critical"])
    assert orjson.loads(as_json.output)[0]["subject"] == AGENT
    assert "no open alerts" in runner.invoke(cli_main.main, ["alerts", "--severity", "info"]).output

    import click

    lines: list[str] = []
    monkeypatch.setattr(click, "echo", lambda message="", **_: lines.append(str(message)))
    from config.settings import get_settings

    echo_fleet_health(get_settings(), env["r"], 1800000010.0)
    text = "\n".join(lines)
    assert "fleet health (sweep s1, 10 s ago, took 2.5 s)" in text
    assert "demo" in text and "6000" in text and "open alerts: 1 critical" in text
