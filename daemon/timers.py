"""The timer sweep: fires ``timer.fired`` for runs whose ``wake_at`` has passed.

No sleeps and no in-memory waits (DESIGN.md §7 rule 3): a wait is a deadline in the run
document. The event id is ``timer~<seq>``, so when two replicas fire the same timer the
store's transaction applies it once and records the other as a duplicate.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import structlog

from daemon.engine import Engine

log = structlog.get_logger("podium.timers")


class TimerSweep:
    def __init__(self, engine: Engine, interval: float) -> None:
        self.engine = engine
        self.interval = interval
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
