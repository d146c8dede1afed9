"""The weekly FinOps review and the fleet economics over a seeded week.

A week of spend ledger and work-task rows (a three-task tree shared by spans, a tree with
one cost not settled yet, single tasks, a ledger row without a task row, a refused task)
goes into a real database; rates and discounts come from the sandbox over HTTP, the
monitoring overhead from real Redis. Every figure is computed again here, from the
seeded amounts and the rate the sandbox gives, and compared with the review.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from config.policy import FinopsPolicy, load_policy
from fleet.budgets.models import SpendEntry
from fleet.clock import ManualClock
from fleet.finops import render, service
from fleet.finops.rates import GatewayFinance
from fleet.gateway import GatewayClient, GatewayConfig, StaticKeyRing
from fleet.monitoring.sweep import overhead_key
from fleet.storage.db import engine_for, migrate
from fleet.work.records import WorkTask, reservation_id
from tests.conftest import ROOT, SandboxProcess
from tests.support.databases import postgres_available, postgres_database, sqlite_database
from tests.support.fleet_rows import insert_agents, sessions_for

pytestmark = pytest.mark.integration

D = Decimal
Q6 = D("0.000001")
WEEK = "2026-W48"  # Monday 2026-11-23
MONDAY = datetime(2026, 11, 23, tzinfo=UTC)
NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)

R1, R2 = "research-0001-0a0a0a0a", "research-0002-0b0b0b0b"
W1, O1 = "writer-0001-0c0c0c0c", "ops-0001-0d0d0d0d"


def tid() -> str:
    return secrets.token_hex(16)


class Seeder:
    def __init__(self, sessions: Any, fleet: str) -> None:
        self.sessions = sessions
        self.fleet = fleet

    def task(
        self,
        agent: str | None,
        actual: str | None,
        *,
        when: datetime,
        model: str = "small",
        tokens: int = 20,
        parent: str | None = None,
        root: str | None = None,
        trace: str | None = None,
        ledger: bool = True,
        work: bool = True,
        state: str = "completed",
    ) -> str:
        task_id = tid()
        with self.sessions.begin() as s:
            if work:
                s.add(
                    WorkTask(
                        task_id=task_id,
                        idempotency_key=f"k-{task_id}",
                        type="job",
                        fleet=self.fleet,
                        capabilities=[],
                        estimated_tokens=tokens,
                        payer_kind="agent",
                        payer_id=agent or "nobody",
                        model=model,
                        model_reason="seeded",
                        state=state,
                        agent_id=agent,
                        # As the work plane writes them: one attempt, its reported cost
                        # beside the ledger's (the ledger, per attempt, is what counts).
                        attempts=[{"agent_id": agent, "state": state}] if agent else [],
                        actual=actual if ledger else None,
                        trace_id=trace,
                        parent_task_id=parent,
                        root_task_id=root,
                        created_at=when - timedelta(seconds=5),
                        finished_at=when,
                    )
                )
            if ledger and agent and actual is not None:
                s.add(
                    SpendEntry(
                        # The work plane books an attempt under its reservation id.
                        task_id=reservation_id(task_id, 1) if work else task_id,
                        agent_id=agent,
                        fleet=self.fleet,
                        model=model,
                        estimate=actual,
                        actual=actual,
                        currency="USD",
                        usage={},
                        trace_id=trace,
                        reserved_at=when - timedelta(seconds=5),
                        settled_at=when,
                    )
                )
        return task_id


@contextmanager
def database(kind: str, tmp_path: Path) -> Iterator[str]:
    if kind == "sqlite":
        with sqlite_database(tmp_path) as url:
            yield url
        return
    if not postgres_available():
        pytest.skip("no PostgreSQL server reachable on 127.0.0.1:5432")
    with postgres_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def world(
    request: pytest.FixtureRequest, tmp_path: Path, sandbox: SandboxProcess
) -> Iterator[dict[str, Any]]:
    fleet = f"fin-{secrets.token_hex(4)}"
    base = load_policy(ROOT / "config" / "defaults" / "policy.yaml")
    policy = base.model_copy(
        update={
            "finops": FinopsPolicy(
                currency="EUR",
                attribution={"research": "proportional"},
                value_per_task={"writer": D("0.50")},
                weekly_budget={"research": D("1.00")},
                calls_per_task=2.0,
            )
        }
    )
    r = redis.Redis.from_url("redis://127.0.0.1:6379/0", decode_responses=True)
    minute = overhead_key(int(NOW.timestamp() // 60))
    r.hset(minute, mapping={f"{fleet}:calls": 120, f"{fleet}:charged": "0.12"})
    r.expire(minute, 7200)
    gateway = GatewayClient(
        GatewayConfig(
            url=sandbox.gateway_url,
            admin_key=sandbox.admin_key,
            timeout_s=5.0,
            connect_timeout_s=2.0,
            max_attempts=2,
            backoff_initial_s=0.0,
            backoff_max_s=0.0,
            retry_after_max_s=1.0,
            breaker_failure_threshold=5,
            breaker_reset_s=30.0,
        ),
        StaticKeyRing(sandbox.admin_key),
    )
    with database(request.param, tmp_path) as url:
        migrate(engine_for(url))
        sessions = sessions_for(url)
        insert_agents(sessions, [R1, R2, W1, O1], fleet=fleet, policy=policy)
        deps = service.FinopsDeps(
            sessions=sessions,
            policy=policy,
            finance=GatewayFinance(gateway.run),
            redis=r,
            clock=ManualClock(NOW),
            report_dir=tmp_path / "reports",
        )
        try:
            yield {
                "fleet": fleet,
                "policy": policy,
                "deps": deps,
                "seed": Seeder(sessions, fleet),
                "sandbox": sandbox,
            }
        finally:
            gateway.close()
            sessions.kw["bind"].dispose()
            r.hdel(minute, f"{fleet}:calls", f"{fleet}:charged")


def sandbox_rate(sandbox: SandboxProcess, src: str, dst: str) -> Decimal:
    answer = httpx.get(
        f"{sandbox.gateway_url}/v1/billing/exchange-rates",
        params={"from_currency": src, "to_currency": dst},
        headers={"Authorization": f"Bearer {sandbox.admin_key}"},
        timeout=5,
    )
    answer.raise_for_status()
    return D(str(answer.json()["rate"]))


def sandbox_discount(sandbox: SandboxProcess, agent: str, qty: int) -> Decimal:
    answer = httpx.get(
        f"{sandbox.gateway_url}/v1/billing/discounts",
        params={"agent_id": agent, "tool_name": "best_match", "quantity": qty},
        headers={"Authorization": f"Bearer {sandbox.admin_key}"},
        timeout=5,
    )
    answer.raise_for_status()
    return D(str(answer.json()["discount_pct"]))


def amount(a: dict[str, Any]) -> Decimal:
    assert a["unknown"] is False, a
    return D(a["amount"])


def test_review_and_economics_match_figures_computed_here(world: dict[str, Any]) -> None:
    seed: Seeder = world["seed"]
    at = MONDAY + timedelta(days=2, hours=10)
    # Tree 1 (research, proportional): research-0001 -> writer, research-0002.
    root1 = seed.task(R1, "1.00", when=at, model="frontier", tokens=500, trace="a" * 32)
    seed.task(W1, "0.40", when=at, tokens=50, parent=root1, root=root1, trace="a" * 32)
    seed.task(
        R2, "0.60", when=at, model="mid", tokens=200, parent=root1, root=root1, trace="a" * 32
    )
    # Tree 2 (ops, caller-pays): its sub-task ran, its spend is not settled yet.
    root3 = seed.task(O1, "0.25", when=at, model="mid", tokens=300, trace="b" * 32)
    pending = seed.task(W1, None, when=at, tokens=30, parent=root3, root=root3, trace="b" * 32)
    # The writer's own tasks: four small ones, one off the routing policy, one ledger-only.
    singles = [seed.task(W1, "0.10", when=at + timedelta(minutes=i)) for i in range(4)]
    off = seed.task(W1, "0.50", when=at, model="frontier", tokens=20)
    ledger_only = seed.task(W1, "0.20", when=at, work=False)
    seed.task(None, None, when=at, tokens=10, state="refused")
    # Earlier weeks (the trend) and a row outside the week.
    seed.task(W1, "0.10", when=MONDAY - timedelta(days=10))
    seed.task(W1, "0.10", when=MONDAY - timedelta(days=10))
    seed.task(W1, "0.30", when=MONDAY - timedelta(days=3))
    seed.task(W1, "9.00", when=MONDAY + timedelta(days=7, seconds=1))

    review = service.review(world["deps"], world["fleet"], WEEK)

    sandbox: SandboxProcess = world["sandbox"]
    rate = sandbox_rate(sandbox, "USD", "EUR")

    def eur(x: str | Decimal) -> Decimal:
        return (D(x) * rate).quantize(Q6)

    assert review["currency"] == "EUR"
    assert D(review["exchange_rates"]["USD->EUR"]) == rate

    # Budget vs actual per segment.
    tree1 = eur("1.00") + eur("0.40") + eur("0.60")
    writer_share = (tree1 / 3).quantize(Q6, rounding=ROUND_DOWN)
    research = tree1 - writer_share  # two of three spans, and the rounding's remainder
    writer = writer_share + 4 * eur("0.10") + eur("0.50") + eur("0.20")
    segs = {s["segment"]: s for s in review["segments"]}
    assert set(segs) == {"research", "writer", "ops"}
    assert segs["research"]["attribution"] == "proportional"
    assert amount(segs["research"]["actual"]) == research
    assert amount(segs["writer"]["actual"]) == writer
    assert segs["ops"]["actual"] == {"amount": None, "unknown": True}
    assert segs["ops"]["ratio"] is None and segs["ops"]["flagged"] is False
    assert amount(segs["research"]["budget"]) == eur("1.00")
    shared = (eur(D("2000.00") * 7) / 3).quantize(Q6)
    assert amount(segs["writer"]["budget"]) == shared
    assert segs["research"]["flagged"] is True  # 133 % of its budget
    assert segs["writer"]["flagged"] is False
    assert review["flagged_segments"] == ["research"]
    assert (segs["research"]["tasks"], segs["writer"]["tasks"], segs["ops"]["tasks"]) == (2, 8, 1)

    # Cost per task and its trend (trend_weeks 4: W45 has no task).
    known = tree1 + eur("0.25") + 4 * eur("0.10") + eur("0.50") + eur("0.20")
    cpt = review["cost_per_task"]
    assert (cpt["tasks"], cpt["known_cost_tasks"], cpt["unknown_cost_tasks"]) == (11, 10, 1)
    assert amount(cpt["cost"]) == known
    assert amount(cpt["cost_per_task"]) == (known / 10).quantize(Q6)
    trend = {w["week"]: w for w in cpt["trend"]}
    assert list(trend) == ["2026-W45", "2026-W46", "2026-W47", WEEK]
    assert trend["2026-W45"]["cost_per_task"]["unknown"] is True  # no task, no figure
    assert amount(trend["2026-W46"]["cost_per_task"]) == eur("0.10")
    assert amount(trend["2026-W47"]["cost_per_task"]) == eur("0.30")

    # Model mix against the routing policy.
    mix = {m["model"]: m for m in review["model_mix"]["models"]}
    assert {k: v["tasks"] for k, v in mix.items()} == {"frontier": 2, "mid": 2, "small": 8}
    assert amount(mix["frontier"]["cost"]) == eur("1.00") + eur("0.50")
    assert review["model_mix"]["off_policy_tasks"] == 1
    assert review["model_mix"]["off_policy_examples"] == [off]

    # The most expensive task trees, with their traces; the unknown one apart.
    top = review["top_tasks"]
    assert [t["task_id"] for t in top[:3]] == [root1, off, ledger_only]
    assert top[0]["trace_id"] == "a" * 32 and amount(top[0]["cost"]) == tree1
    assert sorted(t["task_id"] for t in top[3:7]) == sorted(singles)
    (unknown_tree,) = review["unknown_cost_trees"]
    assert unknown_tree["task_id"] == root3 and unknown_tree["cost"]["unknown"] is True
    levels = {t["task_id"]: t for t in unknown_tree["tasks"]}
    assert levels[pending]["cost"]["unknown"] is True
    assert levels[pending]["rolled_up"]["unknown"] is True
    assert levels[root3]["rolled_up"]["unknown"] is True
    assert amount(levels[root3]["cost"]) == eur("0.25")

    # Volume discounts: the gateway's tiers against this week's volume.
    disc = review["volume_discounts"]
    assert disc["weekly_calls"] == 10 * 2
    assert disc["applied_by_gateway"] is False and amount(disc["captured"]) == 0
    assert [D(t["discount_pct"]) for t in disc["tiers"]] == [
        sandbox_discount(sandbox, R1, q) for q in (100, 1000, 10000, 100000)
    ]
    pct_total = sandbox_discount(sandbox, R1, 20)
    assert D(disc["consolidated_discount_pct"]) == pct_total
    spend_by_agent = {
        R1: eur("1.00"),
        R2: eur("0.60"),
        O1: eur("0.25"),
        W1: eur("0.40") + 4 * eur("0.10") + eur("0.50") + eur("0.20"),
    }
    available = sum(
        (
            (spend_by_agent[a] * sandbox_discount(sandbox, a, n * 2) / 100).quantize(Q6)
            for a, n in ((R1, 1), (R2, 1), (O1, 1), (W1, 7))
        ),
        D(0),
    )
    assert amount(disc["available"]) == available
    consolidated = (sum(spend_by_agent.values(), D(0)) * pct_total / 100).quantize(Q6)
    assert amount(disc["saving_by_consolidating"]) == consolidated - available

    # Fleet economics (operations §3), per segment.
    econ = {s["segment"]: s for s in review["economics"]["segments"]}
    assert amount(review["economics"]["monitoring_overhead_per_hour"]) == eur("0.12")
    monitoring_month = (eur("0.12") * 24 * 30).quantize(Q6)
    w = econ["writer"]
    tasks_per_day = D(8) / 7
    cost_per_call = (writer / (8 * 2)).quantize(Q6)
    usage = (tasks_per_day * 2 * cost_per_call * 30).quantize(Q6)
    provisioning = eur("29.00")  # one starter agent
    monitoring = (monitoring_month * 1 / 4).quantize(Q6)
    monthly = (usage + provisioning + monitoring).quantize(Q6)
    value = (tasks_per_day * 30 * eur("0.50")).quantize(Q6)
    assert w["inputs"]["agents"] == 1
    assert amount(w["inputs"]["cost_per_call"]) == cost_per_call
    assert amount(w["inputs"]["monitoring_overhead_per_month"]) == monitoring
    assert amount(w["usage_per_month"]) == usage
    assert amount(w["monthly_cost"]) == monthly
    assert amount(w["monthly_value"]) == value
    assert D(w["roi"]) == ((value - monthly) / monthly).quantize(D("0.0001"))
    margin = eur("0.50") - cost_per_call * 2
    assert D(w["break_even_tasks_per_day"]) == (
        (provisioning + monitoring) / (30 * margin)
    ).quantize(D("0.01"))
    rs = econ["research"]
    assert rs["inputs"]["agents"] == 2
    assert amount(rs["inputs"]["provisioning_per_month"]) == 2 * eur("29.00")
    assert rs["break_even_tasks_per_day"] is None  # value_per_task 0: never breaks even
    assert econ["ops"]["monthly_cost"]["unknown"] is True  # its week's cost is not known

    # The page shows the same, and "unknown" where a cost is not known.
    page = render.review_html(review)
    assert "Budget vs actual per segment" in page and 'class="flagged"' in page
    assert "unknown" in page and root1 in page and "a" * 32 in page

    # Kept, and read back.
    json_path, html_path = service.save(review, world["deps"].report_dir)
    assert service.saved(world["deps"].report_dir, world["fleet"], WEEK) == review
    assert html_path.read_text(encoding="utf-8") == page


def test_the_week_under_way_counts_its_tasks_over_the_days_it_has_had(
    world: dict[str, Any],
) -> None:
    seed: Seeder = world["seed"]
    this_monday = MONDAY + timedelta(days=7)  # 2026-W49; NOW is its Tuesday 09:00
    for i in range(3):
        seed.task(W1, "0.10", when=this_monday + timedelta(hours=10, minutes=i))
    review = service.review(world["deps"], world["fleet"], "2026-W49")
    days = D(33) / D(24)  # Monday 00:00 to Tuesday 09:00
    assert review["period"]["complete"] is False
    assert review["period"]["days_observed"] == "1.38"
    writer = {s["segment"]: s for s in review["economics"]["segments"]}["writer"]
    assert D(writer["inputs"]["tasks_per_day"]) == (D(3) / days).quantize(Q6)
    assert "under way: 1.38 days so far" in render.review_html(review)
    # A week that has ended is seven days, whatever the clock says since.
    past = service.review(world["deps"], world["fleet"], WEEK)
    assert past["period"] == {**past["period"], "complete": True, "days_observed": "7.00"}


def test_a_bad_week_or_fleet_is_refused_by_name(world: dict[str, Any]) -> None:
    from fleet.finops.review import ReviewError

    with pytest.raises(ReviewError, match="week"):
        service.review(world["deps"], world["fleet"], "2026-48")
    with pytest.raises(ReviewError, match="does not exist"):
        service.review(world["deps"], world["fleet"], "2026-W54")
    with pytest.raises(ReviewError, match="fleet"):
        service.review(world["deps"], "../etc", WEEK)
