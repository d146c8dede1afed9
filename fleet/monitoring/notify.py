"""Alert notices to webhooks: Slack-compatible JSON over httpx, bounded retries.

Each alert goes to every URL in ``alerts.webhooks`` and to the URLs of its
audience in ``alerts.routes`` (page, oncall, finops, info). A URL gets one
message per delivery, listing its alerts; a URL that fails transiently (a
timeout, 429 or 5xx) is tried again by the caller up to
``webhook_max_attempts``, one that answers another 4xx is dropped and logged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import httpx

from config.policy import AlertPolicy

log = logging.getLogger(__name__)

MAX_LISTED = 20
_COLOURS = {"emergency": "#7b0000", "critical": "#d00000", "warning": "#f2a900", "info": "#2f80ed"}
_RESOLVED_COLOUR = "#2eb67d"


def urls_for(policy: AlertPolicy, alert: dict[str, Any]) -> list[str]:
    urls = list(policy.webhooks)
    for url in policy.routes.get(alert["audience"], []):
        if url not in urls:
            urls.append(url)
    return urls


def slack_payload(alerts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``text`` for any webhook that reads only that, ``attachments`` for Slack's richer view."""
    opened = [a for a in alerts if a["state"] == "open"]
    resolved = len(alerts) - len(opened)
    parts = []
    if opened:
        worst = max(
            opened, key=lambda a: ("info", "warning", "critical", "emergency").index(a["severity"])
        )
        parts.append(
            f"{len(opened)} alert{'s' * (len(opened) != 1)} fired (worst: {worst['severity']})"
        )
    if resolved:
        parts.append(f"{resolved} resolved")
    lines = [f"• [{a['severity'].upper()}] {a['message']}" for a in alerts[:MAX_LISTED]]
    if len(alerts) > MAX_LISTED:
        lines.append(f"… and {len(alerts) - MAX_LISTED} more (`fleet alerts`)")
    attachments = [
        {
            "color": _COLOURS.get(a["severity"], "#999999")
            if a["state"] == "open"
            else _RESOLVED_COLOUR,
            "title": f"{a['rule']} — {a['subject']}"
            + (" (resolved)" if a["state"] != "open" else ""),
            "text": a["message"],
            "fields": [
                {"title": "severity", "value": a["severity"], "short": True},
                {"title": "audience", "value": a["audience"], "short": True},
                {"title": "value", "value": a["value"], "short": True},
                {"title": "threshold", "value": a["threshold"] or "-", "short": True},
            ],
            "footer": f"alert {a['alert_id']}",
        }
        for a in alerts[:MAX_LISTED]
    ]
    return {
        "text": "Fleet Commander: " + ", ".join(parts) + "\n" + "\n".join(lines),
        "attachments": attachments,
    }


def plan(
    policy: AlertPolicy, alerts: Sequence[dict[str, Any]], only: Sequence[str] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """URL → the alerts it should hear about (``only``: just these URLs, for a retry)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for alert in alerts:
        for url in urls_for(policy, alert):
            if only is None or url in only:
                out.setdefault(url, []).append(alert)
    return out


def deliver(
    policy: AlertPolicy,
    alerts: Sequence[dict[str, Any]],
    http: httpx.Client,
    only: Sequence[str] | None = None,
) -> list[str]:
    """Post each URL its message once; return the URLs worth trying again."""
    retry: list[str] = []
    for url, listed in plan(policy, alerts, only).items():
        try:
            response = http.post(url, json=slack_payload(listed), timeout=policy.webhook_timeout_s)
        except httpx.TransportError as exc:
            log.warning("webhook %s unreachable: %s", _host(url), exc)
            retry.append(url)
            continue
        if response.status_code == 429 or response.status_code >= 500:
            log.warning("webhook %s answered %d; will retry", _host(url), response.status_code)
            retry.append(url)
        elif response.status_code >= 400:
            log.error(
                "webhook %s refused the notice (%d); dropped", _host(url), response.status_code
            )
    return retry


def _host(url: str) -> str:
    # Webhook URLs carry their secret in the path: log only where they point.
    try:
        return httpx.URL(url).host or "?"
    except httpx.InvalidURL:
        return "?"


__all__ = ["deliver", "plan", "slack_payload", "urls_for"]
