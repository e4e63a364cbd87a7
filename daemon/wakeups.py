"""Wake-ups at their moment: an in-memory timer wheel fed by this replica's own writes.

Two kinds of work wait on a deadline kept in a document: a run's timer (``wake_at``) and an
effect whose re-check or retry is due (its ``lease_expires``, after ``NotReady`` or a backoff).
The sweeps find both in any replica, every ``sweep_interval_seconds``; on its own that makes
every such wait last until the next sweep. This replica also remembers the deadlines it wrote
itself and acts on each at its moment (issue 15.3).

The wheel only accelerates: it is lost with the process, and the documents still hold every
deadline for the sweeps. Acting twice is harmless (a timer's event id is deduplicated, an
effect's claim is conditional on its lease having expired), so the wheel and the sweeps need
no coordination. It is bounded: past ``limit`` pending wake-ups new ones are left to the sweeps.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable, Hashable

import structlog

log = structlog.get_logger("podium.wakeups")

Action = Callable[[], object]


class Wakeups:
    """``at(key, delay, action)``: run ``action`` once, ``delay`` seconds from now, on one thread."""

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._heap: list[tuple[float, int, Hashable]] = []
        self._due: dict[Hashable, tuple[int, Action]] = {}  # key -> its latest (ticket, action)
        self._tickets = itertools.count()
        self._cv = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def __len__(self) -> int:
        with self._cv:
            return len(self._due)

    def at(self, key: Hashable, delay: float, action: Action) -> bool:
        """Schedule ``action`` for ``key`` (replacing an earlier one for it). False if full or stopped."""
        with self._cv:
            if self._stopped or (key not in self._due and len(self._due) >= self.limit):
                return False
            ticket = next(self._tickets)
            self._due[key] = (ticket, action)
            heapq.heappush(self._heap, (time.monotonic() + max(delay, 0.0), ticket, key))
            self._cv.notify()
        return True

    def cancel(self, key: Hashable) -> None:
        """Forget ``key``'s pending wake-up, if any (its heap entry is skipped when it comes up)."""
        with self._cv:
            self._due.pop(key, None)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="wakeups", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        with self._cv:
            self._stopped = True
            self._heap.clear()
            self._due.clear()
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def _next(self) -> Action | None:
        """Wait for the next due action (None when stopped). Superseded entries are skipped."""
        with self._cv:
            while not self._stopped:
                if not self._heap:
                    self._cv.wait()
                    continue
                when, ticket, key = self._heap[0]
                wait = when - time.monotonic()
                if wait > 0:
                    self._cv.wait(wait)
                    continue
                heapq.heappop(self._heap)
                current = self._due.get(key)
                if current is not None and current[0] == ticket:
                    del self._due[key]
                    return current[1]
            return None

    def _loop(self) -> None:
        while (action := self._next()) is not None:
            try:
                action()
            except Exception as exc:  # noqa: BLE001 - the sweeps still hold the deadline
                log.info("wake-up failed; the sweep will retry", error=repr(exc))
