"""One active run per target: the target's lock, read and written inside the run's transactions.

A target is what a run deploys to: the architecture's ``project_id`` and ``name``. Its lock is
one document of ``<collection>-targets`` holding the run that may act on the target (``holder``)
and the runs waiting for it (``queue``, oldest first). It is taken by the transaction that starts
a run (or redrives a finished one: retry, teardown), and released by the transaction that moves
its holder to a terminal state, which hands it to the next queued run and wakes that run
(``wake_at = now``: the timer sweep fires it, and the store turns that wake-up into
``target.acquired``). Everything is in documents written by the same commits as the runs, so a
crash at any point leaves the lock and the runs consistent. A holder whose run document is gone
or already ended (a lock left behind by hand-edited data) does not block the queue: the first
queued run takes the target over at its next poll.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from google.cloud import firestore

from machines.messages import Event, RunState
from machines.orchestration import Decision, queued_start, rejected_start
from machines.pipeline import TERMINAL_STATES

MAX_QUEUE = 100  # runs waiting for one target; a start beyond that is refused


def target_of(architecture: Mapping[str, Any]) -> str:
    """``<project_id>/<name>``: what two runs must not deploy at once."""
    return f"{architecture.get('project_id') or ''}/{architecture.get('name') or ''}"


@dataclass(frozen=True)
class TargetLock:
    """A target's lock as one transaction read it."""

    ref: Any
    target: str
    holder: str | None
    queue: tuple[str, ...]

    def busy_for(self, run_id: str) -> bool:
        return self.holder is not None and self.holder != run_id


class Targets:
    def __init__(self, client: firestore.Client, collection: str) -> None:
        self.runs = client.collection(collection)
        self.locks = client.collection(f"{collection}-targets")

    def ref(self, target: str) -> Any:
        return self.locks.document(hashlib.sha256(target.encode()).hexdigest()[:40])

    @staticmethod
    def lock_of(ref: Any, target: str, snap: Any) -> TargetLock:
        data = (snap.to_dict() or {}) if snap is not None and snap.exists else {}
        return TargetLock(ref, target, data.get("holder"), tuple(data.get("queue") or ()))

    def read(self, transaction: firestore.Transaction, target: str) -> TargetLock:
        ref = self.ref(target)
        return self.lock_of(ref, target, ref.get(transaction=transaction))

    def holder_ended(self, transaction: firestore.Transaction, lock: TargetLock) -> bool:
        """True if the holder's run is gone or already terminal (a lock nobody will release)."""
        if lock.holder is None:
            return True
        snap = self.runs.document(lock.holder).get(transaction=transaction)
        return not snap.exists or snap.get("state") in TERMINAL_STATES

    # ---- the hooks of RunStore.apply: reads before the decision, writes after it ----------
    def before_decision(
        self, transaction: firestore.Transaction, run: RunState, event: Event, target: str | None
    ) -> tuple[TargetLock | None, Event, str]:
        """Read the target's lock when ``event`` may need it: a queued run's wake-up (which
        becomes ``target.acquired`` once the target is this run's), or a retry or teardown that
        makes a finished run active again (refused while another run holds the target: the
        third value says why). Reads only: the writes come after the decision."""
        if target is None:
            return None, event, ""
        if run.state == "queued" and event.type == "timer.fired":
            if run.timer is None or event.data.get("seq") != run.timer.seq:
                return None, event, ""  # a stale wake-up: the machine ignores it
            lock = self.read(transaction, target)
            first = not lock.queue or lock.queue[0] == run.run_id
            if lock.holder == run.run_id or (first and self.holder_ended(transaction, lock)):
                return lock, Event(run_id=run.run_id, event_id=event.event_id, type="target.acquired"), ""
            return lock, event, ""
        if run.state in TERMINAL_STATES and event.type in ("command.retry", "command.teardown"):
            lock = self.read(transaction, target)
            if lock.busy_for(run.run_id) and not self.holder_ended(transaction, lock):
                return lock, event, f"target {target} is busy with run {lock.holder}; {event.type} again when it ends"
            return lock, event, ""
        return None, event, ""  # anything else reads the lock after the decision, only if the run ends

    def after_decision(
        self, transaction: firestore.Transaction, decision: Decision, target: str, lock: TargetLock | None,
        now: datetime,
    ) -> None:
        """The lock writes of an applied decision: taken when a run becomes active, released
        (handed to the next queued run) when it ends. May read the lock first: call it before
        the transaction's other writes."""
        ended = decision.to_state in TERMINAL_STATES and decision.from_state not in TERMINAL_STATES
        active = decision.to_state not in TERMINAL_STATES and decision.to_state != "queued"
        if ended:
            self.release(transaction, lock or self.read(transaction, target), decision.run.run_id, now)
        elif active and lock is not None:
            self.acquire(transaction, lock, decision.run.run_id, now)

    # ---- writes (after every read of the transaction) ------------------------------------
    def acquire(self, transaction: firestore.Transaction, lock: TargetLock, run_id: str, now: datetime) -> None:
        queue = [r for r in lock.queue if r != run_id]
        transaction.set(lock.ref, {"target": lock.target, "holder": run_id, "queue": queue, "updated_at": now})

    def enqueue(self, transaction: firestore.Transaction, lock: TargetLock, run_id: str, now: datetime) -> None:
        queue = [*lock.queue, run_id] if run_id not in lock.queue else list(lock.queue)
        transaction.set(lock.ref, {"target": lock.target, "holder": lock.holder, "queue": queue, "updated_at": now})

    def release(self, transaction: firestore.Transaction, lock: TargetLock, run_id: str, now: datetime) -> str | None:
        """``run_id`` ended: hand the target to the next queued run and wake it (its id), or
        just leave the queue if it was waiting in it."""
        if lock.holder == run_id:
            following = lock.queue[0] if lock.queue else None
            transaction.set(lock.ref, {"target": lock.target, "holder": following, "queue": list(lock.queue[1:]),
                                       "updated_at": now})
            if following is not None:
                transaction.update(self.runs.document(following), {"wake_at": now})
            return following
        if run_id in lock.queue:
            queue = [r for r in lock.queue if r != run_id]
            transaction.set(lock.ref, {"target": lock.target, "holder": lock.holder, "queue": queue, "updated_at": now})
        return None


def start_on_busy_target(
    run_id: str, plan: Mapping[str, Any] | None, limits: Mapping[str, timedelta], now: datetime,
    lock: TargetLock, if_busy: str,
) -> Decision:
    """The first decision of a run whose target another active run holds: queued behind it, or
    failed with reason ``target_busy`` (``if_busy: fail``, or a full queue)."""
    busy = f"target {lock.target} is busy with run {lock.holder}"
    if if_busy == "fail":
        return rejected_start(run_id, "target_busy", f"{busy} (started with if_busy=fail)", now)
    if len(lock.queue) >= MAX_QUEUE:
        return rejected_start(run_id, "target_busy", f"{busy} and {len(lock.queue)} runs wait for it", now)
    assert plan is not None and lock.holder is not None
    decision = queued_start(run_id, plan, limits, now, lock.holder)
    return Decision(decision.outcome, decision.from_state, decision.to_state, decision.run, decision.effects,
                    f"queued: {busy}")
