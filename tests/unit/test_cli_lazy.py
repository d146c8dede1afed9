"""The root command loads a command's module only when that command runs."""

from __future__ import annotations

import subprocess
import sys

import click
from click.testing import CliRunner

from cli.main import COMMANDS, main


def test_every_listed_command_resolves_to_its_click_command() -> None:
    ctx = click.Context(main)
    for name in COMMANDS:
        command = main.get_command(ctx, name)
        assert isinstance(command, click.Command) and command.name == name, name
    assert main.get_command(ctx, "no-such-command") is None
    listed = CliRunner().invoke(main, ["--help"]).output
    assert all(f"  {name} " in listed for name in COMMANDS)


def test_a_command_does_not_import_what_only_others_need() -> None:
    probe = (
        "import sys; from cli.main import main\n"
        "try:\n    main(['users', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('fleet.provisioning.pipeline', 'celery', 'aiohttp')"
        " if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
