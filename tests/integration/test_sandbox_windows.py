"""The sandbox's rate windows as the gateway keeps them (real-gateway.md §9): per agent id,
3600 s, every call counted before the check, a limit of N answering N - 1, per-tool limits
counted the same way, 429s without rate headers."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import SandboxProcess

pytestmark = pytest.mark.integration


def _key(sandbox: SandboxProcess, prefix: str, tier: str = "free") -> tuple[str, str]:
    [agent] = sandbox.seed(1, prefix=prefix, profile="healthy", tier=tier)["agents"]
    return agent["agent_id"], agent["api_key"]


def test_a_free_window_answers_99_then_429_without_rate_headers(sandbox: SandboxProcess) -> None:
    agent_id, key = _key(sandbox, "winfree")
    statuses = []
    with httpx.Client(base_url=sandbox.url, headers={"Authorization": f"Bearer {key}"}) as http:
        for _ in range(100):
            answer = http.get(f"/v1/billing/wallets/{agent_id}/balance")
            statuses.append(answer.status_code)
        assert answer.headers.get("X-RateLimit-Limit") is None
        assert "Rate limit exceeded: 100/100 per hour" in answer.json()["detail"]
    assert statuses == [200] * 99 + [429]


def test_a_pro_key_has_its_own_limit_in_the_headers(sandbox: SandboxProcess) -> None:
    agent_id, key = _key(sandbox, "winpro", tier="pro")
    with httpx.Client(base_url=sandbox.url, headers={"Authorization": f"Bearer {key}"}) as http:
        answer = http.get(f"/v1/billing/wallets/{agent_id}/balance")
    assert answer.status_code == 200
    assert (answer.headers["X-RateLimit-Limit"], answer.headers["X-RateLimit-Remaining"]) == (
        "10000",
        "9999",
    )


def test_a_per_tool_limit_of_20_answers_19(sandbox: SandboxProcess) -> None:
    _, key = _key(sandbox, "wintool")
    with httpx.Client(base_url=sandbox.url, headers={"Authorization": f"Bearer {key}"}) as http:
        statuses = [http.get("/v1/billing/keys").status_code for _ in range(20)]
        detail = http.get("/v1/billing/keys").json()["detail"]
    assert statuses == [200] * 19 + [429]
    assert "Per-tool rate limit exceeded for 'create_api_key': 21/20 per hour" in detail
