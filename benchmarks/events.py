"""`fleet bench events`: signed heartbeats end to end, stream → queue → verified → snapshot.

The fleet: AGENTS agents in the database with their identity public keys; their
heartbeats are signed here beforehand (the bench measures ingest, not signing) and
put on the sandbox's bus through ``POST /v1/infra/events``, ROUNDS per agent,
60 s of real load per round compressed into one burst. Then, with the metrics
worker(s) already up:

- **end to end**: `fleet stream` starts (a real process, as `fleet up` runs it);
  from its resume until the last snapshot is written (the snapshots' ``polled_at``),
  every event read from the stream, handed on, verified and applied by the workers;
- **the limit, same run**: a bare loop in this process reads the same events from
  the same stream and checks each signature (``verify_heartbeat``), nothing else;
- **snapshot age at the real load**: AGENTS/60 heartbeats a second (167/s for
  10,000), signed as they are sent; each one's time from ``sent_at`` to its
  snapshot. The age a reader sees is at most one interval plus that.

``--profile`` also runs the ingest of one batch under cProfile in this process
(the worker's code path) and prints the top of the profile.
"""

from __future__ import annotations

import cProfile
import io
import json
import pstats
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import click
import httpx
import orjson

EVENT_PATH = "/v1/infra/events"
STREAM_PATH = "/v1/events/stream"


def bench_agent_rows(sessions: Any, keys: dict[str, Any], fleet: str, policy: Any) -> None:
    """Agent rows with their public keys and contracts, as provisioning leaves them."""
    from sqlalchemy import insert

    from fleet.monitoring.heartbeats import public_key_hex
    from fleet.storage.db import write_connection
    from fleet.storage.records import Agent, SlaContract

    now = datetime.now(UTC)
    template = "standard-support"
    terms = policy.sla_templates[template].model_dump(mode="json")
    ids = list(keys)
    with write_connection(sessions) as conn:
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            conn.execute(
                insert(Agent),
                [
                    {
                        "agent_id": a,
                        "fleet": fleet,
                        "environment": "bench",
                        "id_prefix": a.split("-")[0],
                        "tier": "pro",
                        "capabilities": ["support"],
                        "sla_template": template,
                        "status": "active",
                        "steps_done": [],
                        "traffic_weight": "1",
                        "extra": {"public_key": public_key_hex(keys[a])},
                        "created_at": now,
                        "updated_at": now,
                    }
                    for a in chunk
                ],
            )
            conn.execute(
                insert(SlaContract),
                [
                    {
                        "sla_id": f"sla-{a}",
                        "agent_id": a,
                        "template": template,
                        "terms": terms,
                        "created_at": now,
                    }
                    for a in chunk
                ],
            )


def presign(keys: dict[str, Any], rounds: int, first_seq: int, sent_at: float) -> list[bytes]:
    """Every agent's heartbeats for ``rounds`` rounds, as request bodies."""
    from fleet.monitoring.heartbeats import Heartbeat, HeartbeatMetrics, heartbeat_event

    metrics = HeartbeatMetrics(
        latency_p50_ms=180.0, latency_p99_ms=820.0, error_rate=0.01, tool_calls=40, retries=1
    )
    out = []
    for n in range(rounds):
        for agent_id, key in keys.items():
            hb = Heartbeat(
                agent_id=agent_id,
                seq=first_seq + n,
                sent_at=sent_at + n * 60,
                interval_s=60,
                metrics=metrics,
            )
            out.append(orjson.dumps(heartbeat_event(hb, key)))
    return out


def publish(url: str, key: str, bodies: list[bytes], threads: int = 4) -> None:
    """Onto the bus, in order per thread (a thread per slice of the fleet)."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def one(part: list[bytes]) -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            for body in part:
                client.post(EVENT_PATH, content=body).raise_for_status()

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, [bodies[i::threads] for i in range(threads)]))


def bare_limit(url: str, key: str, public: dict[str, Any], after: int, total: int) -> float:
    """Seconds for a bare loop to read ``total`` events after ``after`` from the stream
    and check each signature."""
    from fleet.monitoring.heartbeats import EVENT_TYPE, HeartbeatRejected, verify_heartbeat

    headers = {"Authorization": f"Bearer {key}", "Last-Event-ID": str(after)}
    seen = bad = 0
    began = time.perf_counter()
    with (
        httpx.Client(base_url=url, timeout=30) as client,
        client.stream("GET", STREAM_PATH, params={"event_type": EVENT_TYPE}, headers=headers) as r,
    ):
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            event = orjson.loads(line[6:])
            try:
                verify_heartbeat(event["source"], event["payload"], public.get(event["source"]))
            except HeartbeatRejected:
                bad += 1
            seen += 1
            if seen == total:
                break
    elapsed = time.perf_counter() - began
    if bad:
        raise click.ClickException(f"the limit loop refused {bad} of its own events")
    return elapsed


def wait_applied(r: Any, total: int, timeout_s: float) -> dict[str, Any]:
    from fleet.monitoring.ingest import ingest_counts

    deadline = time.monotonic() + timeout_s
    while True:
        counts = ingest_counts(r)
        done = counts["accepted"] + counts["superseded"] + counts["duplicate"]
        if done >= total:
            return counts
        if time.monotonic() > deadline:
            raise click.ClickException(f"{done} of {total} events ingested after {timeout_s} s")
        time.sleep(0.05)


def snapshot_times(r: Any, agent_ids: list[str]) -> list[tuple[float, float]]:
    """(heartbeat_at, polled_at) of every agent's snapshot."""
    from fleet.monitoring.snapshot import snapshot_key

    out = []
    for start in range(0, len(agent_ids), 2000):
        pipe = r.pipeline(transaction=False)
        for agent_id in agent_ids[start : start + 2000]:
            pipe.hmget(snapshot_key(agent_id), "heartbeat_at", "polled_at")
        for sent, polled in pipe.execute():
            if sent and polled:
                out.append((float(sent), float(polled)))
    return out


def profile_batch(stack: Any, events: list[dict[str, Any]]) -> str:
    """cProfile of the worker's code path (ingest_heartbeats) over one batch, in this process."""
    from fleet.clock import SystemClock
    from fleet.hotstate import connect
    from fleet.monitoring.alerts import Handoff
    from fleet.monitoring.ingest import AgentDirectory, IngestDeps, ingest_heartbeats
    from fleet.storage.db import engine_for, session_factory

    s = stack.settings
    sessions = session_factory(engine_for(s.sqlalchemy_url))
    deps = IngestDeps(
        connect(s.redis_url),
        sessions,
        s.policy,
        SystemClock(),
        Handoff(notify=lambda ids: None, escalate=lambda pairs: None),
        AgentDirectory(sessions, s.policy, 600),
        s.metrics.snapshot_ttl_s,
        s.metrics.state_ttl_s,
    )
    deps.directory.lookup(e["source"] for e in events)  # a warm cache, as in a running worker
    profiler = cProfile.Profile()
    profiler.enable()
    ingest_heartbeats(deps, events)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(18)
    return text.getvalue()


def fast_stream_flags() -> list[str]:
    """The sandbox serves the stream as the real gateway does (100 events per 1-s poll, so
    100/s per connection); where it can, let it wake on every publish and send what it has,
    so the bench measures our side, not that pacing."""
    import subprocess
    import sys

    usage = subprocess.run(
        [sys.executable, "-m", "sandbox", "--help"], capture_output=True, text=True, check=False
    ).stdout
    return ["--sse-poll-s", "0", "--sse-batch", "5000"] if "--sse-poll-s" in usage else []


def run(
    agents: int,
    rounds: int,
    workers: int,
    concurrency: int,
    batch_size: int,
    real_load_s: float,
    profile: bool,
    keep: str | None,
) -> None:
    from benchmarks.common import group_cpu_s, sessions_for, workdir
    from fleet.hotstate import connect
    from fleet.monitoring.heartbeats import new_identity_key
    from fleet.monitoring.stream_consumer import stream_status
    from stack.local import local_stack
    from stack.processes import stream_argv

    total = agents * rounds
    paced = not fast_stream_flags()
    if paced:
        click.echo("note: this sandbox paces its stream at 500 events/s; both sides are capped")
    with workdir(keep, "fleet-bench-events-") as base:
        with local_stack(
            base,
            stream={"batch_size": batch_size, "batch_wait_s": 0.05},
            sandbox_extra=["--memory", *fast_stream_flags()],
        ) as stack:
            s = stack.settings
            url = s.gateway_url
            admin = s.gateway.admin_key.get_secret_value()
            keys = {f"hb{i:05d}-{i:08x}": new_identity_key() for i in range(agents)}
            ids = list(keys)
            bench_agent_rows(sessions_for(s), keys, "bench", s.policy)
            began = time.perf_counter()
            bodies = presign(keys, rounds, 1, time.time())
            click.echo(f"signed {total} heartbeats in {time.perf_counter() - began:.1f} s")
            began = time.perf_counter()
            publish(url, admin, bodies)
            click.echo(
                f"published {total} on the sandbox's bus in {time.perf_counter() - began:.1f} s"
            )
            r = connect(s.redis_url)
            for i in range(workers):
                stack.start_worker(
                    ["metrics"],
                    concurrency=concurrency,
                    name=f"metrics-{i}",
                    extra_env={"FLEET_WORKER__PREFETCH_MULTIPLIER": "1"},
                )
            cpu_before = {c.name: group_cpu_s(c.process.pid) for c in stack.sup.children}
            stack.sup.start("stream", stream_argv(), env=stack.env)
            counts = wait_applied(r, total, timeout_s=max(120.0, total / 200))
            times = snapshot_times(r, ids)
            resumed = float(stream_status(r).get("resumed_at") or 0)
            end_to_end_s = max(polled for _, polled in times) - resumed
            cpu = {
                c.name: group_cpu_s(c.process.pid) - cpu_before.get(c.name, 0.0)
                for c in stack.sup.children
                if c.alive()
            }
            rate = total / end_to_end_s
            click.echo(
                f"end to end: {total} events in {end_to_end_s:.2f} s ({rate:,.0f} events/s), "
                f"{counts['accepted']} applied, {counts['superseded']} overtaken by the agent's "
                f"next, {counts['duplicate']} duplicates, rejected {counts['rejected']} | CPU s: "
                + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items())
            )
            own_before = time.process_time()
            limit_s = bare_limit(url, admin, _public(keys), 0, total)
            click.echo(
                f"limit (bare loop: stream + verify): {limit_s:.2f} s "
                f"({total / limit_s:,.0f} events/s, CPU {time.process_time() - own_before:.1f} s)"
                f" | ratio {end_to_end_s / limit_s:.2f}"
            )

            # The real load: every agent once a minute, signed as sent.
            real_rate = agents / 60
            sent = int(real_rate * real_load_s)
            picked = ids[:sent] if sent <= agents else ids
            tick = 1 / real_rate
            started = time.perf_counter()
            headers = {"Authorization": f"Bearer {admin}"}
            from fleet.monitoring.heartbeats import (
                Heartbeat,
                HeartbeatMetrics,
                heartbeat_event,
            )

            with httpx.Client(base_url=url, headers=headers) as client:
                for n, agent_id in enumerate(picked):
                    due = started + n * tick
                    pause = due - time.perf_counter()
                    if pause > 0:
                        time.sleep(pause)
                    hb = Heartbeat(
                        agent_id=agent_id,
                        seq=rounds + 1,
                        sent_at=time.time(),
                        interval_s=60,
                        metrics=HeartbeatMetrics(latency_p99_ms=800.0, error_rate=0.01),
                    )
                    client.post(
                        EVENT_PATH, json=heartbeat_event(hb, keys[agent_id])
                    ).raise_for_status()
            wait_applied(r, total + len(picked), timeout_s=60)
            ages = sorted(polled - hb_at for hb_at, polled in snapshot_times(r, picked))
            p50, p99 = statistics.median(ages), ages[max(0, int(len(ages) * 0.99) - 1)]
            click.echo(
                f"real load: {len(picked)} heartbeats at {real_rate:.0f}/s over "
                f"{real_load_s:.0f} s; sent → snapshot p50 {p50 * 1000:.0f} ms, "
                f"p99 {p99 * 1000:.0f} ms; a reader sees at most 60 s + that "
                f"(goal: under 120 s)"
            )
            if profile:
                sample = [
                    {"id": 10**9 + i, **orjson.loads(b)}
                    for i, b in enumerate(
                        presign(dict(list(keys.items())[:batch_size]), 1, 10**6, time.time())
                    )
                ]
                click.echo(profile_batch(stack, sample))
            click.echo(
                json.dumps(
                    {
                        "agents": agents,
                        "events": total,
                        "events_per_s": round(rate),
                        "end_to_end_s": round(end_to_end_s, 3),
                        "limit_s": round(limit_s, 3),
                        "ratio": round(end_to_end_s / limit_s, 2),
                        "real_load_per_s": round(real_rate, 1),
                        "snapshot_latency_p50_s": round(p50, 3),
                        "snapshot_latency_p99_s": round(p99, 3),
                        "snapshot_age_p99_bound_s": round(60 + p99, 1),
                        "workers": workers,
                        "concurrency": concurrency,
                        "batch_size": batch_size,
                    }
                )
            )


def _public(keys: dict[str, Any]) -> dict[str, Any]:
    return {agent_id: key.public_key() for agent_id, key in keys.items()}
