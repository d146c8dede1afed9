"""`fleet heartbeat send|run`: an agent's signed heartbeats reach the sandbox's bus, verifiable
with its public key, seq rising; a bad key or bad metrics are refused before anything is sent."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cli.main import main
from fleet.monitoring.heartbeats import EVENT_TYPE, private_key_hex, verify_heartbeat
from tests.conftest import SandboxProcess


def _agent(sandbox: SandboxProcess, tmp_path: Path) -> tuple[str, Ed25519PrivateKey, list[str]]:
    agent_id = f"t-hb-{uuid.uuid4().hex[:10]}"
    api_key = httpx.post(f"{sandbox.url}/v1/register", json={"agent_id": agent_id}).json()[
        "api_key"
    ]
    key = Ed25519PrivateKey.generate()
    (tmp_path / "api.key").write_text(api_key)
    (tmp_path / "identity.key").write_text(private_key_hex(key) + "\n")
    args = [
        agent_id,
        "--api-key",
        f"@{tmp_path / 'api.key'}",
        "--identity-key",
        f"@{tmp_path / 'identity.key'}",
        "--gateway-url",
        sandbox.url,
    ]
    return agent_id, key, args


def _bus_events(sandbox: SandboxProcess, source: str) -> list[dict[str, Any]]:
    answer = httpx.get(
        f"{sandbox.url}/v1/infra/events",
        params={"event_type": EVENT_TYPE, "limit": 1000},
        headers={"Authorization": f"Bearer {sandbox.admin_key}"},
    )
    return [e for e in answer.json()["events"] if e["source"] == source]


def test_send_then_run_publish_signed_heartbeats_with_rising_seq(
    sandbox: SandboxProcess, tmp_path: Path
) -> None:
    agent_id, key, args = _agent(sandbox, tmp_path)
    runner = CliRunner()
    sent = runner.invoke(main, ["heartbeat", "send", *args, "--metrics", '{"latency_p99_ms": 820}'])
    assert sent.exit_code == 0, sent.output
    assert f"{agent_id}: heartbeat seq" in sent.output

    metrics_file = tmp_path / "metrics.json"
    metrics_file.write_text(json.dumps({"error_rate": 0.02, "tool_calls": 7}))
    ran = runner.invoke(
        main,
        ["heartbeat", "run", *args, "--metrics-file", str(metrics_file)]
        + ["--interval-s", "0.2", "--beats", "2"],
    )
    assert ran.exit_code == 0, ran.output
    assert "2 sent, 0 failed" in ran.output

    events = _bus_events(sandbox, agent_id)
    assert len(events) == 3
    beats = [verify_heartbeat(e["source"], e["payload"], key.public_key()) for e in events]
    assert [b.seq for b in beats] == sorted({b.seq for b in beats})
    assert beats[0].metrics.latency_p99_ms == 820 and beats[0].interval_s == 60
    assert beats[2].metrics.tool_calls == 7 and beats[2].interval_s == 0.2


def test_bad_identity_key_or_metrics_send_nothing(sandbox: SandboxProcess, tmp_path: Path) -> None:
    agent_id, _, args = _agent(sandbox, tmp_path)
    runner = CliRunner()
    (tmp_path / "identity.key").write_text("not-a-key")
    bad_key = runner.invoke(main, ["heartbeat", "send", *args])
    assert bad_key.exit_code == 2 and "not an Ed25519 private key" in bad_key.output
    (tmp_path / "identity.key").write_text(private_key_hex(Ed25519PrivateKey.generate()))
    too_high = '{"error_rate": 7}'
    bad_metrics = runner.invoke(main, ["heartbeat", "send", *args, "--metrics", too_high])
    assert bad_metrics.exit_code == 2 and "error_rate" in bad_metrics.output
    assert _bus_events(sandbox, agent_id) == []


def test_a_key_the_gateway_does_not_know_fails_the_run(
    sandbox: SandboxProcess, tmp_path: Path
) -> None:
    agent_id, _, args = _agent(sandbox, tmp_path)
    (tmp_path / "api.key").write_text("a2a_free_000000000000000000000000")
    ran = CliRunner().invoke(main, ["heartbeat", "run", *args, "--interval-s", "0.1"])
    assert ran.exit_code == 1 and "does not accept" in ran.output
    assert _bus_events(sandbox, agent_id) == []
