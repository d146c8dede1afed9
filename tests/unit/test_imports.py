"""Importing any module of the project changes nothing: no audit sink, beat entry or config."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("config", "fleet", "tasks", "workers", "web", "cli", "sandbox")

PROBE = """
import importlib, json, sys
from fleet import audit
from workers.app import app

def state():
    conf = {k: repr(v) for k, v in sorted(app.conf.items()) if k != "beat_schedule"}
    return {
        "sink": repr(audit.current_sink()),
        "beat": sorted(app.conf.beat_schedule),
        "conf": conf,
    }

before = state()
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps({"before": before, "after": state()}))
"""


def _modules() -> list[str]:
    names = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" in path.parts or path.name == "__main__.py":
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_importing_every_module_leaves_the_app_its_schedule_and_the_audit_sink_alone() -> None:
    modules = _modules()
    assert "tasks.audit" in modules and "web.app" in modules
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *modules],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    seen = json.loads(out.stdout.splitlines()[-1])
    assert seen["after"]["sink"] == "None" == seen["before"]["sink"]
    assert seen["after"]["beat"] == seen["before"]["beat"]
    assert seen["after"]["conf"] == seen["before"]["conf"]
