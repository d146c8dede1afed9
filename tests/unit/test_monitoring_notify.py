"""Alert notices: Slack-compatible JSON, routed by audience, retried only when worth it."""

from __future__ import annotations

import json
from typing import Any

import httpx

from config.policy import AlertPolicy
from fleet.monitoring import notify


def alert(
    i: int = 1, severity: str = "critical", audience: str = "page", state: str = "open"
) -> dict[str, Any]:
    return {
        "alert_id": f"id{i}",
        "rule": "agent.low_balance",
        "scope": "agent",
        "subject": f"seg0-{i:04d}-00000000",
        "fleet": "demo",
        "severity": severity,
        "audience": audience,
        "state": state,
        "value": "4.20",
        "threshold": "5.00",
        "message": f"balance below $5.00: seg0-{i:04d}-00000000",
    }


def test_payload_is_slack_compatible() -> None:
    body = notify.slack_payload([alert(1), alert(2, "warning", "finops", state="resolved")])
    assert body["text"].startswith("Fleet Commander: 1 alert fired (worst: critical), 1 resolved")
    assert len(body["attachments"]) == 2
    first = body["attachments"][0]
    assert (
        first["title"] == "agent.low_balance — seg0-0001-00000000" and first["color"] == "#d00000"
    )
    assert {f["title"] for f in first["fields"]} == {"severity", "audience", "value", "threshold"}
    assert body["attachments"][1]["title"].endswith("(resolved)")
    json.dumps(body)  # plain JSON


def test_long_lists_are_cut() -> None:
    body = notify.slack_payload([alert(i) for i in range(50)])
    assert len(body["attachments"]) == notify.MAX_LISTED and "and 30 more" in body["text"]


def test_routing_by_audience() -> None:
    policy = AlertPolicy(
        webhooks=["https://hooks.example/all"],
        routes={
            "page": ["https://hooks.example/pager"],
            "finops": ["https://hooks.example/finops"],
        },
    )
    plan = notify.plan(policy, [alert(1), alert(2, "warning", "finops")])
    assert {url: [a["alert_id"] for a in listed] for url, listed in plan.items()} == {
        "https://hooks.example/all": ["id1", "id2"],
        "https://hooks.example/pager": ["id1"],
        "https://hooks.example/finops": ["id2"],
    }
    assert list(notify.plan(policy, [alert(1)], only=["https://hooks.example/pager"])) == [
        "https://hooks.example/pager"
    ]


def test_deliver_retries_only_transient_failures() -> None:
    seen: list[tuple[str, dict[str, Any]]] = []
    answers = {"/ok": 200, "/busy": 503, "/slow": 429, "/gone": 404}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, json.loads(request.content)))
        if request.url.path == "/down":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(answers[request.url.path])

    urls = [f"https://hooks.example{p}" for p in ("/ok", "/busy", "/slow", "/gone", "/down")]
    policy = AlertPolicy(webhooks=urls)
    with httpx.Client(transport=httpx.MockTransport(handler)) as http:
        retry = notify.deliver(policy, [alert(1)], http)
    assert retry == [
        "https://hooks.example/busy",
        "https://hooks.example/slow",
        "https://hooks.example/down",
    ]
    assert [p for p, _ in seen] == ["/ok", "/busy", "/slow", "/gone", "/down"]
    assert all(body["attachments"][0]["footer"] == "alert id1" for _, body in seen)


def test_the_delivery_task_retries_failed_urls_as_new_messages_and_gives_up_at_the_ceiling(
    monkeypatch: Any, runtime: Any
) -> None:
    import pytest
    from celery.exceptions import Retry

    from tasks import metrics as metrics_tasks

    policy = AlertPolicy(
        webhooks=["https://hooks.example/ok", "https://hooks.example/busy"], webhook_max_attempts=2
    )

    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(200 if request.url.path == "/ok" else 503)

    settings = runtime.settings
    monkeypatch.setattr(
        runtime,
        "settings",
        settings.model_copy(
            update={"policy": settings.policy.model_copy(update={"alerts": policy})}
        ),
    )
    monkeypatch.setattr(metrics_tasks, "load_alerts", lambda sessions, ids: [alert(1)])
    webhooks = httpx.Client(transport=httpx.MockTransport(handler))
    monkeypatch.setattr(type(runtime), "webhooks", property(lambda _: webhooks))
    retried: list[dict[str, Any]] = []

    def fake_retry(**kw: Any) -> Retry:
        retried.append(kw)
        return Retry("again")

    monkeypatch.setattr(metrics_tasks.deliver_alerts, "retry", fake_retry)
    with pytest.raises(Retry):
        metrics_tasks.deliver_alerts.run(["id1"])
    assert calls == ["/ok", "/busy"]
    assert retried[0]["kwargs"] == {
        "alert_ids": ["id1"],
        "urls": ["https://hooks.example/busy"],
        "attempt": 2,
    }
    assert retried[0]["countdown"] == policy.webhook_retry_s
    # The last attempt: only the failed URL again, then it is given up (and logged), not retried.
    assert (
        metrics_tasks.deliver_alerts.run(["id1"], urls=["https://hooks.example/busy"], attempt=2)
        == 1
    )
    assert calls == ["/ok", "/busy", "/busy"] and len(retried) == 1
