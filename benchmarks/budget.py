"""`fleet bench budget`: many admissions at once from several processes against one small
budget, then the same with the budget store stopped.

Phase 1: CONCURRENCY reservations, each an estimate from the policy's model prices
(mixed models and token counts, seeded), fired at once from PROCESSES real processes
(``multiprocessing``, spawn), THREADS each, all released by one barrier, against a
fleet-day budget of BUDGET in a Redis the bench starts. The answer is the sum admitted
against the budget (``overshoot`` must be exactly 0.00) and the fleet-day total Redis
holds (it must equal the sum admitted). Phase 2: that Redis is stopped and the same
number of admissions is fired again: every one must be refused (``store_unreachable``).

The limit, in the same run: the same processes and threads each making one bare
round trip to the same Redis (a ``PING``) per admission; the ratio is the admissions'
wall time against it.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import queue
import random
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import click

from benchmarks.common import workdir

MODELS = (("small", 40), ("mid", 800), ("frontier", 2000), ("frontier", 6000))


def bench_policy(budget: Decimal, per_agent_hour: Decimal | None = None) -> Any:
    """The default policy's budgets with a fleet-day ceiling of ``budget``."""
    from config.settings import load_settings

    base = load_settings().policy.budgets
    hour = per_agent_hour if per_agent_hour is not None else budget
    return base.model_copy(
        update={
            "fleet_day": budget,
            "per_task": min(base.per_task, budget, hour),
            "per_agent_hour": hour,
        }
    )


def make_charges(
    count: int, policy: Any, *, fleet: str, agents: int, seed: int = 7
) -> list[dict[str, str]]:
    """``count`` charges (as JSON-able dicts) with estimates from the policy's prices."""
    from fleet.budgets.admission import estimate_cost

    rng = random.Random(seed)
    run = uuid.uuid4().hex[:8]
    out = []
    for i in range(count):
        model, tokens = rng.choice(MODELS)
        tokens = rng.randint(tokens // 2, tokens)
        amount = estimate_cost(policy, model, tokens, None)
        out.append(
            {
                "task_id": f"bench-{run}-{i}",
                "agent_id": f"agent-{run}-{i % agents}",
                "fleet": fleet,
                "amount": format(amount, "f"),
                "model": model,
            }
        )
    return out


def _admit_worker(
    redis_url: str,
    policy_json: str,
    charges: list[dict[str, str]],
    threads: int,
    barrier: Any,
    out: Any,
    timeout_s: float,
    mode: str,
) -> None:
    """One process: wait for the barrier, then reserve its charges on ``threads`` threads.
    Puts (answers, wall seconds) on ``out``: each answer (kind, budget, amount)."""
    import redis as redis_lib

    from config.policy import Budgets as BudgetPolicy
    from fleet.budgets.admission import Admitted, Budgets, Charge
    from fleet.clock import SystemClock

    policy = BudgetPolicy.model_validate_json(policy_json)
    client = redis_lib.Redis.from_url(
        redis_url,
        decode_responses=True,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        max_connections=threads + 4,
    )
    pauses: list[Any] = []
    budgets = Budgets(client, policy, SystemClock(), on_pause=pauses.append)

    def one(c: dict[str, str]) -> tuple[str, str, str]:
        if mode == "ping":
            client.ping()
            return ("ping", "", c["amount"])
        answer = budgets.reserve(
            Charge(c["task_id"], c["agent_id"], c["fleet"], Decimal(c["amount"]), c["model"])
        )
        if isinstance(answer, Admitted):
            return ("admitted", "", format(answer.amount, "f"))
        return ("refused", answer.budget, c["amount"])

    with ThreadPoolExecutor(threads) as pool:
        if mode != "ping":
            # Warm: connections open and the script loaded before the barrier.
            try:
                client.ping()
                budgets.spending_paused("warm")
            except redis_lib.RedisError:
                pass
        barrier.wait()
        started = time.perf_counter()
        answers = list(pool.map(one, charges))
        wall = time.perf_counter() - started
    out.put((answers, wall, len(pauses)))


def admit_concurrently(
    redis_url: str,
    policy: Any,
    charges: list[dict[str, str]],
    *,
    processes: int,
    threads: int,
    timeout_s: float = 2.0,
    mode: str = "reserve",
) -> dict[str, Any]:
    """Fire ``charges`` from ``processes`` spawned processes at once; the tally."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(processes)
    out = ctx.Queue()
    shares = [charges[i::processes] for i in range(processes)]
    procs = [
        ctx.Process(
            target=_admit_worker,
            args=(
                redis_url,
                policy.model_dump_json(),
                share,
                threads,
                barrier,
                out,
                timeout_s,
                mode,
            ),
        )
        for share in shares
    ]
    for p in procs:
        p.start()
    results: list[Any] = []
    deadline = time.monotonic() + 300
    while len(results) < len(procs):
        try:
            results.append(out.get(timeout=0.5))
        except queue.Empty:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if dead or time.monotonic() > deadline:
                for p in procs:
                    p.kill()
                raise RuntimeError(f"admitting processes failed (exit codes {dead})") from None
    for p in procs:
        p.join(30)
    answers = [a for r in results for a in r[0]]
    admitted = [Decimal(a[2]) for a in answers if a[0] == "admitted"]
    refused = Counter(a[1] for a in answers if a[0] == "refused")
    return {
        "answers": len(answers),
        "admitted": len(admitted),
        "admitted_sum": sum(admitted, Decimal(0)),
        "refused": sum(refused.values()),
        "refused_by": dict(refused),
        "pause_events": sum(r[2] for r in results),
        "wall_s": max(r[1] for r in results),
        "exit_codes": [p.exitcode for p in procs],
    }


def run(
    concurrency: int,
    budget: Decimal,
    processes: int,
    threads: int,
    agents: int,
    keep: str | None,
) -> None:
    import redis as redis_lib

    from fleet.budgets.admission import fleet_day_key, utc_day
    from stack.processes import Supervisor, free_port, start_redis

    policy = bench_policy(budget)
    fleet = f"bench-{uuid.uuid4().hex[:6]}"
    with workdir(keep, "fleet-bench-budget-") as base, Supervisor(log_dir=base / "logs") as sup:
        port = free_port()
        redis_proc = start_redis(sup, port, Path(base) / "redis")
        url = f"redis://127.0.0.1:{port}/0"
        click.echo(f"redis     127.0.0.1:{port} (started for the bench)")
        charges = make_charges(concurrency, policy, fleet=fleet, agents=agents)
        offered = sum((Decimal(c["amount"]) for c in charges), Decimal(0))
        click.echo(
            f"phase 1   {concurrency} admissions ({format(offered, 'f')} {policy.currency} "
            f"asked) from {processes} processes × {threads} threads against a fleet-day "
            f"budget of {budget}"
        )
        limit = admit_concurrently(
            url, policy, charges, processes=processes, threads=threads, mode="ping"
        )
        live = admit_concurrently(url, policy, charges, processes=processes, threads=threads)
        client = redis_lib.Redis.from_url(url, decode_responses=True)
        held = Decimal(int(client.get(fleet_day_key(fleet, utc_day(time.time()))) or 0)) / 10**6
        overshoot = max(live["admitted_sum"] - budget, Decimal(0))
        click.echo(
            f"          admitted {live['admitted']} ({format(live['admitted_sum'], 'f')}), "
            f"refused {live['refused']} {live['refused_by']}; Redis holds {format(held, 'f')}; "
            f"{live['wall_s']:.3f} s (limit, bare PINGs: {limit['wall_s']:.3f} s)"
        )
        client.close()
        sup.stop(redis_proc)
        down_charges = make_charges(concurrency, policy, fleet=fleet, agents=agents, seed=8)
        click.echo(f"phase 2   Redis stopped; {concurrency} admissions again")
        down = admit_concurrently(
            url, policy, down_charges, processes=processes, threads=threads, timeout_s=1.0
        )
        click.echo(
            f"          admitted {down['admitted']}, refused {down['refused']} "
            f"{down['refused_by']} in {down['wall_s']:.3f} s"
        )
        line = {
            "bench": "budget",
            "concurrency": concurrency,
            "processes": processes,
            "threads": threads,
            "budget": format(budget, "f"),
            "asked": format(offered, "f"),
            "admitted": live["admitted"],
            "admitted_sum": format(live["admitted_sum"], "f"),
            "refused": live["refused"],
            "refused_by": live["refused_by"],
            "redis_fleet_day": format(held, "f"),
            "overshoot": format(overshoot.quantize(Decimal("0.01")), "f"),
            "overshoot_exact": format(overshoot, "f"),
            "pause_events": live["pause_events"],
            "admissions_s": round(live["wall_s"], 4),
            "admissions_per_s": round(concurrency / live["wall_s"], 1) if live["wall_s"] else None,
            "limit_s": round(limit["wall_s"], 4),
            "ratio": round(live["wall_s"] / limit["wall_s"], 2) if limit["wall_s"] else None,
            "redis_stopped": {
                "admitted": down["admitted"],
                "refused": down["refused"],
                "refused_by": down["refused_by"],
                "all_refused": down["refused"] == concurrency and down["admitted"] == 0,
                "wall_s": round(down["wall_s"], 4),
            },
        }
        click.echo(json.dumps(line))
