"""Measure a running sandbox.

``python -m benchmarks.loadtest --agents 10000 --concurrency 200 --requests 40000``

Starts no server. It seeds ``--agents`` agents under a fresh prefix through the
admin API (or, with ``--no-seed``, uses the live agents under ``--prefix``),
then sends ``--requests`` tool calls from ``--concurrency`` concurrent workers,
cycling through the agents with the monitoring sweep's four reads
(get_analytics, get_balance, check_sla_compliance, get_agent_reputation), and
prints requests per second, latency percentiles and the status mix.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from collections import Counter
from typing import Any

import aiohttp
import orjson

SWEEP_TOOLS = ("get_analytics", "get_balance", "check_sla_compliance", "get_agent_reputation")


async def _agent_ids(
    session: aiohttp.ClientSession, base: str, args: argparse.Namespace
) -> list[str]:
    if not args.no_seed:
        prefix = f"{args.prefix}{int(time.time()) % 100000}"
        async with session.post(
            f"{base}/_sandbox/seed", json={"agents": args.agents, "prefix": prefix}
        ) as r:
            body = await r.json(loads=orjson.loads)
            if r.status != 200:
                raise SystemExit(f"seeding failed: {r.status} {body}")
        if body.get("agent_ids"):
            print(f"seeded {body['seeded']} agents under {prefix!r} in {body['elapsed_s']} s")
            return list(body["agent_ids"])
        args.prefix = prefix
    ids: list[str] = []
    offset: int | None = 0
    while offset is not None and len(ids) < args.agents:
        call = {
            "tool": "search_agents_by_metrics",
            "input": {
                "prefix": args.prefix,
                "metrics": ["latency_p50"],
                "limit": 1000,
                "offset": offset,
            },
        }
        async with session.post(base + args.tool_path, data=orjson.dumps(call)) as r:
            body = await r.json(loads=orjson.loads)
            if r.status != 200:
                raise SystemExit(f"listing agents failed: {r.status} {body}")
        ids.extend(a["agent_id"] for a in body["agents"])
        offset = body["next_offset"]
    if not ids:
        raise SystemExit(f"no live agents under prefix {args.prefix!r}")
    return ids[: args.agents]


async def _run(args: argparse.Namespace) -> None:
    base = args.url.rstrip("/")
    headers = {"Authorization": f"Bearer {args.admin_key}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=args.concurrency, limit_per_host=args.concurrency)
    timeout = aiohttp.ClientTimeout(total=args.timeout_s)
    async with aiohttp.ClientSession(
        headers=headers, connector=connector, timeout=timeout
    ) as session:
        ids = await _agent_ids(session, base, args)
        # Pre-encode every body: the client should spend its CPU on sending.
        bodies = [
            orjson.dumps({"tool": tool, "input": {"agent_id": agent_id}})
            for agent_id in ids
            for tool in SWEEP_TOOLS
        ]
        url = base + args.tool_path
        statuses: Counter[str] = Counter()
        latencies: list[float] = []
        order = itertools.cycle(bodies)
        remaining = args.requests

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                body = next(order)
                t0 = time.perf_counter()
                try:
                    async with session.post(url, data=body) as r:
                        await r.read()
                        statuses[str(r.status)] += 1
                except (TimeoutError, aiohttp.ClientError) as exc:
                    statuses[type(exc).__name__] += 1
                latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        elapsed = time.perf_counter() - started

    latencies.sort()
    n = len(latencies)

    def pct(p: float) -> float:
        return latencies[min(n - 1, int(p * n))] * 1000.0 if n else 0.0

    print(
        f"{n} requests over {len(ids)} agents, concurrency {args.concurrency}: "
        f"{elapsed:.2f} s, {n / elapsed:,.0f} requests/s"
    )
    print(
        f"latency ms: p50 {pct(0.5):.1f}  p90 {pct(0.9):.1f}  p99 {pct(0.99):.1f}  max "
        f"{pct(1.0):.1f}"
    )
    print("statuses: " + ", ".join(f"{k}={v}" for k, v in sorted(statuses.items())))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.loadtest", description=__doc__.splitlines()[0]
    )
    p.add_argument(
        "--url", default="http://127.0.0.1:8765", help="sandbox base URL (default %(default)s)"
    )
    p.add_argument("--tool-path", default="/v1")
    p.add_argument("--admin-key", default="sandbox-admin-key")
    p.add_argument("--agents", type=int, default=10000)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--requests", type=int, default=40000)
    p.add_argument(
        "--prefix", default="load", help="prefix of the agents to seed (or to use with --no-seed)"
    )
    p.add_argument(
        "--no-seed", action="store_true", help="use live agents under --prefix instead of seeding"
    )
    p.add_argument("--timeout-s", type=float, default=60.0)
    args = p.parse_args(argv)
    if args.agents < 1 or args.concurrency < 1 or args.requests < 1:
        p.error("--agents, --concurrency and --requests must be positive")
    loop_factory: Any = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_run(args))


if __name__ == "__main__":
    main()
