"""The compliance report: per article (9, 11, 12, 13, 14, 15), evidence and findings.

The GreenHelix gateway keeps no audit trail and offers no compliance report, so
every figure comes from our own records: the audit log (coverage, integrity,
retention, mirroring), approval requests (decisions and their latency,
reviews), the agents table and the policy in force.
"""

from __future__ import annotations

import hashlib
import html
import re
import statistics
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import func, or_, select

from config.policy import Policy, Risk
from config.settings import Settings
from fleet.approvals.models import RequestStatus
from fleet.approvals.service import Approvals, RequestView
from fleet.audit.events import format_time
from fleet.audit.log import AuditLog, read_anchor
from fleet.audit.models import AuditArchive, AuditEntry, AuditMirrorReceipt
from fleet.audit.verify import VerifyReport
from fleet.storage.records import Agent

ARTICLES: dict[int, str] = {
    9: "Risk management system",
    11: "Technical documentation",
    12: "Record-keeping",
    13: "Transparency and provision of information",
    14: "Human oversight",
    15: "Accuracy, robustness and cybersecurity",
}

# Said once, at the top of the report, so no reader looks for the gateway's view.
EVIDENCE_SOURCE = (
    "The GreenHelix gateway offers no compliance report; all evidence is Fleet Commander's own "
    "(its audit log, approval requests, agents table and policy)."
)

_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
_DAYS = re.compile(r"^(\d{1,4})d$")
# Approval bookkeeping entries, as opposed to the actions they govern.
_APPROVAL_ACTIONS = frozenset(
    {
        "approval_requested",
        "approval_review_queued",
        "approval_vote",
        "approval_vote_refused",
        "approval_granted",
        "approval_denied",
        "approval_expired",
        "approval_executed",
        "approval_reviewed",
    }
)


@dataclass(frozen=True)
class Period:
    label: str  # as given: "2026-05" or "30d"
    start: datetime
    end: datetime


def parse_period(text: str, now: datetime) -> Period:
    """A calendar month ("2026-05") or the days up to now ("30d")."""
    text = text.strip()
    month = _MONTH.match(text)
    if month:
        year, mon = int(month.group(1)), int(month.group(2))
        if not 1 <= mon <= 12:
            raise ValueError(f"period {text!r}: no month {mon}")
        start = datetime(year, mon, 1, tzinfo=UTC)
        end = datetime(year + mon // 12, mon % 12 + 1, 1, tzinfo=UTC)
        return Period(text, start, end)
    days = _DAYS.match(text)
    if days:
        return Period(text, now - timedelta(days=int(days.group(1))), now)
    raise ValueError(f"period {text!r}: expected a month like 2026-05 or a number of days like 30d")


def previous_month(now: datetime) -> str:
    first = now.replace(day=1)
    last_month = first - timedelta(days=1)
    return f"{last_month.year:04d}-{last_month.month:02d}"


def _seconds(values: list[float]) -> dict[str, str | None]:
    """Latency figures as decimal strings (the report, like the log, carries no floats)."""
    if not values:
        return {"count": "0", "median_s": None, "p95_s": None, "max_s": None}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return {
        "count": str(len(values)),
        "median_s": f"{statistics.median(ordered):.1f}",
        "p95_s": f"{p95:.1f}",
        "max_s": f"{ordered[-1]:.1f}",
    }


class _Gather:
    """Everything the report needs from our own records, for one fleet and period."""

    def __init__(self, log: AuditLog, approvals: Approvals, fleet: str, period: Period) -> None:
        self.log, self.approvals, self.fleet, self.period = log, approvals, fleet, period

    def agents(self) -> list[tuple[str, str, str, str, list[str]]]:
        with self.log.engine.connect() as conn:
            return [
                (r.agent_id, r.status, r.tier, r.id_prefix, list(r.capabilities or []))
                for r in conn.execute(
                    select(
                        Agent.agent_id,
                        Agent.status,
                        Agent.tier,
                        Agent.id_prefix,
                        Agent.capabilities,
                    ).where(Agent.fleet == self.fleet)
                )
            ]

    def entries(self) -> list[tuple[str, str, str, str, str]]:
        """(subject, action, article, approval, body) of the fleet's entries in the period."""
        agent_ids = select(Agent.agent_id).where(Agent.fleet == self.fleet).scalar_subquery()
        with self.log.engine.connect() as conn:
            return [
                tuple(r)  # type: ignore[misc]
                for r in conn.execute(
                    select(
                        AuditEntry.subject,
                        AuditEntry.action,
                        AuditEntry.article,
                        AuditEntry.approval,
                        AuditEntry.body,
                    ).where(
                        AuditEntry.chain == self.log.chain,
                        AuditEntry.time >= format_time(self.period.start),
                        AuditEntry.time < format_time(self.period.end),
                        or_(
                            AuditEntry.fleet == self.fleet,
                            AuditEntry.subject == f"fleet:{self.fleet}",
                            AuditEntry.subject.in_(agent_ids),
                        ),
                    )
                )
            ]

    def retention(self) -> dict[str, Any]:
        with self.log.engine.connect() as conn:
            oldest = conn.execute(
                select(func.min(AuditEntry.time)).where(AuditEntry.chain == self.log.chain)
            ).scalar()
            archives = conn.execute(
                select(func.count(), func.coalesce(func.sum(AuditArchive.entries), 0)).where(
                    AuditArchive.chain == self.log.chain
                )
            ).one()
            anchor = read_anchor(conn, self.log.chain)
            receipts = dict(
                conn.execute(
                    select(AuditMirrorReceipt.status, func.count())
                    .where(AuditMirrorReceipt.chain == self.log.chain)
                    .group_by(AuditMirrorReceipt.status)
                ).all()
            )
        return {
            "oldest_retained_entry": oldest,
            "archives": int(archives[0]),
            "archived_entries": int(archives[1]),
            "archived_up_to_seq": anchor.seq,
            "mirror": {k: int(v) for k, v in receipts.items()},
        }


def _policy_digest(policy_file: Path) -> str | None:
    try:
        return hashlib.sha256(policy_file.read_bytes()).hexdigest()
    except OSError:
        return None


def build_report(
    *,
    log: AuditLog,
    approvals: Approvals,
    policy: Policy,
    policy_file: Path,
    fleet: str,
    period: Period,
    integrity: VerifyReport,
    mirror_pending: int,
) -> dict[str, Any]:
    """The report as plain JSON data."""
    now = log.clock.now()
    gather = _Gather(log, approvals, fleet, period)
    agents = gather.agents()
    entries = gather.entries()
    requests = approvals.in_period(period.start, period.end, fleet=fleet)
    retention = gather.retention()

    by_article = Counter(e[2] for e in entries)
    by_action = Counter(e[1] for e in entries)
    audited = {e[0] for e in entries}
    unaudited = sorted(a[0] for a in agents if a[0] not in audited)

    # Art. 9: actions the matrix rates HIGH/CRITICAL that ran without an approval.
    gated = {a for a, r in policy.approvals.matrix.items() if r in (Risk.HIGH, Risk.CRITICAL)}
    ungated = [e for e in entries if e[1] in gated and e[3] != "approved"]

    # Art. 13: messages recorded as sent, and whether they carried the disclosure.
    messages = [orjson.loads(e[4])["entry"]["details"] for e in entries if e[1] == "send_message"]
    undisclosed = [m for m in messages if not m.get("ai_disclosure")]

    # Art. 14: requests and their decisions.
    def latency(r: RequestView) -> float | None:
        if r.decided_at is None or r.outcome == "expired":
            return None
        return (r.decided_at - r.created_at).total_seconds()

    statuses = Counter(r.status.value for r in requests)
    expired = [r for r in requests if r.outcome == "expired"]
    rejected = [r for r in requests if r.status is RequestStatus.DENIED and r.outcome != "expired"]
    reviews = [r for r in requests if r.status is RequestStatus.AUTO]
    overdue = [
        r
        for r in reviews
        if r.reviewed_at is None and r.review_due_at is not None and r.review_due_at < now
    ]
    late = [
        r for r in reviews if r.reviewed_at and r.review_due_at and r.reviewed_at > r.review_due_at
    ]
    approvers = sorted({v.approver for r in requests for v in r.votes})

    sections: dict[int, dict[str, Any]] = {
        9: {
            "evidence": {
                "risk_matrix": {
                    risk.value: sorted(a for a, r in policy.approvals.matrix.items() if r is risk)
                    for risk in Risk
                },
                "default_risk": policy.approvals.default_risk.value,
                "requests_by_risk": dict(Counter(r.risk.value for r in requests)),
                "risk_entries": by_article.get("Art. 9", 0),
            },
            "findings": [f"{len(ungated)} HIGH/CRITICAL actions recorded without an approval"]
            if ungated
            else [],
        },
        11: {
            "evidence": {
                "policy_file": str(policy_file),
                "policy_sha256": _policy_digest(policy_file),
                "agents": len(agents),
                "agents_by_tier": dict(Counter(a[2] for a in agents)),
                "agents_by_status": dict(Counter(a[1] for a in agents)),
                "sla_templates": sorted(policy.sla_templates),
            },
            "findings": (
                [f"{n} agents without declared capabilities"]
                if (n := sum(1 for a in agents if not a[4]))
                else []
            ),
        },
        12: {
            "evidence": {
                "entries_in_period": len(entries),
                "entries_by_article": dict(by_article),
                "actions": dict(by_action.most_common(30)),
                "agents_audited": len(agents) - len(unaudited),
                "chain": integrity.to_dict(),
                "retention_days": str(policy.retention.audit_days),
                **retention,
                "mirror_pending": mirror_pending,
            },
            "findings": [
                *(
                    [f"audit chain not intact: {integrity.problem.message}"]
                    if integrity.problem
                    else []
                ),
                *(
                    [f"{len(unaudited)} agents without an audit entry in the period"]
                    if unaudited
                    else []
                ),
                *(
                    [f"{retention['mirror']['refused']} entries refused by the gateway"]
                    if retention["mirror"].get("refused")
                    else []
                ),
            ],
        },
        13: {
            "evidence": {
                "messages_recorded": len(messages),
                "messages_with_ai_disclosure": len(messages) - len(undisclosed),
                "disclosure": policy.transparency.ai_disclosure,
            },
            "findings": [f"{len(undisclosed)} messages without an AI disclosure"]
            if undisclosed
            else [],
        },
        14: {
            "evidence": {
                "requests": len(requests),
                "by_status": dict(statuses),
                "approved": sum(
                    1
                    for r in requests
                    if r.status in (RequestStatus.APPROVED, RequestStatus.EXECUTED)
                ),
                "rejected": len(rejected),
                "expired": len(expired),
                "decision_latency": _seconds(
                    [x for r in requests if (x := latency(r)) is not None]
                ),
                "distinct_approvers": approvers,
                "quorum": {k.value: v for k, v in policy.approvals.quorum.items()},
                "reviews": {
                    "queued": len(reviews),
                    "done": sum(1 for r in reviews if r.reviewed_at),
                    "late": len(late),
                    "overdue": len(overdue),
                },
                "freezes": by_action.get("freeze_agent", 0),
                "releases": by_action.get("release_agent", 0),
            },
            "findings": [
                *([f"{len(expired)} requests expired without a decision"] if expired else []),
                *([f"{len(overdue)} post-hoc reviews overdue"] if overdue else []),
                *([f"{len(late)} post-hoc reviews done late"] if late else []),
            ],
        },
        15: {
            "evidence": {
                "accuracy_entries": by_article.get("Art. 15", 0),
                "monitoring_actions": {
                    a: n
                    for a, n in by_action.items()
                    if any(
                        k in a
                        for k in ("health", "violation", "breach", "remediat", "restart", "escalat")
                    )
                },
            },
            "findings": [],
        },
    }

    articles = {
        str(number): {
            "article": number,
            "title": title,
            "status": "findings" if sections[number]["findings"] else "compliant",
            **sections[number],
        }
        for number, title in ARTICLES.items()
    }
    return {
        "fleet": fleet,
        "period": period.label,
        "period_start": format_time(period.start),
        "period_end": format_time(period.end),
        "generated_at": format_time(now),
        "evidence_source": EVIDENCE_SOURCE,
        "compliant": all(a["status"] == "compliant" for a in articles.values()),
        "articles": articles,
    }


def render_html(report: Mapping[str, Any]) -> str:
    """A plain page a person can read; every value escaped."""
    e = html.escape

    def block(value: Any) -> str:
        text = orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()
        return f"<pre>{e(text)}</pre>"

    rows = []
    for section in report["articles"].values():
        items = "".join(f"<li>{e(str(f))}</li>" for f in section["findings"]) or "<li>none</li>"
        rows.append(
            f"<section class='{e(section['status'])}'><h2>Art. {section['article']} — "
            f"{e(section['title'])}"
            f" <small>{e(section['status'])}</small></h2><h3>Findings</h3><ul>{items}</ul>"
            f"<details><summary>Evidence</summary>{block(section['evidence'])}</details></section>"
        )
    verdict = "compliant" if report["compliant"] else "findings to address"
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>Compliance report {e(report['fleet'])} {e(report['period'])}</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;"
        "padding:0 1rem}"
        "section{border-left:.4rem solid #2a2;padding:.2rem 1rem;margin:1rem 0}"
        "section.findings{border-color:#c60}pre{background:#f4f4f4;padding:.5rem;overflow:auto}</style></head><body>"
        f"<h1>EU AI Act compliance: fleet {e(report['fleet'])}, {e(report['period'])}</h1>"
        f"<p>{e(report['period_start'])} to {e(report['period_end'])}; generated "
        f"{e(report['generated_at'])}. "
        f"Overall: <strong>{e(verdict)}</strong>.</p>"
        f"<p>{e(report['evidence_source'])}</p>" + "".join(rows) + "</body></html>"
    )


def write_report(report: Mapping[str, Any], directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"compliance-{report['fleet']}-{report['period']}"
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", stem)
    json_path, html_path = directory / f"{stem}.json", directory / f"{stem}.html"
    json_path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    html_path.write_text(render_html(report), encoding="utf-8")
    return json_path, html_path


def fleets_of(engine: Any) -> list[str]:
    with engine.connect() as conn:
        return sorted(f for f in conn.execute(select(Agent.fleet).distinct()).scalars() if f)


def produce_report(
    settings: Settings,
    log: AuditLog,
    approvals: Approvals,
    fleet: str,
    period_text: str,
) -> tuple[dict[str, Any], Path, Path]:
    """Verify the chain, gather the evidence, write JSON and HTML."""
    from fleet.audit.mirror import Outbox
    from fleet.audit.verify import verify_log

    period = parse_period(period_text, log.clock.now())
    report = build_report(
        log=log,
        approvals=approvals,
        policy=settings.policy,
        policy_file=settings.policy_file,
        fleet=fleet,
        period=period,
        integrity=verify_log(log),
        mirror_pending=Outbox(log, owner="compliance-report").pending(),
    )
    json_path, html_path = write_report(report, log.files.report_dir)
    return report, json_path, html_path
