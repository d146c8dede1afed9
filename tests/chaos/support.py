"""What the chaos tests share: `fleet up` as a subprocess, process lookup, and a report line."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stack.processes import free_port


def report(scenario: str, **figures: Any) -> None:
    """One line per scenario, read by whoever runs the suite (pytest -s) or its log."""
    print(f"\nchaos {scenario}: {json.dumps(figures, default=str)}", flush=True)


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line), from /proc."""
    table: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        table[int(entry.name)] = (int(stat[1]), cmdline)
    return table


def child_matching(parent: int, *words: str) -> int | None:
    """The direct child of ``parent`` whose command line holds every word."""
    for pid, (ppid, cmdline) in process_table().items():
        if ppid == parent and all(w in cmdline for w in words):
            return pid
    return None


def kill_group(pid: int) -> None:
    """SIGKILL a supervised process and its children (each runs in its own group)."""
    os.killpg(pid, signal.SIGKILL)


@dataclass
class FleetUp:
    """`fleet up` running as a subprocess in its own data directory, its output collected."""

    data_dir: Path
    ports: dict[str, int]
    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    def output(self) -> str:
        return "".join(self.lines)

    def statuses(self, prefix: str) -> dict[str, str]:
        db = self.data_dir / "fleet.db"
        with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
            try:
                rows = conn.execute(
                    "SELECT agent_id, status FROM agents WHERE agent_id LIKE ?", (prefix + "%",)
                ).fetchall()
            except sqlite3.OperationalError:  # schema not there yet
                return {}
        return dict(rows)

    def reissued_keys(self, prefix: str) -> set[str]:
        """Agents whose key came from the operator's import, not from their registration."""
        db = self.data_dir / "fleet.db"
        with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
            rows = conn.execute(
                "SELECT agent_id FROM agents WHERE agent_id LIKE ? "
                "AND json_extract(extra, '$.key.source') = 'import'",
                (prefix + "%",),
            ).fetchall()
        return {r[0] for r in rows}

    @property
    def sandbox_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['sandbox']}"


@contextlib.contextmanager
def fleet_up(
    tmp_path: Path, manifest: dict[str, Any], *args: str, env: dict[str, str] | None = None
) -> Iterator[FleetUp]:
    """`fleet up --demo --manifest M` on free ports; Ctrl-C at the end, which must stop it clean."""
    ports = {name: free_port() for name in ("redis", "sandbox", "flower", "api")}
    manifest_file = tmp_path / "manifest.yaml"
    manifest_file.write_text(yaml.safe_dump(manifest), encoding="utf-8")
    data_dir = tmp_path / "var"
    full_env = {
        **os.environ,
        "FLEET_DATA_DIR": str(data_dir),
        "FLEET_REDIS__EMBEDDED_PORT": str(ports["redis"]),
        "FLEET_SANDBOX__PORT": str(ports["sandbox"]),
        "FLEET_FLOWER__PORT": str(ports["flower"]),
        "FLEET_API__PORT": str(ports["api"]),
        **(env or {}),
    }
    full_env.pop("FLEET_REDIS__URL", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "up", "--demo", "--manifest", str(manifest_file), *args],
        env=full_env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    up = FleetUp(data_dir, ports, process)

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            up.lines.append(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        yield up
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        try:
            process.wait(90)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        reader.join(10)
        if process.stdout is not None:
            process.stdout.close()
        # Kept beside the run's data for whoever reads a failure (pytest keeps tmp_path).
        (tmp_path / "fleet-up.log").write_text(up.output(), encoding="utf-8")
