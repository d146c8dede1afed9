"""Whether a command written in a deployment file is a real entry point of ours: a console
script of pyproject.toml, then a command of its click tree with arguments that parse."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

import click

from cli.main import main as fleet_cli

ROOT = Path(__file__).resolve().parents[2]


def console_scripts() -> dict[str, str]:
    scripts: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "scripts"
    ]
    return scripts


def resolve(command: list[str], root: click.Command = fleet_cli) -> click.Command:
    """Walk a click command tree as the shell would; fail if the command is not real."""
    ctx = click.Context(root)
    cmd: click.Command = root
    args = list(command)
    while isinstance(cmd, click.Group) and args:
        sub = cmd.get_command(ctx, args[0])
        assert sub is not None, f"`{' '.join(command)}`: no such command {args[0]!r}"
        cmd, args = sub, args[1:]
    assert not isinstance(cmd, click.Group), f"`{' '.join(command)}` names only a group"
    # The remaining words must parse as that command's arguments.
    cmd.make_context(cmd.name or "fleet", args, resilient_parsing=False)
    return cmd


def resolve_script(argv: list[str]) -> click.Command:
    """argv[0] is one of our console scripts; the rest must be a real command of it."""
    target = console_scripts().get(argv[0])
    assert target is not None, f"{argv[0]} is not a console script of pyproject.toml"
    module, _, attribute = target.partition(":")
    root = getattr(importlib.import_module(module), attribute)
    return resolve(argv[1:], root)
