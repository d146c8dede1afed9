"""Group commit for audit producers with many threads.

A threads-pool worker provisioning a hundred agents at once produces a
hundred audit events a second, one per thread. Sent one per message, each
costs the audit worker a whole message; here the threads
that record within a few milliseconds of each other share one message. Each
caller still waits until its own event has been handed to the queue, so a
worker killed afterwards loses nothing that a caller believed sent.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future

from fleet.audit.events import AuditEvent


class GroupSink:
    def __init__(
        self, send: Callable[[Sequence[AuditEvent]], None], *, gather_s: float = 0.005
    ) -> None:
        self._send = send
        self._gather_s = gather_s
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: list[AuditEvent] = []
        self._waiters: list[Future[None]] = []
        self._thread = threading.Thread(target=self._run, name="audit-group-sink", daemon=True)
        self._thread.start()

    def __call__(self, events: Sequence[AuditEvent]) -> None:
        done: Future[None] = Future()
        with self._lock:
            self._pending.extend(events)
            self._waiters.append(done)
            self._wake.notify()
        done.result()  # re-raises if sending failed

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._pending:
                    self._wake.wait()
            # Let the other threads that are about to record join this batch.
            threading.Event().wait(self._gather_s)
            with self._lock:
                batch, self._pending = self._pending, []
                waiters, self._waiters = self._waiters, []
            try:
                self._send(batch)
            except BaseException as exc:  # noqa: BLE001 - handed to every waiting caller
                for waiter in waiters:
                    waiter.set_exception(exc)
            else:
                for waiter in waiters:
                    waiter.set_result(None)
