"""Measure a running sandbox (or any gateway whose admin key you hold) on the sweep's reads.

``python -m benchmarks.loadtest --agents 10000 --concurrency 200 --requests 40000``

Starts no server. It seeds ``--agents`` agents under ``--prefix`` through the
sandbox's control API (``POST /_sandbox/seed``), then sends ``--requests`` REST
calls from ``--concurrency`` concurrent workers over the gateway package's
keep-alive pool, cycling through the agents with the monitoring sweep's four
reads (get_balance, get_budget, query_metrics p99 and error rate; admin key),
and prints requests per second, latency percentiles and the status mix. The
last line is one JSON object with those figures. There is no limit to hold it
against: the client already is the bare one, so the figures are the server's.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from collections import Counter
from typing import Any

import httpx

from benchmarks.common import encoded_request, run_fast, seeded_ids
from fleet.gateway.wire import ConnectionPool, WireError
from fleet.monitoring.poller import wallet_operations


def _seed(url: str, admin_key: str, agents: int, prefix: str) -> list[str]:
    from sandbox.control import SandboxControl, SandboxError

    with SandboxControl(url, admin_key) as control:
        try:
            started = time.perf_counter()
            ids = seeded_ids(control, agents, prefix)
        except (SandboxError, httpx.HTTPError) as exc:
            raise SystemExit(f"seeding {agents} agents at {url} failed: {exc}") from None
    print(f"seeded {len(ids)} agents under {prefix!r} in {time.perf_counter() - started:.2f} s")
    return ids


async def _run(args: argparse.Namespace, ids: list[str]) -> dict[str, Any]:
    pool = ConnectionPool(args.url, limit=args.concurrency, connect_timeout_s=5.0)
    # Pre-encoded: the client should spend its CPU on sending.
    requests = [
        encoded_request(pool, op, args.admin_key)
        for a in ids
        for op in wallet_operations(a, via_admin=True)
    ]
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    order = itertools.islice(itertools.cycle(requests), args.requests)

    async def worker() -> None:
        for head, headers, body in order:
            t0 = time.perf_counter()
            try:
                answer = await pool.send(head, headers, body, args.timeout_s)
                statuses[str(answer.status_code)] += 1
            except WireError as exc:
                statuses[type(exc).__name__] += 1
            latencies.append(time.perf_counter() - t0)

    try:
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        elapsed = time.perf_counter() - started
    finally:
        await pool.close()

    latencies.sort()
    n = len(latencies)

    def pct(p: float) -> float:
        return round(latencies[min(n - 1, int(p * n))] * 1000.0, 1) if n else 0.0

    return {
        "requests": n,
        "agents": len(ids),
        "concurrency": args.concurrency,
        "elapsed_s": round(elapsed, 3),
        "requests_per_s": round(n / elapsed),
        "latency_ms": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": pct(1.0)},
        "statuses": dict(sorted(statuses.items())),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.loadtest", description=(__doc__ or "").splitlines()[0]
    )
    p.add_argument(
        "--url", default="http://127.0.0.1:8765", help="sandbox base URL (default %(default)s)"
    )
    p.add_argument("--admin-key", default="sandbox-admin-key")
    p.add_argument("--agents", type=int, default=10000)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--requests", type=int, default=40000)
    p.add_argument("--prefix", default="load", help="prefix of the agents to seed")
    p.add_argument("--timeout-s", type=float, default=60.0)
    args = p.parse_args(argv)
    if args.agents < 1 or args.concurrency < 1 or args.requests < 1:
        p.error("--agents, --concurrency and --requests must be positive")
    if not args.url.startswith(("http://", "https://")):
        p.error(f"--url: not an http(s) URL: {args.url!r}")
    args.url = args.url.rstrip("/")
    ids = _seed(args.url, args.admin_key, args.agents, args.prefix)
    out = run_fast(_run(args, ids))
    lat = out["latency_ms"]
    print(
        f"{out['requests']} requests over {len(ids)} agents, concurrency {args.concurrency}: "
        f"{out['elapsed_s']} s, {out['requests_per_s']:,} requests/s"
    )
    print(f"latency ms: p50 {lat['p50']}  p90 {lat['p90']}  p99 {lat['p99']}  max {lat['max']}")
    print("statuses: " + ", ".join(f"{k}={v}" for k, v in out["statuses"].items()))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
