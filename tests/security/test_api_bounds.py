"""The API checks first and bounds everything: each attack of the issue, replayed."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import RecordingRuntime
from tests.support.identities import signed_in

API_TOKEN = {"Authorization": "Bearer fleet-demo-token"}


def _asgi_post(
    app: Any, headers: list[tuple[bytes, bytes]], body_size: int, path: str
) -> dict[str, Any]:
    """POST straight into the ASGI app; records whether the app ever asked for the body."""
    reads: list[int] = []
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        reads.append(body_size)
        return {"type": "http.request", "body": b"x" * body_size, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("203.0.113.9", 40000),
        "server": ("127.0.0.1", 8000),
    }
    started = time.perf_counter()
    asyncio.run(app(scope, receive, send))
    return {
        "status": sent[0]["status"],
        "reads": len(reads),
        "elapsed_s": time.perf_counter() - started,
    }


@pytest.mark.parametrize(
    "path", ["/api/v1/provisioning-jobs", "/api/v1/release-requests", "/api/v1/auth/whoami"]
)
def test_an_unauthenticated_16_mb_post_is_refused_without_reading_it(
    client: TestClient, path: str
) -> None:
    sixteen_mb = 16 * 1024 * 1024
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(sixteen_mb).encode()),
    ]
    answer = _asgi_post(client.app, headers, sixteen_mb, path)
    assert answer["status"] in (401, 413) and answer["reads"] == 0
    no_length = _asgi_post(client.app, [(b"content-type", b"application/json")], sixteen_mb, path)
    assert no_length["status"] == 401 and no_length["reads"] == 0


def test_an_authenticated_body_over_the_limit_is_refused_before_it_is_parsed(
    client: TestClient,
) -> None:
    big = b"[" + b"1," * 1_100_000 + b"1]"
    answer = client.post(
        "/api/v1/provisioning-jobs",
        content=big,
        headers={**API_TOKEN, "content-type": "application/json"},
    )
    assert answer.status_code == 413
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["error"] == "BodyTooLarge"


def test_a_non_ascii_token_is_401_not_500(client: TestClient) -> None:
    for raw in ("Bearer fleet-démo-token".encode(), b"Bearer \xff\xfe", b"Basic abc", b"Bearer"):
        answer = client.get("/api/v1/approvals", headers={"Authorization": raw})  # type: ignore[dict-item]
        assert answer.status_code == 401, raw
        assert answer.json()["status"] == 401


def test_limits_below_one_or_above_the_maximum_are_422(client: TestClient) -> None:
    for path in ("/api/v1/approvals", "/api/v1/sla/episodes", "/api/v1/monitoring/alerts"):
        for limit in ("-1", "0", "1000000"):
            answer = client.get(path, params={"limit": limit}, headers=API_TOKEN)
            assert answer.status_code == 422, (path, limit)
            assert answer.json()["problems"]


def test_a_yaml_alias_bomb_is_refused_before_it_expands(
    client: TestClient, runtime: RecordingRuntime
) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    bomb = "\n".join(lines) + "\nfleet: demo\n"
    operator = signed_in(runtime.identities, "ops")
    answer = client.post(
        "/api/v1/provisioning-jobs",
        content=bomb.encode(),
        headers={**operator, "content-type": "application/yaml"},
    )
    assert answer.status_code == 422
    assert "aliases" in answer.json()["detail"]
    assert runtime.sent == []


def test_json_is_parsed_as_json_and_other_types_are_415(client: TestClient) -> None:
    yaml_as_json = client.post(
        "/api/v1/provisioning-jobs",
        content=b"fleet: demo\n",
        headers={**API_TOKEN, "content-type": "application/json"},
    )
    assert yaml_as_json.status_code == 422 and "not valid JSON" in yaml_as_json.json()["detail"]
    for content_type in ("text/plain", "application/x-www-form-urlencoded", ""):
        answer = client.post(
            "/api/v1/release-requests",
            content=b'{"agent_id": "a", "reason": "b"}',
            headers={**API_TOKEN, "content-type": content_type},
        )
        assert answer.status_code == 415, content_type


def test_metrics_and_docs_need_a_token_off_loopback(client: TestClient) -> None:
    # The test client is not a loopback peer.
    assert client.get("/metrics").status_code == 401
    assert client.get("/docs").status_code == 401
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/docs", headers=API_TOKEN).status_code == 200
    assert client.get("/docs/static/swagger-ui-bundle.js").status_code == 401


def test_docs_load_every_file_from_here_not_a_cdn(client: TestClient) -> None:
    html = client.get("/docs", headers=API_TOKEN).text
    referenced = re.findall(r'(?:src|href)="([^"]+)"', html) + re.findall(r"url: '([^']+)'", html)
    assert referenced, html
    assert not [u for u in referenced if "//" in u], referenced  # nothing off this host
    for url in referenced:
        assert client.get(url, headers=API_TOKEN).status_code == 200, url
    redoc = client.get("/redoc", headers=API_TOKEN).text
    scripts = re.findall(r'src="([^"]+)"', redoc)
    assert scripts and not [u for u in scripts if "//" in u], scripts
