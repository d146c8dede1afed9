"""Per-agent health classes from the policy's thresholds."""

from __future__ import annotations

import pytest

from config.policy import HealthPolicy, HealthThresholds
from config.settings import load_settings
from fleet.monitoring.health import Health, classify

POLICY = load_settings().policy.health


@pytest.mark.parametrize(
    ("error_rate", "p99", "expected"),
    [
        (0.0, 100.0, Health.HEALTHY),
        (0.05, 3000.0, Health.HEALTHY),  # at a threshold is not above it
        (0.0501, 100.0, Health.DEGRADED),
        (0.01, 3000.1, Health.DEGRADED),
        (0.10, 5000.0, Health.DEGRADED),
        (0.1001, 100.0, Health.CRITICAL),
        (0.0, 5000.1, Health.CRITICAL),
        (0.2, 4000.0, Health.CRITICAL),
        (None, 100.0, Health.HEALTHY),
        (0.3, None, Health.CRITICAL),
        (None, None, Health.UNKNOWN),
    ],
)
def test_default_thresholds(error_rate: float | None, p99: float | None, expected: Health) -> None:
    assert classify(POLICY, error_rate, p99) is expected


def test_thresholds_come_from_the_policy() -> None:
    strict = HealthPolicy(
        critical=HealthThresholds(error_rate=0.02, p99_ms=1000),
        degraded=HealthThresholds(error_rate=0.01, p99_ms=500),
    )
    assert classify(strict, 0.015, 100) is Health.DEGRADED
    assert classify(strict, 0.0, 1200) is Health.CRITICAL
    assert classify(POLICY, 0.015, 1200) is Health.HEALTHY
