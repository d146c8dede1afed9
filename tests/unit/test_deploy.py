"""docker-compose.yml: every queue has a worker, every command is a real entry point."""

from __future__ import annotations

import tomllib
from pathlib import Path

import click
import yaml

from cli.main import main as fleet_cli
from workers.queues import ALL_QUEUES

ROOT = Path(__file__).resolve().parents[2]


def _services() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]


def _resolve(command: list[str]) -> click.Command:
    """Walk the `fleet` command tree as the image's ENTRYPOINT would; fail if not real."""
    ctx = click.Context(fleet_cli)
    cmd: click.Command = fleet_cli
    args = list(command)
    while isinstance(cmd, click.Group) and args:
        sub = cmd.get_command(ctx, args[0])
        assert sub is not None, f"`fleet {' '.join(command)}`: no such command {args[0]!r}"
        cmd, args = sub, args[1:]
    # The remaining words must parse as that command's arguments.
    cmd.make_context(cmd.name or "fleet", args, resilient_parsing=False)
    return cmd


def test_entrypoint_is_the_fleet_console_script() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["fleet"] == "cli.main:main"
    assert 'ENTRYPOINT ["fleet"]' in (ROOT / "deploy" / "Dockerfile").read_text()


def test_every_queue_has_a_worker_service() -> None:
    services = _services()
    consumed = set()
    for svc in services.values():
        command = svc.get("command") or []
        if command[:1] == ["worker"]:
            consumed.add(command[1])
    assert consumed == {q.value for q in ALL_QUEUES}


def test_every_fleet_service_command_names_a_real_entry_point() -> None:
    for svc in _services().values():
        if "command" not in svc or svc.get("image", "").startswith(("redis", "postgres")):
            continue
        _resolve(svc["command"])  # raises on an unknown command or bad arguments


def test_beat_flower_sandbox_redis_postgres_present_and_configured_by_env_only() -> None:
    services = _services()
    assert {"redis", "postgres", "sandbox", "beat", "flower"} <= set(services)
    for name, svc in services.items():
        assert "volumes" not in svc or name in {"redis", "postgres"}, (
            f"{name} mounts files instead of using env"
        )
        env = svc.get("environment", {})
        assert isinstance(env, dict)
