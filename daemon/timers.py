"""The timer sweep: fires ``timer.fired`` for runs whose ``wake_at`` has passed.

Timers this replica set itself are also fired at their moment through :mod:`daemon.wakeups`
(``expect``); the sweep finds every other one (set by another replica, or before a restart).

No sleeps and no in-memory waits (DESIGN.md §7 rule 3): a wait is a deadline in the run
document. The event id is ``timer~<seq>``, so when two replicas fire the same timer the
store's transaction applies it once and records the other as a duplicate.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import structlog

from daemon.engine import Engine
from daemon.store import Applied
from daemon.wakeups import Wakeups

log = structlog.get_logger("podium.timers")


class TimerSweep:
    def __init__(self, engine: Engine, interval: float, wakeups: Wakeups | None = None) -> None:
        self.engine = engine
        self.interval = interval
        self.wakeups = wakeups
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="timer-sweep", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sweep()
            self._stop.wait(self.interval)

    def expect(self, applied: Applied) -> None:
        """After a transition committed here: fire the run's timer at its ``wake_at``, or forget
        the wake-up of one the transition cleared."""
        if self.wakeups is None or applied.decision is None or not applied.decision.applied:
            return
        run, key = applied.decision.run, ("timer", applied.run_id)
        if run.wake_at is None or run.timer is None:
            self.wakeups.cancel(key)
            return
        delay = (run.wake_at - datetime.now(UTC)).total_seconds()
        run_id, seq = applied.run_id, run.timer.seq
        self.wakeups.at(key, delay, lambda: self._fire(run_id, seq))

    def _fire(self, run_id: str, seq: int) -> None:
        with structlog.contextvars.bound_contextvars(run_id=run_id):
            self.engine.fire_timer(run_id, seq)

    def sweep(self) -> int:
        fired = 0
        try:
            due = self.engine.store.due_timers(datetime.now(UTC))
        except Exception as exc:  # noqa: BLE001 - Firestore briefly away: next tick
            log.warning("timer sweep failed", error=repr(exc))
            return 0
        for run_id, seq in due:
            if self._stop.is_set():
                break
            try:
                applied = self.engine.fire_timer(run_id, seq)
                fired += applied.outcome == "applied"
            except Exception as exc:  # noqa: BLE001 - e.g. contention with another replica
                log.info("timer not fired this time", run_id=run_id, seq=seq, error=repr(exc))
        return fired
