"""`fleet up --demo`'s callers: a little work for the demo fleet, so the pages about work
and money (Money, the weekly FinOps review, an agent's recent tasks, the autoscaler's
pending counts) show something a newcomer can read.

Each step sends what any other system would send, one ``routing.submit_tasks`` message:
a task per manifest group asking for the group's first capability, paid by its segment,
its estimated tokens rotating so the routing policy picks the small model for some and
mid or frontier for others. A group with a second capability has its larger tasks spawn
a sub-task of that capability in the same trace, once the parent's task id is known: a
task tree whose cost FinOps rolls up to its root. Nothing starts before one of the
fleet's agents is active (earlier tasks could only be refused as unroutable).
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from fleet.provisioning.manifest import FleetManifest
from fleet.runtime import Send
from fleet.work import store
from fleet.work.submission import NAME_MAX, NAME_PATTERN
from workers.queues import TaskName

# Under 100 estimated tokens the routing policy picks the small model; above, mid or frontier.
ROOT_TOKENS = (60, 800, 2400)
SUB_TOKENS = 300
SPAWNS_FROM = 800
# A parent not recorded after this many steps (refused, the loop paused) spawns nothing.
PARENT_WAIT_STEPS = 5
_NAME = re.compile(NAME_PATTERN)


@dataclass(frozen=True)
class Caller:
    """One manifest group's traffic."""

    segment: str
    capability: str
    sub_capability: str | None = None


@dataclass
class _Parent:
    idempotency_key: str
    trace_id: str
    caller: Caller
    steps_left: int = PARENT_WAIT_STEPS


def callers_of(manifest: FleetManifest) -> list[Caller]:
    """A caller per group that has a capability a task can ask for."""
    out = []
    for group in manifest.agents:
        names = [c for c in group.capabilities if len(c) <= NAME_MAX and _NAME.match(c)]
        if names:
            out.append(Caller(group.id_prefix, names[0], names[1] if len(names) > 1 else None))
    return out


class DemoTraffic:
    def __init__(
        self,
        send: Send,
        hot: redis.Redis,
        fleet: str,
        callers: Sequence[Caller],
        *,
        ready: Callable[[], bool],
    ) -> None:
        self._send = send
        self._hot = hot
        self._fleet = fleet
        self._callers = list(callers)
        self._ready = ready
        self._started = False
        # Idempotency keys are unique per run: a restarted demo keeps its Redis.
        self._run = uuid.uuid4().hex[:8]
        self._sent = 0
        self._parents: list[_Parent] = []

    @property
    def callers(self) -> list[Caller]:
        return list(self._callers)

    def step(self) -> int:
        """Send one step's tasks; how many (0 until the fleet has an active agent)."""
        if not self._started:
            if not self._callers or not self._ready():
                return 0
            self._started = True
        tasks = self._sub_tasks() + [self._root(c) for c in self._callers]
        self._send([(TaskName.SUBMIT_TASKS.value, {"tasks": tasks})])
        return len(tasks)

    def _key(self) -> str:
        self._sent += 1
        return f"demo-{self._run}-{self._sent}"

    def _task(self, caller: Caller, kind: str, capability: str, tokens: int) -> dict[str, Any]:
        return {
            "type": kind,
            "capabilities": [capability],
            "estimated_tokens": tokens,
            "payer": {"kind": "segment", "id": caller.segment},
            "idempotency_key": self._key(),
            "fleet": self._fleet,
            "input": f"demo {kind} for {caller.segment}",
        }

    def _root(self, caller: Caller) -> dict[str, Any]:
        tokens = ROOT_TOKENS[self._sent % len(ROOT_TOKENS)]
        task = self._task(caller, "demo-request", caller.capability, tokens)
        if caller.sub_capability is not None and tokens >= SPAWNS_FROM:
            trace_id = secrets.token_hex(16)
            task["trace"] = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
            self._parents.append(_Parent(task["idempotency_key"], trace_id, caller))
        return task

    def _sub_tasks(self) -> list[dict[str, Any]]:
        """A sub-task for each parent that has run since the last step."""
        if not self._parents:
            return []
        ids = self._hot.mget([store.idem_key(p.idempotency_key) for p in self._parents])
        held = [str(i) if i else "" for i in ids]
        done = store.phases(self._hot, [i for i in held if i])
        phase = dict(zip([i for i in held if i], done, strict=True))
        out, waiting = [], []
        for parent, task_id in zip(self._parents, held, strict=True):
            sub = parent.caller.sub_capability
            if task_id and phase.get(task_id) == "done" and sub is not None:
                task = self._task(parent.caller, "demo-subtask", sub, SUB_TOKENS)
                task["parent_task_id"] = task_id
                task["trace"] = {"traceparent": f"00-{parent.trace_id}-{secrets.token_hex(8)}-01"}
                out.append(task)
            elif parent.steps_left > 1:
                parent.steps_left -= 1
                waiting.append(parent)
        self._parents = waiting
        return out
