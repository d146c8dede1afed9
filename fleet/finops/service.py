"""The review and the economics put together from their sources, and the reviews kept.

Reviews are kept as files (``<report_dir>/finops/<fleet>-<week>.json`` and ``.html``),
beside the compliance reports: a review is a document for people, written once a week
and never updated, so a table would add a migration and nothing the files lack; the
JSON is what the API and the console read back.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import redis
from sqlalchemy.orm import Session, sessionmaker

from config.policy import Policy
from fleet.clock import Clock
from fleet.finops import render
from fleet.finops.rates import FinanceSource
from fleet.finops.review import ReviewError, build_review, parse_week, previous_week
from fleet.monitoring.sweep import monitoring_overhead

_FLEET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class FinopsDeps:
    sessions: sessionmaker[Session]
    policy: Policy
    finance: FinanceSource
    redis: redis.Redis
    clock: Clock
    report_dir: Path


def check_fleet(fleet: str) -> str:
    if not isinstance(fleet, str) or not _FLEET.match(fleet):
        raise ReviewError(
            f"fleet: {fleet!r} is not a fleet name (letters, digits, '.', '_', '-'; "
            "at most 128 characters)"
        )
    return fleet


def overhead_per_hour(deps: FinopsDeps, fleet: str) -> Decimal | None:
    """The sweeps' measured cost at the gateway over the last hour; None when no sweep
    of this fleet was measured, or the hot state cannot be read (unknown, not $0)."""
    try:
        measured = monitoring_overhead(deps.redis, deps.clock.now().timestamp())
    except redis.RedisError:
        return None
    o = measured.get(fleet)
    return None if o is None else o.charged


def review(deps: FinopsDeps, fleet: str, week: str | None = None) -> dict[str, Any]:
    fleet = check_fleet(fleet)
    week = week or previous_week(deps.clock.now())
    parse_week(week)
    return build_review(
        deps.sessions,
        deps.policy,
        deps.finance,
        fleet=fleet,
        week=week,
        overhead_per_hour=overhead_per_hour(deps, fleet),
        generated_at=deps.clock.now(),
    )


def economics(deps: FinopsDeps, fleet: str, week: str | None = None) -> dict[str, Any]:
    """The economics from a week of the ledger (default: the last full week)."""
    r = review(deps, fleet, week)
    return {
        "fleet": r["fleet"],
        "week": r["week"],
        "currency": r["currency"],
        "exchange_rates": r["exchange_rates"],
        **r["economics"],
    }


def save(review_: dict[str, Any], report_dir: Path) -> tuple[Path, Path]:
    """Write the review's JSON and HTML (each atomically: a reader never sees half)."""
    directory = report_dir / "finops"
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"{review_['fleet']}-{review_['week']}"
    out = []
    for suffix, text in (
        (".json", json.dumps(review_, indent=2, sort_keys=True) + "\n"),
        (".html", render.review_html(review_)),
    ):
        path = directory / f"{stem}{suffix}"
        tmp = path.with_suffix(suffix + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
        out.append(path)
    return out[0], out[1]


def saved(report_dir: Path, fleet: str, week: str) -> dict[str, Any] | None:
    check_fleet(fleet)
    parse_week(week)
    path = report_dir / "finops" / f"{fleet}-{week}.json"
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data
