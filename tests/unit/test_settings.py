"""Settings and policy validation: bad input is one line naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.errors import ConfigError
from config.settings import DEFAULT_POLICY_FILE, load_settings


def test_defaults_load_and_match_the_operations_rules() -> None:
    settings = load_settings()
    policy = settings.policy
    assert set(policy.sla_templates) >= {"standard-support", "premium-support"}
    assert policy.sla_templates["standard-support"].p99_latency_ms == 2000
    assert [t.after_s for t in policy.escalation.tiers] == [0, 300, 900, 1800]
    assert str(policy.budgets.fleet_day) == "2000.00"
    minutes = policy.error_budget.slo_window_days * 24 * 60 * policy.error_budget.allowed_fraction
    assert round(minutes) == 216


def test_bad_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_GATEWAY__TIMEOUT_S", "soon")
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert "\n" not in message
    assert "FLEET_GATEWAY__TIMEOUT_S" in message and "gateway.timeout_s" in message
    assert "number" in message


def test_unknown_setting_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="gateway.retries"):
        load_settings(gateway={"retries": 3})


def test_bad_yaml_value_names_file_and_field(tmp_path: Path) -> None:
    text = DEFAULT_POLICY_FILE.read_text().replace('fleet_day: "2000.00"', 'fleet_day: "lots"')
    bad = tmp_path / "policy.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(policy_file=bad)
    message = str(info.value)
    assert "\n" not in message
    assert str(bad) in message and "budgets.fleet_day" in message


def test_tiers_out_of_order_are_refused(tmp_path: Path) -> None:
    text = DEFAULT_POLICY_FILE.read_text().replace("after_s: 300,", "after_s: 3000,")
    bad = tmp_path / "policy.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match=r"escalation\.tiers: .*after_s must not decrease"):
        load_settings(policy_file=bad)


def test_not_yaml_is_refused_with_its_position(tmp_path: Path) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_text("sla_templates: [unclosed\n")
    with pytest.raises(ConfigError, match=r"invalid YAML in .*policy.yaml at line \d+"):
        load_settings(policy_file=bad)


def test_missing_policy_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read policy file"):
        load_settings(policy_file=tmp_path / "absent.yaml")


def test_demo_policy_extends_the_defaults() -> None:
    demo = load_settings(policy_file=DEFAULT_POLICY_FILE.parent / "demo-policy.yaml").policy
    default = load_settings().policy
    assert [t.after_s for t in demo.escalation.tiers] == [0, 10, 20, 30]
    assert demo.sla_templates == default.sla_templates  # everything else inherited


def test_extends_cycle_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="extends itself"):
        load_settings(policy_file=tmp_path / "a.yaml")


def test_heartbeat_cadence_and_silences_default_to_the_issue() -> None:
    monitoring = load_settings().policy.monitoring
    assert monitoring.heartbeat_interval_s == 60
    assert (monitoring.unknown_after_s, monitoring.critical_after_s) == (180, 600)


def test_critical_silence_shorter_than_unknown_is_refused(tmp_path: Path) -> None:
    text = DEFAULT_POLICY_FILE.read_text().replace(
        "heartbeat_critical_after: 10", "heartbeat_critical_after: 2"
    )
    bad = tmp_path / "policy.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match=r"monitoring: .*critical_after must be above"):
        load_settings(policy_file=bad)
