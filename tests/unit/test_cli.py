"""The `fleet` command's surface: help that reads well, config errors as one line."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from cli.main import main


def test_help_lists_every_command() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("up", "sandbox", "worker", "beat", "flower", "status", "config"):
        assert command in result.output


def test_bad_setting_is_one_line_and_exit_2() -> None:
    # A real process, as a user would see it: no traceback, one line, the field named.
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "config"],
        env={"FLEET_WORKER__CONCURRENCY": "many", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "FLEET_WORKER__CONCURRENCY" in lines[0] and "worker.concurrency" in lines[0]
    assert "Traceback" not in proc.stderr


def test_config_masks_secrets() -> None:
    result = CliRunner().invoke(
        main, ["config"], env={"FLEET_GATEWAY__ADMIN_KEY": "very-secret-key"}
    )
    assert result.exit_code == 0, result.output
    assert "very-secret-key" not in result.output
    assert "valid" in result.output
