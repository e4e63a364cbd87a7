"""Group commit of one run's outcomes (issue 15.2b): several outcomes, one transaction.

A fan-out phase (three preflights, three builds, the deploys) ends with its effects reporting at
nearly the same moment, each of them one transaction on the same run document, one after the
other. Here the first outcome of a run to arrive leads: it waits a moment (at most ``wait``) while
other effects of the same run are still running in this replica, then applies every outcome
of the run that has arrived meanwhile in one transaction (``RunStore.apply_many``). Outcomes
that arrive while that transaction runs are applied together by the next leader. Every caller
gets its own event's result and does its own post-commit work, as if it had applied alone.

Nothing is weaker for it: each outcome is still its own transition with its own audit record
and dedup, and the batch commits or fails as a whole. If it fails, every outcome in it gets the
error, and its caller publishes it (the ordinary path, :mod:`daemon.outcome_delivery`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from daemon.store import Applied
from machines.messages import Event

ApplyMany = Callable[[str, Sequence[tuple[Event, str]]], list[Applied]]
Running = Callable[[str], int]  # run id -> how many of its effects a worker here is running now

MESSAGE_ID = "eager"  # the audit record's message id of an outcome applied where its effect ran
# Outcomes per transaction. Each writes its audit record and settles its effect; the one that
# advances a phase also writes the next phase's effects: the commit stays far below its limits.
MAX_BATCH = 20


@dataclass(eq=False)
class _Slot:
    event: Event
    done: threading.Event = field(default_factory=threading.Event)
    lead: bool = False  # woken to lead the next batch, not with a result
    result: Applied | None = None
    error: BaseException | None = None


class OutcomeBatches:
    """Applies outcomes of effects run here, several of one run per transaction."""

    def __init__(self, apply_many: ApplyMany, running: Running, wait: float) -> None:
        self.apply_many = apply_many
        self.running = running
        self.wait = wait
        self._cv = threading.Condition()
        self._pending: dict[str, list[_Slot]] = {}  # run id -> outcomes waiting for a transaction
        self._leading: set[str] = set()  # runs with a leader (lingering or applying)

    def apply(self, event: Event) -> Applied:
        """Apply ``event`` (an outcome) with the others of its run; its result, or its batch's error."""
        run_id, slot = event.run_id, _Slot(event)
        with self._cv:
            self._pending.setdefault(run_id, []).append(slot)
            self._cv.notify_all()  # a lingering leader counts its siblings again
            leads = run_id not in self._leading
            if leads:
                self._leading.add(run_id)
        if leads:
            self._lead(run_id, slot)
        else:
            slot.done.wait()
            if slot.lead:  # the batch before ours is done and ours has not begun: lead it
                self._lead(run_id, slot)
        if slot.error is not None:
            raise slot.error
        assert slot.result is not None
        return slot.result

    def _siblings_running(self, run_id: str) -> bool:
        try:
            return self.running(run_id) > 0
        except Exception:  # noqa: BLE001 - not knowing is no reason to wait, nor to strand the run
            return False

    def _lead(self, run_id: str, own: _Slot) -> None:
        batch: list[_Slot] = []
        try:
            deadline = time.monotonic() + self.wait
            with self._cv:
                # Linger while siblings still run here: their outcomes join this transaction.
                while (left := deadline - time.monotonic()) > 0 and self._siblings_running(run_id):
                    self._cv.wait(min(left, 0.002))
                batch = self._pending[run_id][:MAX_BATCH]
                del self._pending[run_id][:len(batch)]
            results = self.apply_many(run_id, [(s.event, MESSAGE_ID) for s in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"{len(results)} results for a batch of {len(batch)} outcomes")
            for s, result in zip(batch, results, strict=True):
                s.result = result
        except BaseException as exc:  # noqa: BLE001 - each caller falls back on its own
            if own not in batch:  # failed before taking the batch: take ours out of the queue
                with self._cv:
                    if own in self._pending.get(run_id, []):
                        self._pending[run_id].remove(own)
                own.error = exc
            for s in batch:
                # An Exception is each caller's to handle; anything else is re-raised only by
                # this thread, the others fail with an ordinary error.
                s.error = exc if s is own or isinstance(exc, Exception) else RuntimeError(f"outcome batch interrupted: {exc!r}")
            if not isinstance(exc, Exception):
                raise
        finally:
            with self._cv:
                rest = self._pending.get(run_id)
                if rest:  # arrived while we applied: the first of them leads the next batch
                    rest[0].lead = True
                    rest[0].done.set()
                else:
                    self._pending.pop(run_id, None)
                    self._leading.discard(run_id)
            for s in batch:
                s.done.set()
