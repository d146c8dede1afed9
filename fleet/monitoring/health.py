"""Per-agent health classes (operations §2), from the thresholds in the policy.

critical: error rate above critical.error_rate, or p99 above critical.p99_ms;
degraded: the same against the degraded thresholds; healthy otherwise.
With neither number known the class is UNKNOWN: we do not guess.
"""

from __future__ import annotations

from config.policy import HealthPolicy
from fleet.monitoring.snapshot import Health


def classify(policy: HealthPolicy, error_rate: float | None, p99_ms: float | None) -> Health:
    if error_rate is None and p99_ms is None:
        return Health.UNKNOWN
    crit, deg = policy.critical, policy.degraded
    if (error_rate is not None and error_rate > crit.error_rate) or (
        p99_ms is not None and p99_ms > crit.p99_ms
    ):
        return Health.CRITICAL
    if (error_rate is not None and error_rate > deg.error_rate) or (
        p99_ms is not None and p99_ms > deg.p99_ms
    ):
        return Health.DEGRADED
    return Health.HEALTHY


__all__ = ["Health", "classify"]
