"""`fleet bench console`: the console's overview and agent list at 10,000 agents, and a
live update's delay after the sweep that caused it.

A local stack (Redis, SQLite, the API process as `fleet up` starts it) with AGENTS
agent rows, a snapshot for each (one in ``critical_every`` critical), the fleet view,
its eight segments' views and meta a sweep leaves behind, a day of tool-call volume and
of per-sweep history rows, and open alerts.
A person signs in through the console's form; then:

- the overview (``/console/?fleet=bench``) and the agent list, plain and filtered by
  health (which reads every matching agent's health from Redis), are fetched
  ``--requests`` times each: the median and worst server time, and the page's size;
- a live stream is opened, a new sweep's fleet view and meta are written, and the
  time until the stream delivers the re-rendered fragment is taken, ``--updates`` times.

The limit is the same work without HTTP, the server or the session: the overview's
data read and its template rendered in this process, on the same stack; the ratio is
the median served time over the median limit.
"""

from __future__ import annotations

import json
import re
import statistics
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import click
import httpx

from benchmarks.common import insert_bench_agents, limit_fields, sessions_for, workdir

FLEET = "bench"
PASSWORD = "bench console password"
GOALS = {"overview_ms": 300.0, "page_kb": 200.0, "live_s": 1.0}


def seed(stack: Any, agents: int, critical_every: int, alerts: int) -> dict[str, Any]:
    """Agent rows, snapshots, the fleet view, a day of history and open alerts."""
    from sqlalchemy import insert

    from fleet.hotstate import connect
    from fleet.monitoring.models import Alert, FleetSweep
    from fleet.monitoring.snapshot import Health, Snapshot, write_snapshots
    from fleet.storage.db import write_connection

    settings = stack.settings
    sessions = sessions_for(settings)
    ids = [f"bench{i % 8}-{i:04d}-{i:08x}" for i in range(agents)]
    insert_bench_agents(sessions, ids, fleet=FLEET, policy=settings.policy)
    r = connect(settings.redis_url)
    now = time.time()
    snaps = [
        Snapshot(
            agent_id=a,
            polled_at=now,
            health=Health.CRITICAL
            if critical_every and i % critical_every == 0
            else Health.HEALTHY,
            latency_p50=120.0,
            latency_p99=400.0 + i % 300,
            error_rate=0.002,
            balance=Decimal("50.00"),
            burn_rate_per_hour=Decimal("0.40"),
            fleet=FLEET,
        )
        for i, a in enumerate(ids)
    ]
    for start in range(0, len(snaps), 5000):
        write_snapshots(r, snaps[start : start + 5000])
    critical = sum(1 for s in snaps if s.health is Health.CRITICAL)
    write_view(r, agents, critical, "bench-0")
    started = datetime.now(UTC) - timedelta(hours=24)
    sweep_every = settings.schedule.metrics_sweep_s
    rows = int(24 * 3600 // sweep_every)
    with write_connection(sessions) as conn:
        conn.execute(
            insert(FleetSweep),
            [
                {
                    "sweep_id": f"h{i}",
                    "fleet": fleet,
                    "started_at": started + timedelta(seconds=i * sweep_every),
                    "finished_at": started + timedelta(seconds=i * sweep_every + 5),
                    "agents": agents,
                    "healthy": agents - critical,
                    "degraded": 0,
                    "critical": critical + i % 7,
                    "unknown": 0,
                    "latency_p99": 600.0 + (i % 60) * 10,
                    "error_rate": 0.002,
                    "sla_compliance": 0.99,
                    "burn_rate_per_hour": str(Decimal("0.40") * agents),
                }
                for i in range(rows)
                for fleet in (FLEET, "*")
            ],
        )
        at = datetime.now(UTC)
        conn.execute(
            insert(Alert),
            [
                {
                    "alert_id": uuid.uuid4().hex,
                    "rule": "agent.health_critical",
                    "scope": "agent",
                    "subject": ids[i],
                    "fleet": FLEET,
                    "severity": "critical",
                    "audience": "page",
                    "open_key": f"bench:{i}",
                    "value": "critical",
                    "threshold": "critical",
                    "message": f"{ids[i]} is critical",
                    "since": at,
                    "fired_at": at - timedelta(seconds=i),
                    "actions": {},
                }
                for i in range(alerts)
            ],
        )
    return {"ids": ids, "critical": critical, "history_rows": rows, "redis": r}


def write_view(r: Any, agents: int, critical: int, sweep_id: str) -> None:
    import orjson

    from fleet.monitoring import sweep, volume

    view = {
        "fleet": FLEET,
        "agents": agents,
        "healthy": agents - critical,
        "degraded": 0,
        "critical": critical,
        "unknown": 0,
        "latency_p99": 699.0,
        "error_rate": 0.002,
        "sla_compliance": 0.99,
        "burn_rate_per_hour": str(Decimal("0.40") * agents),
    }
    pipe = r.pipeline()
    pipe.hset(
        sweep.HEALTH_KEY,
        mapping={FLEET: orjson.dumps(view), "*": orjson.dumps({**view, "fleet": "*"})},
    )
    pipe.hset(
        sweep.HEALTH_META_KEY, mapping={"sweep_id": sweep_id, "finished_at": str(time.time())}
    )
    # The eight segments' views (bench0 … bench7) and a day of tool-call volume.
    segments = {
        volume.segment_view(FLEET, f"bench{i}"): orjson.dumps(
            {**view, "fleet": volume.segment_view(FLEET, f"bench{i}"), "agents": agents // 8}
        )
        for i in range(8)
    }
    pipe.hset(sweep.SEGMENTS_KEY, mapping=segments)
    hour = volume.hour_of(time.time())
    for h in range(24):
        pipe.set(volume.volume_key(FLEET, hour - 3600 * h), 40 * agents + 97 * h, ex=volume.KEEP_S)
    pipe.execute()


def signed_in_client(base_url: str, settings: Any) -> httpx.Client:
    from fleet.clock import SystemClock
    from fleet.identity import Identities, Role

    identities = Identities.from_settings(settings, sessions_for(settings), SystemClock())
    identities.add_user("bench-viewer", Role.VIEWER, PASSWORD)
    client = httpx.Client(base_url=base_url, timeout=30)
    form = client.get("/console/sign-in").text
    presign = re.search(r'name="presign" value="([^"]+)"', form)
    if presign is None:
        raise click.ClickException("the sign-in form has no presign field")
    done = client.post(
        "/console/sign-in",
        data={"username": "bench-viewer", "password": PASSWORD, "presign": presign.group(1)},
    )
    if done.status_code != 303:
        raise click.ClickException(f"sign-in refused: {done.status_code} {done.text[:200]}")
    return client


def timed(client: httpx.Client, path: str, n: int) -> dict[str, Any]:
    times, size = [], 0
    for _ in range(n):
        started = time.perf_counter()
        resp = client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        if resp.status_code != 200:
            raise click.ClickException(f"{path}: {resp.status_code} {resp.text[:300]}")
        size = len(resp.content)
    return {
        "path": path,
        "median_ms": round(statistics.median(times), 1),
        "worst_ms": round(max(times), 1),
        "kb": round(size / 1024, 1),
    }


def _listen(
    client: httpx.Client,
    expected: str,
    ready: threading.Event,
    got: threading.Event,
    arrived: list[float],
) -> None:
    with client.stream("GET", f"/console/live/overview?fleet={FLEET}") as stream:
        ready.set()
        for line in stream.iter_lines():
            if line.startswith("data: ") and expected in line:
                arrived.append(time.perf_counter())
                got.set()
                return


def live_delays(client: httpx.Client, r: Any, agents: int, critical: int, n: int) -> list[float]:
    """Seconds from a new sweep's meta landing to the stream's fragment carrying it."""
    delays: list[float] = []
    for k in range(n):
        sweep_id = f"bench-live-{k}"
        got = threading.Event()
        ready = threading.Event()
        arrived: list[float] = []

        thread = threading.Thread(
            target=_listen, args=(client, sweep_id, ready, got, arrived), daemon=True
        )
        thread.start()
        ready.wait(10)
        time.sleep(0.5)  # the stream has read the current version
        landed = time.perf_counter()
        write_view(r, agents, critical + k + 1, sweep_id)
        if not got.wait(10):
            raise click.ClickException(f"no live update for {sweep_id} within 10 s")
        delays.append(arrived[0] - landed)
        thread.join(5)
    return delays


def in_process_limit(stack: Any, n: int) -> list[float]:
    """The overview's data read and its page rendered in this process (no HTTP, no session)."""
    from web.console.pages.overview import load_overview
    from web.console.render import templates
    from workers.runtime import celery_runtime

    rt = celery_runtime(stack.celery(), stack.settings)
    try:
        template = templates.get_template("overview.html")
        out = []
        for _ in range(n):
            started = time.perf_counter()
            model = load_overview(rt, FLEET)
            template.render(o=model, nav=[], principal=None, csrf="", may=lambda _: False)
            out.append((time.perf_counter() - started) * 1000)
        return out
    finally:
        rt.close()


def run(agents: int, requests: int, updates: int, critical_every: int, keep: str | None) -> None:
    from config.settings import ApiSettings
    from stack.local import local_stack
    from stack.processes import api_argv, free_port, port_open

    with workdir(keep, "fleet-bench-console-") as base:
        port = free_port()
        with local_stack(base, api=ApiSettings(port=port)) as stack:
            seeded = seed(stack, agents, critical_every, stack.settings.console.overview_alerts)
            settings = stack.settings
            stack.sup.start(
                "api",
                api_argv(settings),
                env=stack.env,
                ready=lambda: port_open(settings.api.host, port),
                timeout_s=60,
            )
            click.echo(
                f"{agents} agents ({seeded['critical']} critical), {seeded['history_rows']} "
                f"history rows a fleet; API at http://{settings.api.host}:{port}"
            )
            client = signed_in_client(f"http://{settings.api.host}:{port}", settings)
            try:
                client.get(f"/console/?fleet={FLEET}")  # warm: templates compiled
                pages = [
                    timed(client, f"/console/?fleet={FLEET}", requests),
                    timed(client, f"/console/agents?fleet={FLEET}", requests),
                    timed(client, f"/console/agents?fleet={FLEET}&health=critical", requests),
                    timed(client, f"/console/agents?fleet={FLEET}&page=100", requests),
                ]
                for p in pages:
                    click.echo(
                        f"{p['path']}: median {p['median_ms']:.1f} ms, worst "
                        f"{p['worst_ms']:.1f} ms, {p['kb']:.1f} KB"
                    )
                delays = live_delays(client, seeded["redis"], agents, seeded["critical"], updates)
            finally:
                client.close()
            click.echo(
                "live update after the sweep: "
                + ", ".join(f"{d:.3f}" for d in delays)
                + f" s (polled every {settings.console.live_poll_s} s)"
            )
            limits = in_process_limit(stack, requests)
            overview = pages[0]
            limit_ms = statistics.median(limits)
            click.echo(
                f"limit (the overview read and rendered in-process): median {limit_ms:.1f} ms "
                f"| ratio {overview['median_ms'] / limit_ms:.2f}"
            )
            result = {
                "agents": agents,
                "pages": pages,
                "live_s": [round(d, 3) for d in delays],
                "live_worst_s": round(max(delays), 3),
                "goals": GOALS,
                "met": {
                    "overview_ms": overview["worst_ms"] < GOALS["overview_ms"],
                    "page_kb": max(p["kb"] for p in pages) < GOALS["page_kb"],
                    "live_s": max(delays) < GOALS["live_s"],
                },
                "overview_ms": overview["median_ms"],
                **limit_fields(overview["median_ms"] / 1000, limit_ms / 1000),
            }
            click.echo(json.dumps(result))
