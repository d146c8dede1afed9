"""A flood on escalation.tier1 does not delay a freeze on escalation.tier4 (real worker
processes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet import audit
from stack.local import local_stack
from tests.support.escalation_flood import run_flood

pytestmark = pytest.mark.integration


def test_5000_tier1_actions_do_not_delay_a_tier4_freeze(tmp_path: Path) -> None:
    with local_stack(tmp_path) as stack, audit.capture():
        stack.start_worker(["escalation.tier1"], concurrency=4, pool="threads", name="tier1")
        stack.start_worker(["escalation.tier4"], concurrency=2, pool="threads", name="tier4")
        result = run_flood(stack, 5000)
    assert result["freeze_status"] == "done" and result["paused"] and result["wallet_frozen"]
    assert result["deposit_refused"], "the gateway itself holds the wallet frozen"
    # The freeze finished while the tier-1 backlog was still being worked off.
    assert result["tier1_done_at_freeze"] >= 50
    assert result["tier1_pending_at_freeze"] > 1000 and result["tier1_queued_at_freeze"] > 0
    assert result["freeze_s"] < 10
