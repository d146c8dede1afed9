"""One compliance sample per agent: the gateway's verdict, cross-checked with our own snapshot.

The rule, per agent and check:

=====================  ==============================  ===================================
gateway answer         fresh local snapshot            sample
=====================  ==============================  ===================================
breach (terms T)       anything                        BREACH (T): the gateway holds the
                                                       contract and sees every term
compliant              our metrics breach a term       INCONCLUSIVE: the two disagree; it
                                                       opens nothing and closes nothing
compliant              agrees, or no fresh snapshot    COMPLIANT
failed (any error)     fresh                           the snapshot's verdict (its stored
                                                       SLA reading, and our own metrics)
failed                 none, stale, or poll failed     UNKNOWN: changes nothing
=====================  ==============================  ===================================

"Our own metrics" are the terms the snapshot can measure: p99 latency and, when
a contract sets one, the error rate. A snapshot is fresh when the metrics sweep
wrote it less than ``sla.snapshot_max_age_s`` before the check.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from fleet.gateway import GatewayError, tools
from fleet.gateway.client import AsyncGatewayClient
from fleet.gateway.schemas import SlaComplianceResult
from fleet.monitoring.snapshot import Health, Snapshot


class Verdict(StrEnum):
    BREACH = "breach"
    COMPLIANT = "compliant"
    INCONCLUSIVE = "inconclusive"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Sample:
    agent_id: str
    at: datetime
    verdict: Verdict
    breached_terms: tuple[str, ...] = ()
    margin_pct: float | None = None
    source: str = "gateway"  # gateway | snapshot | none
    note: str = ""

    def to_redis(self) -> dict[str, str]:
        return {
            "at": self.at.isoformat(),
            "verdict": self.verdict.value,
            "terms": ",".join(self.breached_terms),
            "margin_pct": "" if self.margin_pct is None else str(self.margin_pct),
            "source": self.source,
            "note": self.note[:300],
        }


GatewayAnswer = SlaComplianceResult | GatewayError | None


def local_breaches(terms: Mapping[str, Any], snap: Snapshot) -> tuple[str, ...]:
    """The contract terms our own last poll shows broken (only those it can measure)."""
    out = []
    limit = terms.get("p99_latency_ms")
    if limit is not None and snap.latency_p99 is not None and snap.latency_p99 > float(limit):
        out.append("p99_latency_ms")
    limit = terms.get("max_error_rate")
    if limit is not None and snap.error_rate is not None and snap.error_rate > float(limit):
        out.append("max_error_rate")
    return tuple(out)


def is_fresh(snap: Snapshot | None, at: datetime, max_age_s: float) -> bool:
    return (
        snap is not None
        and snap.health is not Health.UNKNOWN
        and at.timestamp() - snap.polled_at <= max_age_s
    )


def decide(
    agent_id: str,
    at: datetime,
    answer: GatewayAnswer,
    snapshot: Snapshot | None,
    terms: Mapping[str, Any],
    snapshot_max_age_s: float,
) -> Sample:
    fresh = is_fresh(snapshot, at, snapshot_max_age_s)
    ours = local_breaches(terms, snapshot) if fresh and snapshot is not None else ()
    if isinstance(answer, SlaComplianceResult):
        if not answer.compliant:
            return Sample(
                agent_id,
                at,
                Verdict.BREACH,
                tuple(answer.breached_terms) or ("unspecified",),
                answer.margin_pct,
                "gateway",
            )
        if ours:
            return Sample(
                agent_id,
                at,
                Verdict.INCONCLUSIVE,
                ours,
                answer.margin_pct,
                "gateway",
                f"gateway says compliant; our last poll breaches {', '.join(ours)}",
            )
        return Sample(agent_id, at, Verdict.COMPLIANT, (), answer.margin_pct, "gateway")
    error = f"{type(answer).__name__}: {answer}" if answer is not None else "not checked"
    if fresh and snapshot is not None:
        stored = tuple(snapshot.breached_terms) if snapshot.sla_compliant is False else ()
        terms_broken = tuple(dict.fromkeys((*stored, *ours)))
        if snapshot.sla_compliant is False or ours:
            return Sample(
                agent_id,
                at,
                Verdict.BREACH,
                terms_broken or ("unspecified",),
                snapshot.sla_margin_pct,
                "snapshot",
                f"gateway check failed ({error}); verdict from the metrics snapshot",
            )
        return Sample(
            agent_id,
            at,
            Verdict.COMPLIANT,
            (),
            snapshot.sla_margin_pct,
            "snapshot",
            f"gateway check failed ({error}); verdict from the metrics snapshot",
        )
    return Sample(
        agent_id,
        at,
        Verdict.UNKNOWN,
        (),
        None,
        "none",
        f"gateway check failed ({error}); no fresh snapshot",
    )


async def check_agents(
    client: AsyncGatewayClient, agent_ids: Sequence[str], in_flight: int
) -> dict[str, SlaComplianceResult | GatewayError]:
    """check_sla_compliance for every agent, at most ``in_flight`` at a time; each failure stays its own."""
    gate = asyncio.Semaphore(in_flight)

    async def one(agent_id: str) -> tuple[str, SlaComplianceResult | GatewayError]:
        async with gate:
            try:
                return agent_id, await client.run(tools.check_sla_compliance(agent_id))
            except GatewayError as exc:
                return agent_id, exc
            except Exception as exc:  # noqa: BLE001 - one agent's surprise must not sink the batch
                return agent_id, GatewayError(
                    f"{type(exc).__name__}: {exc}", tool="check_sla_compliance"
                )

    return dict(await asyncio.gather(*(one(a) for a in agent_ids)))
