"""Console pages in-process: the view models, the agents list's paging and filters, the
drill-down and its levers behind the approval rules, the SLA board, the live stream."""

from __future__ import annotations

import re
import threading
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from html import unescape
from typing import Any

import fakeredis
import orjson
import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from fleet.budgets import control as budget_control
from fleet.identity import Role
from fleet.monitoring import sweep
from fleet.monitoring.snapshot import Health, Snapshot, write_snapshots
from fleet.storage import wallets
from fleet.storage.db import write_session
from fleet.storage.records import Agent
from tests.conftest import RecordingRuntime
from tests.support.fleet_rows import insert_agents
from tests.support.identities import PASSWORD
from tests.unit.test_console_session import sign_in
from web.console import charts
from web.console.pages import agents as agents_page
from web.console.pages.overview import HistoryRow, UnknownFleet, hourly, overview_model

CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')
HEALTH_VIEW = {
    "fleet": "demo",
    "agents": 120,
    "healthy": 100,
    "degraded": 12,
    "critical": 5,
    "unknown": 3,
    "latency_p99": 850.0,
    "error_rate": 0.025,
    "sla_compliance": 0.96,
    "burn_rate_per_hour": "12.50",
}


def _ids(n: int, prefix: str = "support") -> list[str]:
    return [f"{prefix}-{i:04d}-{i:08x}" for i in range(n)]


@pytest.fixture
def short_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    """Live streams end after 5 s here (read by the runtime fixture listed after it)."""
    monkeypatch.setenv("FLEET_CONSOLE__LIVE_MAX_S", "5")


@pytest.fixture
def world(
    short_streams: None, runtime: RecordingRuntime
) -> Iterator[tuple[TestClient, RecordingRuntime]]:
    from web.app import create_api

    r = fakeredis.FakeRedis(decode_responses=True)
    runtime.redis = r
    policy = runtime.settings.policy
    support, research = _ids(120), _ids(7, "research")
    insert_agents(runtime.sessions, support, fleet="demo", policy=policy)
    insert_agents(runtime.sessions, research, fleet="demo", policy=policy, status="paused")
    snaps = [
        Snapshot(
            a,
            1.0,
            Health.CRITICAL if i % 40 == 0 else Health.HEALTHY,
            latency_p99=900.0 + i,
            error_rate=0.01,
            balance=Decimal("40.00"),
            fleet="demo",
        )
        for i, a in enumerate(support)
    ]
    write_snapshots(r, snaps)
    r.hset(
        sweep.HEALTH_KEY,
        mapping={"demo": orjson.dumps(HEALTH_VIEW), "*": orjson.dumps(HEALTH_VIEW)},
    )
    r.hset(sweep.HEALTH_META_KEY, mapping={"sweep_id": "s1", "finished_at": "1.0"})
    runtime.identities.add_user("vera", Role.VIEWER, PASSWORD)
    runtime.identities.add_user("otto", Role.OPERATOR, PASSWORD)
    with TestClient(create_api(lambda: runtime), base_url="http://127.0.0.1") as client:
        yield client, runtime


# --- view models ----------------------------------------------------------------------


def test_the_overview_model_shows_the_fleet_view_and_refuses_an_unknown_fleet() -> None:
    now = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
    rows = [
        HistoryRow(now - timedelta(hours=2), 120, 2, 700.0, 0.01, Decimal("10")),
        HistoryRow(now - timedelta(hours=2, minutes=10), 120, 7, 1900.0, 0.05, Decimal("14")),
        HistoryRow(now - timedelta(minutes=5), 120, 5, 850.0, 0.02, Decimal("12.5")),
    ]
    o = overview_model("demo", {"demo": HEALTH_VIEW}, {"sweep_id": "s9"}, [], rows, now, 24)
    assert o.counts == {"healthy": 100, "degraded": 12, "critical": 5, "unknown": 3}
    assert o.health["shown"] == {
        "p99": "850 ms",
        "error_rate": "2.5 %",
        "sla": "96.0 %",
        "burn": "$12.50/h",
    }
    assert "peak 1,900 ms" in str(o.charts["p99"]) and "peak 7" in str(o.charts["critical"])
    assert "no data yet" in str(o.charts["volume"]) and "volume" not in o.peaks
    hour = now.replace(minute=0)
    volume = [(hour - timedelta(hours=2), 300), (hour - timedelta(hours=1), None), (hour, 1200)]
    o = overview_model("demo", {"demo": HEALTH_VIEW}, {}, [], rows, now, 3, volume=volume)
    assert "peak 1,200" in str(o.charts["volume"])
    assert o.peaks == {
        "volume": "1,200 calls in the hour from 12:00 UTC",
        "volume_total": "1,500 calls in the last 3 h",
    }
    with pytest.raises(UnknownFleet, match="no fleet 'nope'.*known: demo"):
        overview_model("nope", {"demo": HEALTH_VIEW}, {}, [], [], now, 24)


def test_history_is_folded_per_hour_worst_of_the_hour() -> None:
    now = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
    rows = [
        HistoryRow(now.replace(minute=1), 10, 1, 100.0, 0.1, Decimal("2")),
        HistoryRow(now.replace(minute=20), 10, 3, 300.0, 0.05, Decimal("4")),
        HistoryRow(now - timedelta(hours=30), 10, 9, 999.0, 0.9, Decimal("9")),  # too old
    ]
    buckets = hourly(rows, now, 3)
    assert [b["crit"] for b in buckets] == [None, None, 3]
    assert buckets[-1]["p99"] == 300.0 and buckets[-1]["err"] == 0.1 and buckets[-1]["burn"] == 3.0


def test_charts_name_their_peak_and_escape_labels() -> None:
    svg = str(
        charts.line_chart(
            "<b>x</b>", [charts.Point("a", 1), charts.Point("b", None), charts.Point("c&", 5)]
        )
    )
    assert "<b>" not in svg and "&lt;b&gt;" in svg and "peak 5 at c&amp;" in svg
    assert 'role="img"' in svg
    assert "no data yet" in str(charts.line_chart("t", [charts.Point("a", None)]))
    bar = str(charts.health_bar({"healthy": 3, "critical": 1}))
    assert "3 healthy, 0 degraded, 1 critical, 0 unknown" in bar


# --- pages ----------------------------------------------------------------------------


def test_the_overview_page_shows_counts_and_the_live_stream_sends_a_new_sweep(
    world: tuple[TestClient, RecordingRuntime],
) -> None:
    client, rt = world
    sign_in(client, "vera")
    html = client.get("/console/").text
    assert 'data-testid="count-critical">5<' in html and "$12.50/h" in html
    assert "Live · as of 00:00:01 UTC" in html  # the view's time, not its id (finished_at 1.0)
    flower = rt.settings.flower
    assert f'<a href="http://{flower.host}:{flower.port}/">Flower</a>' in html
    assert '<a href="/openapi.json">OpenAPI document</a>' in html
    assert '<a href="/docs">API docs</a>' in html
    assert rt.settings.console.live_max_s == 5.0
    changed = {**HEALTH_VIEW, "critical": 9}

    def next_sweep() -> None:
        rt.redis.hset(sweep.HEALTH_KEY, "demo", orjson.dumps(changed))
        rt.redis.hset(sweep.HEALTH_META_KEY, mapping={"sweep_id": "s2", "finished_at": "2.0"})

    # The test client hands over the body once the stream ends: the sweep lands meanwhile.
    threading.Timer(1.0, next_sweep).start()
    with client.stream("GET", "/console/live/overview?fleet=demo") as stream:
        body = b""
        for chunk in stream.iter_bytes():
            body += chunk
            if b"event: fragment" in body and body.endswith(b"\n\n"):
                break
    event = body.split(b"event: fragment\ndata: ", 1)[1].split(b"\n\n", 1)[0]
    data: dict[str, Any] = orjson.loads(event)
    assert data["sweep_id"] == "s2"
    assert 'data-testid="count-critical">9<' in data["fragments"][0]["html"]


def test_the_overview_shows_one_segment_of_a_fleet(
    world: tuple[TestClient, RecordingRuntime],
) -> None:
    client, rt = world
    research = {**HEALTH_VIEW, "fleet": "demo/research", "agents": 7, "healthy": 4, "critical": 3}
    rt.redis.hset(sweep.SEGMENTS_KEY, "demo/research", orjson.dumps(research))
    sign_in(client, "vera")
    everything = client.get("/console/").text
    assert '<option value="demo/research">demo · research</option>' in everything
    html = unescape(client.get("/console/?fleet=demo/research").text)
    assert 'data-testid="count-critical">3<' in html and 'data-testid="agents-total">7<' in html
    assert "Segment <strong>research</strong> of fleet demo" in html
    assert "/console/agents?health=critical&fleet=demo&segment=research" in html
    listed = client.get("/console/agents?health=critical&fleet=demo&segment=research")
    assert listed.status_code == 200
    missing = client.get("/console/?fleet=demo/nowhere")
    assert missing.status_code == 404 and "no segment 'demo/nowhere'" in unescape(missing.text)
    assert client.get("/console/?fleet=demo/a/b").status_code == 422


def test_the_agents_list_pages_and_filters(
    world: tuple[TestClient, RecordingRuntime], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, _ = world
    sign_in(client, "vera")
    first = client.get("/console/agents?fleet=demo").text
    assert "127 agents · page 1 of 3" in first and first.count("<tr data-agent=") == 50
    assert 'href="/console/agents?fleet=demo&amp;page=2&amp;size=50"' in first
    last = client.get("/console/agents?fleet=demo&page=3").text
    assert last.count("<tr data-agent=") == 27
    paused = client.get("/console/agents?status=paused").text
    assert "7 agents" in paused and "research-0000" in paused
    critical = client.get("/console/agents?health=critical").text
    assert "3 agents" in critical and "support-0040-" in critical
    # Read in chunks: the matches of every chunk, in order; no snapshot counts as unknown.
    monkeypatch.setattr(agents_page, "HEALTH_CHUNK", 16)
    again = client.get("/console/agents?health=critical").text
    assert "3 agents" in again and "support-0080-" in again
    assert "7 agents" in client.get("/console/agents?health=unknown").text
    seg = client.get("/console/agents?segment=research&q=0003").text
    assert "1 agent ·" in seg
    bad = client.get("/console/agents?health=purple")
    assert bad.status_code == 400 and "health 'purple' is not one of" in unescape(bad.text)
    too_big = client.get("/console/agents?size=100000")
    assert too_big.status_code == 400 and "size 100000 is not between 1 and 500" in unescape(
        too_big.text
    )


def test_the_drill_down_offers_levers_only_to_a_role_that_may_use_them(
    world: tuple[TestClient, RecordingRuntime],
) -> None:
    client, rt = world
    agent = _ids(1, "research")[0]
    sign_in(client, "vera")
    viewer = client.get(f"/console/agents/{agent}").text
    assert "Agent " + agent in viewer and "may look, not act" in viewer
    assert f"/console/agents/{agent}/release" not in viewer
    csrf = CSRF.search(viewer)
    assert csrf is not None
    refused = client.post(
        f"/console/agents/{agent}/release", data={"csrf": csrf.group(1), "reason": "x"}
    )
    assert refused.status_code == 403 and "lacks approvals:request" in refused.text
    assert client.get("/console/agents/nobody-here").status_code == 404
    # Frozen or not as we last left the wallet: the gateway has no read of the flag.
    assert "not frozen by Fleet Commander (the gateway offers no read" in unescape(viewer)
    with write_session(rt.sessions) as s:
        row = s.get(Agent, agent)
        assert row is not None
        wallets.note_in(s, row, frozen=True, by="user:otto", at=datetime(2026, 12, 2, tzinfo=UTC))
    shown = unescape(client.get(f"/console/agents/{agent}").text)
    assert "yes — frozen by user:otto at 2026-12-02T00:00:00" in shown


def test_an_operator_requests_a_release_and_a_retirement_through_the_approval_rules(
    world: tuple[TestClient, RecordingRuntime],
) -> None:
    client, rt = world
    agent = _ids(1, "research")[0]
    sign_in(client, "otto")
    html = client.get(f"/console/agents/{agent}").text
    assert f"/console/agents/{agent}/release" in html
    assert f"/console/control/agents/{agent}/freeze" in html
    csrf = CSRF.search(html)
    assert csrf is not None
    no_csrf = client.post(f"/console/agents/{agent}/release", data={"reason": "back"})
    assert no_csrf.status_code == 403
    done = client.post(
        f"/console/agents/{agent}/release", data={"csrf": csrf.group(1), "reason": "back"}
    )
    assert done.status_code == 200 and "release requested (HIGH)" in done.text
    retire = client.post(
        f"/console/agents/{agent}/retire", data={"csrf": csrf.group(1), "reason": "old"}
    )
    assert "retirement requested (CRITICAL, 2 approver(s))" in retire.text
    pending = {(r.action, r.subject, r.requested_by) for r in rt.approvals.list_requests()}
    assert ("release_agent", agent, "user:otto") in pending
    assert ("retire_agent", agent, "user:otto") in pending
    active = _ids(1)[0]
    nothing = client.post(
        f"/console/agents/{active}/release", data={"csrf": csrf.group(1), "reason": "x"}
    )
    assert "is not paused: nothing to release" in nothing.text


def test_the_sla_board_renders_and_an_unknown_episode_is_not_acknowledged(
    world: tuple[TestClient, RecordingRuntime],
) -> None:
    client, _ = world
    sign_in(client, "otto")
    html = client.get("/console/sla").text
    assert "No open episode." in html and "Error budgets" in html
    csrf = CSRF.search(html)
    assert csrf is not None
    r = client.post(
        "/console/sla/episodes/ep-missing/ack", data={"csrf": csrf.group(1), "reason": "on it"}
    )
    assert r.status_code == 200 and "not acknowledged" in r.text


def test_the_scaling_page_lists_segments_and_asks_for_enforce_through_an_approval(
    world: tuple[TestClient, RecordingRuntime],
) -> None:
    client, rt = world
    sign_in(client, "vera")
    viewer = client.get("/console/scaling").text
    assert ">support<" in viewer and ">research<" in viewer
    assert "operators change it" in viewer and "Ask to enforce" not in viewer
    sign_in(client, "otto")
    html = client.get("/console/scaling").text
    csrf = CSRF.search(html)
    assert csrf is not None and "Ask to enforce" in html
    asked = client.post(
        "/console/scaling/mode",
        data={"csrf": csrf.group(1), "segment": "support", "mode": "enforce", "reason": "load"},
    )
    assert asked.status_code == 200 and "enforce support: approval request" in asked.text
    assert "(HIGH)" in asked.text
    pending = {(r.action, r.subject) for r in rt.approvals.list_requests()}
    assert ("autoscale_enforce", "support") in pending
    unknown = client.post(
        "/console/scaling/mode",
        data={"csrf": csrf.group(1), "segment": "nosuch", "mode": "enforce", "reason": "x"},
    )
    assert "no segment &#39;nosuch&#39;" in unknown.text or "no segment 'nosuch'" in unknown.text
    bad = client.post(
        "/console/scaling/mode",
        data={"csrf": csrf.group(1), "segment": "support", "mode": "grow"},
    )
    assert bad.status_code == 422


def test_the_money_page_links_the_weekly_review_and_the_review_page_answers(
    world: tuple[TestClient, RecordingRuntime],
) -> None:
    from fleet.finops.review import previous_week, week_of

    client, rt = world
    sign_in(client, "vera")
    money = unescape(client.get("/console/money").text)
    now = rt.clock.now()
    assert f"/console/money/review?fleet=demo&week={previous_week(now)}" in money
    assert f"/console/money/review?fleet=demo&week={week_of(now)}" in money
    review = client.get("/console/money/review?fleet=demo&week=2026-W48")
    assert review.status_code == 200
    assert "FinOps review — fleet demo, week 2026-W48" in unescape(review.text)
    text = unescape(review.text)
    # The review itself is embedded: its sections, and a week without spend is not shown as $0.
    for section in ("Model mix", "Most expensive tasks", "Volume discounts", "Fleet economics"):
        assert f"<h2>{section}" in text
    assert '<span class="unknown">unknown</span>' in text
    assert client.get("/console/money/review?week=2026-48").status_code == 422


def test_the_money_page_names_the_task_of_each_booked_attempt(
    world: tuple[TestClient, RecordingRuntime],
) -> None:
    from fleet.budgets.models import SpendEntry
    from fleet.work.records import reservation_id

    client, rt = world
    now = rt.clock.now()
    task = "c0" * 16
    with write_session(rt.sessions) as s:
        s.add(
            SpendEntry(
                task_id=reservation_id(task, 2), agent_id="support-0001-aaaaaaaa", fleet="demo",
                model="frontier", estimate="0.70", actual="0.75", currency="USD", usage={},
                reserved_at=now - timedelta(seconds=5), settled_at=now,
            )
        )  # fmt: skip
    sign_in(client, "vera")
    html = client.get("/console/money?fleet=demo").text
    assert task in html and reservation_id(task, 2) not in html
    assert "0.75" in html


def test_an_operator_pauses_spending_at_once_and_a_viewer_is_offered_no_lever(
    world: tuple[TestClient, RecordingRuntime],
) -> None:
    client, rt = world
    rt.budgets.redis = rt.redis  # the world's Redis (the budgets keep a client of their own)
    sign_in(client, "vera")
    assert "Pause spending of demo" not in client.get("/console/money?fleet=demo").text
    sign_in(client, "otto")
    html = client.get("/console/money?fleet=demo").text
    csrf = CSRF.search(html)
    assert csrf is not None and "Pause spending of demo now" in html
    blank = client.post(
        "/console/money/pause", data={"csrf": csrf.group(1), "fleet": "demo", "reason": " "}
    )
    assert "reason: must not be empty" in unescape(blank.text)
    assert not rt.budgets.spending_paused("demo")
    done = client.post(
        "/console/money/pause",
        data={"csrf": csrf.group(1), "fleet": "demo", "reason": "odd invoices"},
    )
    assert "spending of demo: paused" in unescape(done.text)
    assert rt.budgets.spending_paused("demo")
    paused = unescape(client.get("/console/money?fleet=demo").text)
    assert "Spending paused" in paused and "paused by user:otto: odd invoices" in paused
    assert "Ask to resume spending" in paused and "Pause spending of demo" not in paused
    assert [p["fleet"] for p in budget_control.pauses(rt.sessions)] == ["demo"]
