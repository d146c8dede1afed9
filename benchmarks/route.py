"""`fleet bench route`: tasks end to end through the work plane, against the same tasks sent
by a bare A2A client.

A private stack (Redis, the sandbox at ``latency_ms`` per A2A task, SQLite) with AGENTS
simulated agents in the routing table; WORKERS `routing` worker processes (prefork, one
pool process each by default). TASKS submissions are sent as `routing.submit_tasks`
messages of BATCH; each worker process runs a message's tasks at once on its event loop,
so WORKERS × POOL × BATCH tasks are in flight. Each task is claimed (idempotency key),
model-routed, given an agent by the weighted score on live in-flight counters, counted in
flight, delivered with the a2a-sdk client (`message/send`), settled, measured into the
agent's snapshot and queued as a record. The clock runs from the first message sent to
the last task's record queued.

The **limit**, measured in the same run: a bare JSON-RPC client (aiohttp, no SDK) in this
process sending the same `message/send` requests to the same agents at the same number in
flight. The ratio is the system's time over the limit's.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from typing import Any

from benchmarks.common import group_cpu_s, insert_bench_agents, run_fast, sessions_for, workdir
from fleet.hotstate import connect
from fleet.work import store
from stack.local import local_stack
from workers.queues import TaskName


def _submission(i: int, run: str) -> dict[str, Any]:
    return {
        "type": "bench",
        "capabilities": ["support"],
        "estimated_tokens": 500,
        "payer": {"kind": "segment", "id": "route"},
        "idempotency_key": f"{run}-{i}",
        "fleet": "bench",
        "input": f"task {i}",
    }


def bare_limit(base: str, agent_ids: list[str], tasks: int, in_flight: int) -> float:
    """Seconds for a bare JSON-RPC client to send ``tasks`` message/send at ``in_flight``."""
    import aiohttp

    async def run() -> float:
        connector = aiohttp.TCPConnector(limit=in_flight)
        async with aiohttp.ClientSession(connector=connector) as session:
            left = iter(range(tasks))
            rng = random.Random(7)

            async def worker() -> None:
                for i in left:
                    agent = agent_ids[rng.randrange(len(agent_ids))]
                    body = {
                        "jsonrpc": "2.0",
                        "id": str(i),
                        "method": "message/send",
                        "params": {
                            "message": {
                                "kind": "message",
                                "role": "user",
                                "messageId": uuid.uuid4().hex,
                                "parts": [{"kind": "text", "text": f"task {i}"}],
                                "metadata": {"estimated_tokens": 500},
                            }
                        },
                    }
                    async with session.post(f"{base}/a2a/{agent}", json=body) as answer:
                        await answer.read()

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(in_flight)))
            return time.perf_counter() - started

    return run_fast(run())


def run(
    tasks: int,
    latency_ms: float,
    agents: int,
    workers: int,
    pool: int,
    batch: int,
    keep: str | None,
) -> None:
    with workdir(keep, "fleet-bench-route-") as base:
        with local_stack(base, latency_ms=latency_ms, jitter_ms=0) as st:
            ids = [
                str(a["agent_id"])
                for a in st.sandbox().seed(agents, prefix="route", profile="idle")["agents"]
            ]
            sessions = sessions_for(st.settings)
            insert_bench_agents(sessions, ids, fleet="bench", policy=st.settings.policy)
            children = [
                st.start_worker(["routing"], concurrency=pool, pool="prefork", name=f"routing-{w}")
                for w in range(workers)
            ]
            app = st.celery()
            r = connect(st.settings.redis_url)

            def send_all(count: int, tag: str) -> float:
                start_len = int(r.llen(store.RECORDS_KEY))
                started = time.perf_counter()
                with app.producer_or_acquire() as producer:
                    for first in range(0, count, batch):
                        items = [
                            _submission(i, tag) for i in range(first, min(first + batch, count))
                        ]
                        app.send_task(
                            TaskName.SUBMIT_TASKS.value,
                            kwargs={"tasks": items},
                            producer=producer,
                            ignore_result=True,
                        )
                deadline = time.monotonic() + max(120.0, count / 50)
                while int(r.llen(store.RECORDS_KEY)) - start_len < count:
                    if time.monotonic() > deadline:
                        raise RuntimeError("route bench: tasks not done in time; see the logs")
                    time.sleep(0.02)
                return time.perf_counter() - started

            # Warm-up (agent cards, connections, imports): not counted.
            send_all(min(tasks, workers * pool * batch), f"warm-{uuid.uuid4().hex[:6]}")
            cpu_before = sum(group_cpu_s(c.process.pid) for c in children)
            seconds = send_all(tasks, f"run-{uuid.uuid4().hex[:6]}")
            worker_cpu = sum(group_cpu_s(c.process.pid) for c in children) - cpu_before
            blobs = r.lrange(store.RECORDS_KEY, -tasks, -1)
            states: dict[str, int] = {}
            for blob in blobs:
                state = json.loads(blob)["state"]
                states[state] = states.get(state, 0) + 1
            in_flight = workers * pool * batch
            limit_s = bare_limit(st.settings.gateway_url, ids, tasks, in_flight)
            rate, limit_rate = tasks / seconds, tasks / limit_s
            print(
                f"route: {tasks} tasks in {seconds:.2f} s ({rate:.0f}/s), states {states}; "
                f"worker CPU {worker_cpu:.1f} s ({worker_cpu / tasks * 1000:.2f} ms a task)"
            )
            print(
                f"limit (bare JSON-RPC client, {in_flight} in flight): {limit_s:.2f} s "
                f"({limit_rate:.0f}/s) | ratio {seconds / limit_s:.2f}"
            )
            print(
                json.dumps(
                    {
                        "benchmark": "route",
                        "tasks": tasks,
                        "latency_ms": latency_ms,
                        "agents": agents,
                        "in_flight": in_flight,
                        "seconds": round(seconds, 3),
                        "tasks_per_s": round(rate, 1),
                        "states": states,
                        "worker_cpu_s": round(worker_cpu, 2),
                        "limit_s": round(limit_s, 3),
                        "limit_tasks_per_s": round(limit_rate, 1),
                        "ratio": round(seconds / limit_s, 2),
                    }
                )
            )
