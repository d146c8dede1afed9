"""`fleet up`'s supervisor: a child that dies is restarted with backoff; one that keeps
dying as it starts stops the whole (real short-lived processes, no stack)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from stack.parts import wait_until
from stack.processes import RestartPolicy, StartError, Supervisor

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]
FAILER = [sys.executable, "-c", "raise SystemExit(3)"]


def test_backoff_doubles_after_each_quick_exit_up_to_the_max() -> None:
    policy = RestartPolicy(backoff_s=1, backoff_max_s=5, quick_exit_s=10, max_quick_exits=9)
    assert [policy.delay(n) for n in range(6)] == [1, 1, 2, 4, 5, 5]


def test_a_killed_child_is_restarted_and_said_so(tmp_path: Path) -> None:
    policy = RestartPolicy(backoff_s=0.2, quick_exit_s=0.1, max_quick_exits=3)
    with Supervisor(log_dir=tmp_path) as sup:
        child = sup.start("sleeper", SLEEPER)
        first_pid = child.process.pid
        time.sleep(0.3)  # lives past quick_exit_s: its death is not a start-up error
        os.killpg(first_pid, signal.SIGKILL)
        said: list[str] = []
        wait_until(lambda: said.extend(sup.tend(policy)) or child.restarts == 1, timeout_s=10)
        assert child.alive() and child.process.pid != first_pid
        assert said[0].startswith("sleeper exited (status -9)") and "restarting in 0.2 s" in said[0]
        assert said[-1].startswith("sleeper restarted (restart 1")


def test_a_child_that_keeps_dying_as_it_starts_stops_everything(tmp_path: Path) -> None:
    policy = RestartPolicy(backoff_s=0.01, quick_exit_s=5, max_quick_exits=3)
    with Supervisor(log_dir=tmp_path) as sup:
        child = sup.start("failer", FAILER)
        with pytest.raises(StartError, match=r"failer exited 3 times in a row within 5 s"):
            while True:
                sup.tend(policy)
                time.sleep(0.01)
        assert child.restarts == 2
