"""The sandbox over real HTTP, spoken to as the real gateway is: REST paths, raw httpx."""

from __future__ import annotations

import json
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import SandboxProcess
from tests.contract.differential import run_sequence

pytestmark = pytest.mark.integration

ADMIN = "sandbox-admin-key"
PROBLEM = "application/problem+json"


def uid(prefix: str = "t-sb") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def http(sandbox: SandboxProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.url, timeout=10) as client:
        yield client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def register(http: httpx.Client, agent_id: str | None = None) -> tuple[str, str]:
    agent_id = agent_id or uid()
    r = http.post("/v1/register", json={"agent_id": agent_id})
    assert r.status_code == 201, r.text
    return agent_id, r.json()["api_key"]


def test_register_answers_a_free_key_500_credits_and_an_ed25519_key(http: httpx.Client) -> None:
    agent_id = uid()
    r = http.post("/v1/register", json={"agent_id": agent_id})
    assert r.status_code == 201
    body = r.json()
    assert re.fullmatch(r"a2a_free_[0-9a-f]{24}", body["api_key"])
    assert body["tier"] == "free" and body["balance"] == 500.0
    assert re.fullmatch(r"[0-9a-f]{64}", body["public_key"])
    again = http.post("/v1/register", json={"agent_id": agent_id})
    assert again.status_code == 409
    assert again.headers["content-type"].startswith(PROBLEM)
    assert again.json()["type"] == "https://api.greenhelix.net/errors/already-exists"
    extra = http.post("/v1/register", json={"agent_id": uid(), "tier": "pro"})
    assert extra.status_code == 400 and extra.json()["detail"] == "Invalid request body"


def test_the_removed_envelope_is_gone(http: httpx.Client) -> None:
    r = http.post("/v1/execute", json={"tool": "get_balance", "input": {}})
    assert r.status_code == 410
    assert r.headers["Deprecation"] == "true" and "Sunset" in r.headers
    assert r.json()["type"].endswith("/endpoint-removed")
    assert http.post("/v1", json={"tool": "get_balance"}).status_code in (404, 405)


def test_balance_money_and_headers(http: httpx.Client) -> None:
    agent_id, key = register(http)
    r = http.get(f"/v1/billing/wallets/{agent_id}/balance", headers=bearer(key))
    assert r.status_code == 200 and r.json() == {"balance": "500.00"}
    assert r.headers["X-Charged"] == "0.00"
    assert r.headers["X-RateLimit-Limit"] == "100"
    assert r.headers["X-RateLimit-Remaining"] == "99"
    admin = http.get(f"/v1/billing/wallets/{agent_id}/balance", headers=bearer(ADMIN))
    assert admin.status_code == 200 and "X-RateLimit-Limit" not in admin.headers
    assert admin.headers["X-Charged"] == "0.00"


def test_ownership_tier_and_admin_rules(http: httpx.Client, sandbox: SandboxProcess) -> None:
    a, ka = register(http)
    b, _ = register(http)
    other = http.get(f"/v1/billing/wallets/{b}/balance", headers=bearer(ka))
    assert other.status_code == 403 and other.json()["type"].endswith("/forbidden")
    escrow = {"payer": a, "payee": b, "amount": "5.00"}
    tier = http.post("/v1/payments/escrows", json=escrow, headers=bearer(ka))
    assert tier.status_code == 403 and tier.json()["type"].endswith("/insufficient-tier")
    assert "requires 'pro'" in tier.json()["detail"]
    frz = http.post(f"/v1/billing/wallets/{a}/freeze", headers=bearer(ka))
    assert frz.status_code == 403 and frz.json()["type"].endswith("/admin-only")
    pro = sandbox.mint_key(a, "pro")
    made = http.post("/v1/payments/escrows", json=escrow, headers=bearer(pro))
    assert made.status_code == 201 and made.json()["amount"] == "5.0"
    assert made.headers["X-Charged"] == "0.08"
    assert made.headers["X-RateLimit-Limit"] == "10000"


def test_validation_caps_idempotency_and_freeze(http: httpx.Client) -> None:
    a, ka = register(http)
    path = f"/v1/billing/wallets/{a}/deposit"
    extra = http.post(path, json={"amount": "1.00", "x": 1}, headers=bearer(ka))
    assert extra.status_code == 422 and extra.json()["detail"] == (
        "body.x: Extra inputs are not permitted"
    )
    assert http.post(path, json={"amount": "1.555"}, headers=bearer(ka)).status_code == 422
    cap = http.post(path, json={"amount": "1000.01"}, headers=bearer(ka))
    assert cap.status_code == 403 and cap.json()["type"].endswith("/deposit-limit-exceeded")
    idem = {**bearer(ka), "Idempotency-Key": uid("dep")}
    first = http.post(path, json={"amount": "10.00"}, headers=idem)
    replay = http.post(path, json={"amount": "10.00"}, headers=idem)
    assert (
        first.json()
        == replay.json()
        == {"new_balance": "510.00", "transaction_id": first.json()["transaction_id"]}
    )
    assert http.post(f"/v1/billing/wallets/{a}/freeze", headers=bearer(ADMIN)).json() == {
        "agent_id": a,
        "frozen": True,
    }
    frozen = http.post(path, json={"amount": "1.00"}, headers=bearer(ADMIN))
    assert frozen.status_code == 403 and frozen.json()["type"].endswith("/wallet-frozen")
    http.post(f"/v1/billing/wallets/{a}/unfreeze", headers=bearer(ADMIN))
    b, _ = register(http)
    intent = {"payer": a, "payee": b, "amount": "25.00"}
    ih = {**bearer(ka), "Idempotency-Key": uid("int")}
    made = http.post("/v1/payments/intents", json=intent, headers=ih)
    assert made.status_code == 201 and made.headers["X-Charged"] == "0.50"
    again = http.post("/v1/payments/intents", json=intent, headers=ih)
    assert again.json() == made.json() and "X-Charged" not in again.headers
    reused = http.post("/v1/payments/intents", json={**intent, "amount": "26.00"}, headers=ih)
    assert reused.status_code == 409


def test_budget_cap_refuses_fees_and_then_top_ups(http: httpx.Client) -> None:
    a, ka = register(http)
    r = http.put(f"/v1/billing/wallets/{a}/budget", json={"daily_cap": "0.15"}, headers=bearer(ka))
    assert r.json() == {
        "agent_id": a,
        "daily_cap": 0.15,
        "monthly_cap": None,
        "alert_threshold": 0.8,
    }
    match = http.get("/v1/marketplace/match", params={"query": "x"}, headers=bearer(ka))
    assert match.status_code == 200 and match.headers["X-Charged"] == "0.10"
    over = http.get("/v1/marketplace/match", params={"query": "x"}, headers=bearer(ka))
    assert over.status_code == 402 and over.json()["type"].endswith("/budget-exceeded")
    status = http.get(f"/v1/billing/wallets/{a}/budget", headers=bearer(ka)).json()
    assert status["daily_spend"] == 0.1 and status["alert_triggered"] is False
    http.put(f"/v1/billing/wallets/{a}/budget", json={"daily_cap": "0.05"}, headers=bearer(ka))
    topup = http.post(
        f"/v1/billing/wallets/{a}/deposit", json={"amount": "1.00"}, headers=bearer(ka)
    )
    assert topup.status_code == 402


def test_free_window_is_99_then_429_without_headers_and_rejections_count(
    http: httpx.Client, sandbox: SandboxProcess
) -> None:
    a, ka = register(http)
    path = f"/v1/billing/wallets/{a}/balance"
    statuses = [http.get(path, headers=bearer(ka)).status_code for _ in range(99)]
    assert statuses == [200] * 99
    limited = http.get(path, headers=bearer(ka))
    assert limited.status_code == 429
    assert limited.json()["detail"] == "Rate limit exceeded: 100/100 per hour"
    assert not any(h.startswith("X-RateLimit") for h in limited.headers)
    assert "Retry-After" not in limited.headers
    http.get(path, headers=bearer(ka))
    assert sandbox.agent(a)["window_count"] == 101
    # Another key of the same agent shares the window; a pro key has the pro limit.
    pro = sandbox.mint_key(a, "pro")
    r = http.get(path, headers=bearer(pro))
    assert r.status_code == 200 and r.headers["X-RateLimit-Remaining"] == str(10000 - 102)


def test_escrow_dispute_refund_and_keepalive_close(
    http: httpx.Client, sandbox: SandboxProcess
) -> None:
    a, _ = register(http)
    b, _ = register(http)
    pa, pb = sandbox.mint_key(a, "pro"), sandbox.mint_key(b, "pro")
    esc = http.post(
        "/v1/payments/escrows", json={"payer": a, "payee": b, "amount": "20.00"}, headers=bearer(pa)
    ).json()
    dispute = http.post(
        "/v1/disputes",
        json={"escrow_id": esc["id"], "opener": a, "reason": "slow"},
        headers=bearer(pa),
    )
    assert dispute.status_code == 201 and dispute.json()["status"] == "open"
    did = dispute.json()["id"]
    resp = http.post(
        f"/v1/disputes/{did}/respond", json={"respondent": b, "response": "no"}, headers=bearer(pb)
    )
    assert resp.json()["status"] == "responded"
    done = http.post(
        f"/v1/disputes/{did}/resolve",
        json={"resolution": "refund", "resolved_by": "fleet-admin"},
        headers=bearer(ADMIN),
    )
    assert done.json()["status"] == "resolved"
    assert (
        http.get(f"/v1/payments/escrows/{esc['id']}", headers=bearer(pb)).json()["status"]
        == "refunded"
    )
    balance = http.get(f"/v1/billing/wallets/{a}/balance", headers=bearer(ADMIN)).json()
    assert balance == {"balance": "499.70"}  # 500 - 0.30 fee; the 20.00 came back
    missing = http.get(f"/v1/billing/wallets/{uid()}/balance", headers=bearer(ADMIN))
    assert missing.status_code == 404 and missing.headers.get("Connection", "").lower() == "close"


def test_rotation_keeps_the_old_key_for_the_grace_window(
    spawn_sandbox: Callable[..., SandboxProcess],
) -> None:
    sb = spawn_sandbox(
        "--memory", "--latency-ms", "0", "--latency-jitter-ms", "0", "--key-grace-s", "1"
    )
    with httpx.Client(base_url=sb.url, timeout=10) as http:
        a, key = register(http)
        no = http.post("/v1/infra/keys/rotate", json={"current_key": key}, headers=bearer(ADMIN))
        assert no.status_code == 428 and no.headers["content-type"].startswith("application/json")
        r = http.post(
            "/v1/infra/keys/rotate",
            json={"current_key": key},
            headers={**bearer(ADMIN), "X-Rotate-Confirmation": "confirm"},
        )
        assert r.status_code == 200 and r.json()["grace_period_seconds"] == 1
        new = r.json()["new_key"]
        path = f"/v1/billing/wallets/{a}/balance"
        assert http.get(path, headers=bearer(key)).status_code == 200
        time.sleep(1.2)
        old = http.get(path, headers=bearer(key))
        assert old.status_code == 401 and old.json()["detail"] == "API key has been revoked"
        assert http.get(path, headers=bearer(new)).status_code == 200


def test_event_stream_replays_since_id_beats_and_closes(
    spawn_sandbox: Callable[..., SandboxProcess],
) -> None:
    sb = spawn_sandbox(
        "--memory", "--latency-ms", "0", "--sse-lifetime-s", "1.5", "--sse-heartbeat-s", "0.3"
    )
    with httpx.Client(base_url=sb.url, timeout=10) as http:
        a, key = register(http)
        ids = [
            http.post(
                "/v1/infra/events",
                json={"event_type": "fleet.agent.heartbeat", "source": a, "payload": {"n": n}},
                headers=bearer(key),
            ).json()["event_id"]
            for n in range(3)
        ]
        started = time.monotonic()
        with http.stream(
            "GET", "/v1/events/stream", headers={**bearer(key), "Last-Event-ID": str(ids[0])}
        ) as r:
            text = "".join(r.iter_text())
        assert 1.4 < time.monotonic() - started < 5
        frames = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
        assert [f["id"] for f in frames] == ids[1:]
        assert ": heartbeat" in text


def test_state_survives_a_restart(
    spawn_sandbox: Callable[..., SandboxProcess], tmp_path: Path
) -> None:
    args = ("--latency-ms", "0", "--data-dir", str(tmp_path))
    sb = spawn_sandbox(*args)
    with httpx.Client(base_url=sb.url, timeout=10) as http:
        a, key = register(http)
        http.post(f"/v1/billing/wallets/{a}/deposit", json={"amount": "12.34"}, headers=bearer(key))
    sb.process.terminate()
    sb.process.wait(10)
    again = spawn_sandbox(*args)
    with httpx.Client(base_url=again.url, timeout=10) as http:
        r = http.get(f"/v1/billing/wallets/{a}/balance", headers=bearer(key))
        assert r.status_code == 200 and r.json() == {"balance": "512.34"}
        assert http.post("/v1/register", json={"agent_id": a}).status_code == 409


def test_seeding_ten_thousand_agents_is_fast_and_they_behave(
    spawn_sandbox: Callable[..., SandboxProcess],
) -> None:
    sb = spawn_sandbox("--memory", "--latency-ms", "0", "--agents", "10000")
    assert sb.started_in_s < 20
    assert sb.state()["agents"] >= 10000
    seeded = sb.seed(3, prefix="beh", profile="degrading")["agents"]
    agent_id, key = seeded[0]["agent_id"], seeded[0]["api_key"]
    with httpx.Client(base_url=sb.url, timeout=10) as http:
        r = http.get(
            "/v1/identity/metrics",
            params={"agent_id": agent_id, "metric_name": "p99_latency_ms"},
            headers=bearer(key),
        )
        assert r.status_code == 200 and r.json()["data"][0]["value"] > 0
    assert sb.tick()["heartbeats"] >= 3


def test_faults_and_counters(spawn_sandbox: Callable[..., SandboxProcess]) -> None:
    sb = spawn_sandbox("--memory", "--latency-ms", "0")
    with httpx.Client(base_url=sb.url, timeout=10) as http:
        a, key = register(http)
        sb.set_faults(tools={"get_balance": {"outages": [{"duration_s": 60}]}})
        out = http.get(f"/v1/billing/wallets/{a}/balance", headers=bearer(key))
        assert out.status_code == 503 and "Retry-After" in out.headers
        assert http.get(f"/v1/billing/wallets/{a}/budget", headers=bearer(key)).status_code == 200
        sb.clear_faults()
        sb.set_faults(rate_limit_next=2)
        assert [
            http.get(f"/v1/billing/wallets/{a}/budget", headers=bearer(key)).status_code
            for _ in range(3)
        ] == [429, 429, 200]
    counters = sb.counters()
    assert counters["tools"]["register"] == 1
    assert counters["tools"]["get_balance"] == 1
    assert counters["tools"]["get_budget_status"] == 4
    # Faulted calls are answered before the key is read: they count per endpoint only.
    assert counters["agents"][a]["get_budget_status"] == 2
    assert counters["statuses"]["get_budget_status"] == {"200": 2, "429": 2}


def test_answers_fit_the_documented_response_schemas(sandbox: SandboxProcess) -> None:
    """The differential sequence against the sandbox: every step answers, none is a 5xx."""
    steps = run_sequence(sandbox.url, ADMIN, sandbox.mint_key)
    assert len(steps) > 50
    assert not [s for s in steps if s[1] >= 500]


def _read_answers(sock: socket.socket, count: int) -> list[tuple[str, dict[str, str], bytes]]:
    """``count`` HTTP answers framed by Content-Length: (status line, headers, body)."""
    data = b""
    answers: list[tuple[str, dict[str, str], bytes]] = []
    sock.settimeout(10)
    while len(answers) < count:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            lines = data[:end].decode("latin-1").split("\r\n")
            headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
            size = int(headers["content-length"])
            if len(data) >= end + 4 + size:
                answers.append((lines[0], headers, data[end + 4 : end + 4 + size]))
                data = data[end + 4 + size :]
                continue
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {len(answers)} answers"
        data += chunk
    return answers


def test_one_keep_alive_connection_serves_pipelined_reads_then_a_write_then_reads(
    sandbox: SandboxProcess, http: httpx.Client
) -> None:
    """Reads answered by the lean front and a deposit (aiohttp's) share one connection, in order."""
    agent_id, _ = register(http)
    auth = f"Authorization: Bearer {ADMIN}\r\n"
    get = f"GET /v1/billing/wallets/{agent_id}/balance HTTP/1.1\r\nHost: sb\r\n{auth}\r\n"
    body = b'{"amount": "5"}'
    post = (
        f"POST /v1/billing/wallets/{agent_id}/deposit HTTP/1.1\r\nHost: sb\r\n{auth}"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    host, port = sandbox.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(get.encode() * 2)
        first = _read_answers(sock, 2)
        sock.sendall(post + get.encode())
        after = _read_answers(sock, 2)
        sock.sendall(
            f"GET /v1/billing/wallets/{agent_id}/nope HTTP/1.1\r\nHost: sb\r\n\r\n".encode()
        )
        (unknown,) = _read_answers(sock, 1)
    assert [json.loads(b) for _, _, b in first] == [{"balance": "500.00"}] * 2
    assert all(h["x-charged"] == "0.00" and "date" in h and "server" in h for _, h, _ in first)
    assert json.loads(after[0][2])["new_balance"] == "505.00"
    assert json.loads(after[1][2]) == {"balance": "505.00"}
    assert unknown[0].startswith("HTTP/1.1 404")
    assert unknown[1]["content-type"] == PROBLEM


def test_a_read_answer_that_closes_says_so_and_an_encoded_path_is_decoded(
    sandbox: SandboxProcess,
) -> None:
    host, port = sandbox.url.removeprefix("http://").split(":")
    auth = f"Authorization: Bearer {ADMIN}\r\n"
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            f"GET /v1/billing/wallets/t-sb-none/balance HTTP/1.1\r\nHost: sb\r\n{auth}\r\n".encode()
        )
        (missing,) = _read_answers(sock, 1)
        assert sock.recv(1) == b""  # the server closed it, as the real one does after a 404
    assert missing[0] == "HTTP/1.1 404 Not Found" and missing[1]["connection"] == "close"
    answers = []
    # The shared sandbox's admin wallet pays for other tests' paid calls: compare the
    # encoded path's answer with the plain one's, read back to back.
    for path in (
        "/v1/billing/wallets/fleet%2Dadmin/balance",
        "/v1/billing/wallets/fleet-admin/balance",
    ):
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(
                f"GET {path} HTTP/1.1\r\nHost: sb\r\n{auth}Connection: close\r\n\r\n".encode()
            )
            answers.extend(_read_answers(sock, 1))
    encoded, plain = answers
    assert encoded[0] == plain[0] == "HTTP/1.1 200 OK"
    assert json.loads(encoded[2])["balance"] == json.loads(plain[2])["balance"]
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(f"GET /v1/billing/wallets/fleet-admin/balance HTTP/1.1\r\n{auth}\r\n".encode())
        (no_host,) = _read_answers(sock, 1)
    assert no_host[0].endswith("400 Bad Request")
