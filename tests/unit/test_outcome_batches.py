"""daemon/outcome_batches.py: group commit of one run's outcomes, with a fake ``apply_many``.

A lone outcome is applied alone; outcomes of a run that arrive while its batch is in the
transaction make the next batch; the leader lingers (at most ``wait``) while effects of the run
still run here; runs never share a batch nor wait for each other; a failed batch fails each of
its callers and leaves no leader behind; a batch holds at most ``MAX_BATCH`` outcomes.
Every thread is joined with a timeout: a test fails, it never hangs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from daemon import outcome_batches
from daemon.outcome_batches import MAX_BATCH, MESSAGE_ID, OutcomeBatches
from daemon.store import Applied
from machines.messages import Event

JOIN = 3.0  # seconds a thread may take before the test declares it stuck


def outcome(run_id: str, n: int) -> Event:
    """The outcome of preflight ``<run_id>s<n>`` (its event id names the run: batches can be told apart)."""
    item = f"{run_id}s{n}"
    return Event(run_id=run_id, event_id=f"preflight:{item}:a0~preflight.passed~{item}", type="preflight.passed",
                 item=item, data={"effect_id": f"preflight:{item}:a0", "claim": f"c{n}"})


class FakeStore:
    """``apply_many``: records each batch, answers one result per event (its detail is the
    event id), blocks on the run's gate if one is set, raises ``fail`` once if set."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, list[str]]] = []
        self.gates: dict[str, threading.Event] = {}
        self.entered: dict[str, threading.Event] = {}
        self.fail: BaseException | None = None
        self.inside: set[str] = set()
        self.overlaps: list[str] = []  # runs that had two batches in the transaction at once
        self._lock = threading.Lock()

    def gate(self, run_id: str) -> threading.Event:
        self.entered[run_id] = threading.Event()
        self.gates[run_id] = gate = threading.Event()
        return gate

    def apply_many(self, run_id: str, items: Sequence[tuple[Event, str]]) -> list[Applied]:
        with self._lock:
            self.batches.append((run_id, [e.event_id for e, _ in items]))
            assert all(message_id == MESSAGE_ID for _, message_id in items)
            if run_id in self.inside:
                self.overlaps.append(run_id)
            self.inside.add(run_id)
            fail, self.fail = self.fail, None
        try:
            if run_id in self.entered:
                self.entered[run_id].set()
            if run_id in self.gates:
                assert self.gates[run_id].wait(JOIN), "the test never opened the gate"
            if fail is not None:
                raise fail
            return [Applied("applied", run_id, event.event_id) for event, _ in items]
        finally:
            with self._lock:
                self.inside.discard(run_id)

    def open_all(self) -> None:
        for gate in self.gates.values():
            gate.set()


class Running:
    """The fake ``running(run_id)``: a settable count per run; remembers what it was asked."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.asked: list[str] = []
        self.asked_event = threading.Event()

    def __call__(self, run_id: str) -> int:
        self.asked.append(run_id)
        self.asked_event.set()
        return self.counts.get(run_id, 0)


class Caller(threading.Thread):
    """One worker thread applying one outcome; keeps its result or its exception."""

    def __init__(self, batches: OutcomeBatches, event: Event) -> None:
        super().__init__(daemon=True)
        self.batches, self.event = batches, event
        self.result: Applied | None = None
        self.error: BaseException | None = None
        self.elapsed = 0.0

    def run(self) -> None:
        began = time.monotonic()
        try:
            self.result = self.batches.apply(self.event)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            self.error = exc
        self.elapsed = time.monotonic() - began

    def finish(self) -> Caller:
        self.join(JOIN)
        assert not self.is_alive(), f"apply of {self.event.event_id} is stuck"
        return self


@pytest.fixture
def store() -> Iterator[FakeStore]:
    fake = FakeStore()
    yield fake
    fake.open_all()  # a failed test must not leave threads blocked in the fake transaction


def wait_until(predicate: Callable[[], Any], what: str) -> None:
    deadline = time.monotonic() + JOIN
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.001)


def pending(batches: OutcomeBatches, run_id: str) -> int:
    """How many outcomes of the run wait for a transaction (the batches' private queue)."""
    with batches._cv:
        return len(batches._pending.get(run_id, []))


def call(batches: OutcomeBatches, event: Event, queued: int | None = None) -> Caller:
    """Start a caller; with ``queued``, wait until that many outcomes of its run are pending
    (so callers queue in a known order)."""
    caller = Caller(batches, event)
    caller.start()
    if queued is not None:
        wait_until(lambda: pending(batches, event.run_id) == queued, f"{queued} pending outcomes")
    return caller


def in_transaction(store: FakeStore, batches: OutcomeBatches, event: Event) -> tuple[threading.Event, Caller]:
    """Start a caller of ``event`` and wait until it is inside a transaction held by the
    returned gate (set it to let the transaction finish)."""
    gate = store.gate(event.run_id)
    first = call(batches, event)
    assert store.entered[event.run_id].wait(JOIN)
    return gate, first


def test_a_lone_outcome_is_applied_alone_and_gets_its_own_result(store: FakeStore) -> None:
    running = Running()
    batches = OutcomeBatches(store.apply_many, running, wait=5.0)
    lone = call(batches, outcome("r", 1)).finish()
    assert lone.elapsed < 1.0  # nothing else of the run runs here: no lingering
    result = lone.result
    assert result is not None and (result.outcome, result.run_id, result.detail) == ("applied", "r", outcome("r", 1).event_id)
    assert store.batches == [("r", [outcome("r", 1).event_id])]
    assert running.asked and set(running.asked) == {"r"}
    # The run's leadership is over: the next outcome leads again, alone.
    assert batches.apply(outcome("r", 2)).detail == outcome("r", 2).event_id
    assert store.batches[1] == ("r", [outcome("r", 2).event_id])
    assert batches._pending == {} and batches._leading == set()


def test_outcomes_arriving_during_a_transaction_are_applied_together_next(store: FakeStore) -> None:
    batches = OutcomeBatches(store.apply_many, Running(), wait=0.0)
    gate, first = in_transaction(store, batches, outcome("r", 1))
    later = [call(batches, outcome("r", n), queued=n - 1) for n in (2, 3, 4)]
    assert len(store.batches) == 1  # they wait for the transaction in progress
    gate.set()
    for caller in [first, *later]:
        caller.finish()
        assert caller.error is None
        assert caller.result is not None and caller.result.detail == caller.event.event_id
    ids = [outcome("r", n).event_id for n in (1, 2, 3, 4)]
    assert store.batches == [("r", ids[:1]), ("r", ids[1:])]  # one call for the three, in order
    assert store.overlaps == []


def test_the_leader_lingers_while_effects_of_its_run_still_run_and_takes_their_outcomes(store: FakeStore) -> None:
    running = Running()
    running.counts["r"] = 1  # a sibling effect is inside its handler
    batches = OutcomeBatches(store.apply_many, running, wait=JOIN + 5.0)  # only the count ends the linger
    leader = call(batches, outcome("r", 1), queued=1)
    assert running.asked_event.wait(JOIN)
    sibling = call(batches, outcome("r", 2), queued=2)
    assert store.batches == []  # still lingering: nothing applied yet
    running.counts["r"] = 0  # the sibling's handler is done
    for caller in (leader.finish(), sibling.finish()):
        assert caller.result is not None and caller.result.detail == caller.event.event_id
    assert store.batches == [("r", [outcome("r", 1).event_id, outcome("r", 2).event_id])]
    assert leader.elapsed < JOIN  # left as soon as nothing ran, not at the far deadline


def test_a_sibling_arriving_within_wait_joins_the_batch(store: FakeStore) -> None:
    running = Running()
    running.counts["r"] = 2  # the effects never finish here: only ``wait`` ends the linger
    batches = OutcomeBatches(store.apply_many, running, wait=0.3)
    leader = call(batches, outcome("r", 1), queued=1)
    sibling = call(batches, outcome("r", 2), queued=2)
    leader.finish(), sibling.finish()
    assert store.batches == [("r", [outcome("r", 1).event_id, outcome("r", 2).event_id])]
    assert leader.result is not None and leader.result.detail == outcome("r", 1).event_id
    assert sibling.result is not None and sibling.result.detail == outcome("r", 2).event_id


def test_the_leader_lingers_no_longer_than_wait(store: FakeStore) -> None:
    running = Running()
    running.counts["r"] = 1  # never drops: the sibling is slow
    batches = OutcomeBatches(store.apply_many, running, wait=0.15)
    leader = call(batches, outcome("r", 1)).finish()  # returns: the linger is bounded
    assert leader.result is not None and leader.result.detail == outcome("r", 1).event_id
    assert 0.14 <= leader.elapsed < 1.0  # it did linger, about ``wait``
    assert store.batches == [("r", [outcome("r", 1).event_id])]


def test_outcomes_of_different_runs_never_share_a_batch_nor_wait_for_each_other(store: FakeStore) -> None:
    running = Running()
    batches = OutcomeBatches(store.apply_many, running, wait=0.0)
    gate_a, a1 = in_transaction(store, batches, outcome("a", 1))
    a2 = call(batches, outcome("a", 2), queued=1)
    # Run b is applied at once, alone, while a's batch is still in its transaction.
    b1 = call(batches, outcome("b", 1)).finish()
    b2 = call(batches, outcome("b", 2)).finish()
    assert b1.result is not None and b1.result.run_id == "b" and b1.result.detail == outcome("b", 1).event_id
    assert b2.result is not None and b2.result.detail == outcome("b", 2).event_id
    assert a1.is_alive() and a2.is_alive()
    gate_a.set()
    a1.finish(), a2.finish()
    assert a2.result is not None and a2.result.run_id == "a" and a2.result.detail == outcome("a", 2).event_id
    for run_id, ids in store.batches:  # each batch holds outcomes of its own run only
        assert set(ids) <= {outcome(run_id, 1).event_id, outcome(run_id, 2).event_id}, store.batches
    assert [b for b in store.batches if b[0] == "a"] == [("a", [outcome("a", 1).event_id]),
                                                        ("a", [outcome("a", 2).event_id])]


def test_a_lingering_leader_does_not_hold_up_another_run(store: FakeStore) -> None:
    running = Running()
    running.counts["a"] = 1
    batches = OutcomeBatches(store.apply_many, running, wait=0.8)
    a1 = call(batches, outcome("a", 1), queued=1)
    assert running.asked_event.wait(JOIN)
    b1 = call(batches, outcome("b", 1)).finish()
    assert b1.result is not None and b1.result.run_id == "b"
    assert b1.elapsed < 0.5 and a1.is_alive()  # a still lingers; b did not wait for it
    running.counts["a"] = 0
    a1.finish()
    assert store.batches == [("b", [outcome("b", 1).event_id]), ("a", [outcome("a", 1).event_id])]


def test_a_failed_batch_fails_each_of_its_callers_and_the_next_outcome_applies(store: FakeStore) -> None:
    batches = OutcomeBatches(store.apply_many, Running(), wait=0.0)
    gate, first = in_transaction(store, batches, outcome("r", 1))
    second, third = call(batches, outcome("r", 2), queued=1), call(batches, outcome("r", 3), queued=2)
    boom = RuntimeError("the commit failed")
    store.fail = boom  # the batch of second and third
    gate.set()
    first.finish(), second.finish(), third.finish()
    assert first.error is None and first.result is not None
    assert second.error is boom and third.error is boom
    assert second.result is None and third.result is None
    del store.gates["r"]
    # No leader is left behind: the run's next outcome is applied at once.
    nxt = call(batches, outcome("r", 4)).finish()
    assert nxt.error is None and nxt.result is not None and nxt.result.detail == outcome("r", 4).event_id
    assert [ids for _, ids in store.batches] == [[outcome("r", 1).event_id],
                                                [outcome("r", 2).event_id, outcome("r", 3).event_id],
                                                [outcome("r", 4).event_id]]


def test_outcomes_waiting_behind_a_failed_batch_are_applied_by_the_next_leader(store: FakeStore) -> None:
    batches = OutcomeBatches(store.apply_many, Running(), wait=0.0)
    store.fail = boom = ConnectionError("firestore is away")
    gate, first = in_transaction(store, batches, outcome("r", 1))
    second = call(batches, outcome("r", 2), queued=1)
    gate.set()
    first.finish(), second.finish()
    assert first.error is boom
    assert second.error is None and second.result is not None and second.result.detail == outcome("r", 2).event_id
    assert [ids for _, ids in store.batches] == [[outcome("r", 1).event_id], [outcome("r", 2).event_id]]
    assert batches._pending == {} and batches._leading == set()


def test_a_batch_holds_at_most_max_batch_outcomes(store: FakeStore) -> None:
    batches = OutcomeBatches(store.apply_many, Running(), wait=0.0)
    gate, first = in_transaction(store, batches, outcome("r", 0))
    waiting = [call(batches, outcome("r", n), queued=n) for n in range(1, MAX_BATCH + 3)]
    gate.set()
    for caller in [first, *waiting]:
        caller.finish()
        assert caller.result is not None and caller.result.detail == caller.event.event_id
    sizes = [len(ids) for _, ids in store.batches]
    assert sizes == [1, MAX_BATCH, 2]
    assert [i for _, ids in store.batches for i in ids] == [outcome("r", n).event_id for n in range(MAX_BATCH + 3)]


def test_max_batch_is_read_when_the_batch_is_taken(store: FakeStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outcome_batches, "MAX_BATCH", 2)
    batches = OutcomeBatches(store.apply_many, Running(), wait=0.0)
    gate, first = in_transaction(store, batches, outcome("r", 0))
    waiting = [call(batches, outcome("r", n), queued=n) for n in range(1, 6)]
    gate.set()
    for caller in [first, *waiting]:
        assert caller.finish().result is not None
    assert [len(ids) for _, ids in store.batches] == [1, 2, 2, 1]
    assert store.overlaps == []  # one transaction of the run at a time


def test_a_failing_count_of_running_siblings_neither_waits_nor_strands_the_run(store: FakeStore) -> None:
    def broken(_run_id: str) -> int:
        raise RuntimeError("the dispatcher is gone")

    batches = OutcomeBatches(store.apply_many, broken, wait=5.0)
    first = call(batches, outcome("r", 1)).finish()
    assert first.error is None and first.elapsed < 1.0
    second = call(batches, outcome("r", 2)).finish()  # the run has no leader left behind
    assert second.error is None and [len(ids) for _, ids in store.batches] == [1, 1]


def test_a_batch_with_a_result_missing_fails_every_caller_alike(store: FakeStore) -> None:
    batches = OutcomeBatches(lambda run_id, items: store.apply_many(run_id, items)[:-1], Running(), wait=0.0)
    gate, first = in_transaction(store, batches, outcome("r", 1))
    second, third = call(batches, outcome("r", 2), queued=1), call(batches, outcome("r", 3), queued=2)
    gate.set()
    first.finish(), second.finish(), third.finish()
    assert all(isinstance(c.error, RuntimeError) and "results for a batch" in str(c.error)
               for c in (first, second, third))


def test_an_interrupt_while_lingering_fails_only_its_caller_and_strands_nothing(store: FakeStore) -> None:
    calls = {"n": 0}

    def interrupted_once(_run_id: str) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt  # not an Exception: re-raised by the thread it hit
        return 0

    batches = OutcomeBatches(store.apply_many, interrupted_once, wait=5.0)
    first = call(batches, outcome("r", 1)).finish()
    assert isinstance(first.error, KeyboardInterrupt) and store.batches == []
    second = call(batches, outcome("r", 2)).finish()  # the run's next outcome is applied
    assert second.error is None and [ids for _, ids in store.batches] == [[outcome("r", 2).event_id]]


def test_an_interrupt_inside_the_transaction_gives_the_others_an_ordinary_error(store: FakeStore) -> None:
    batches = OutcomeBatches(store.apply_many, Running(), wait=0.0)
    gate, first = in_transaction(store, batches, outcome("r", 1))
    second, third = call(batches, outcome("r", 2), queued=1), call(batches, outcome("r", 3), queued=2)
    store.fail = SystemExit(3)  # the batch of second and third; second leads it
    gate.set()
    first.finish(), second.finish(), third.finish()
    assert first.error is None
    assert isinstance(second.error, SystemExit) and isinstance(third.error, RuntimeError)
    assert "interrupted" in str(third.error)
