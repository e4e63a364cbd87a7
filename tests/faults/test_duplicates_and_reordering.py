"""Duplicates and reordering: a tap between the effect runner and Pub/Sub publishes every
outcome event three times, each copy held back a seeded random time and each batch shuffled,
so events arrive duplicated and out of order (across items, phases and runs). Every run
ends exactly like a clean reference run: the same transitions (contiguous versions, each
outcome applied once per effect, the reference run's applied (type, item) multiset), every
effect executed exactly once, and every copy accounted for in the audit log."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from machines.messages import Event
from tests.faults.checks import Executions, applied_once_problems, reference_transitions
from tests.faults.conftest import seed_for, summary
from tests.integration.conftest import (
    assert_consistent,
    audit,
    publish,
    rejected,
    start_body,
    wait_for,
    wait_status,
)

pytestmark = pytest.mark.slow

RUNS = 5
COPIES = 3
MAX_HOLD_SECONDS = 1.5  # longer than the first IAM polls (0.25 s, 1 s): a held iam.verified goes stale
COMPARED = ("state", "status", "progress", "outputs", "error")


class DuplicatingShufflingTap:
    """Stands in for ``EventPublisher.publish``: takes an event, publishes it ``COPIES`` times later."""

    def __init__(self, real: Callable[[Event, Mapping[str, str]], object], rng: random.Random) -> None:
        self.real = real
        self.rng = rng
        self.lock = threading.Lock()
        self.pending: list[tuple[float, int, Event, dict[str, str]]] = []
        self.received: list[str] = []  # "event_id@run_id", in the order the effect runner published them
        self.sent: list[tuple[str, str, str]] = []  # (run_id, event_id, message_id) in publish order
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="tap", daemon=True)
        self.thread.start()

    def __call__(self, event: Event, attributes: Mapping[str, str]) -> str:
        with self.lock:
            self.received.append(event.event_id + "@" + event.run_id)
            for _ in range(COPIES):
                release = time.monotonic() + self.rng.uniform(0.0, MAX_HOLD_SECONDS)
                self.pending.append((release, len(self.received), event, dict(attributes)))
        return "held-by-tap"

    def _loop(self) -> None:
        while not self.stop.wait(0.05):
            self.flush()

    def flush(self, everything: bool = False) -> None:
        with self.lock:
            now = time.monotonic()
            due = [p for p in self.pending if everything or p[0] <= now]
            self.pending = [p for p in self.pending if not (everything or p[0] <= now)]
            self.rng.shuffle(due)
        for _release, _seq, event, attributes in due:
            message_id = str(self.real(event, attributes))
            with self.lock:
                self.sent.append((event.run_id, event.event_id, message_id))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.flush(everything=True)

    def overtaken(self) -> int:
        """Events whose first copy went out after the first copy of a later event of the same run."""
        first: dict[str, int] = {}
        run_of: dict[str, str] = {}
        for pos, (run_id, event_id, _mid) in enumerate(self.sent):
            first.setdefault(event_id + "@" + run_id, pos)
            run_of[event_id + "@" + run_id] = run_id
        rank = {key: i for i, key in enumerate(self.received)}
        count, latest = 0, dict.fromkeys(run_of.values(), -1)
        for key in sorted(first, key=first.__getitem__):
            run_id = run_of[key]
            if rank[key] < latest[run_id]:
                count += 1
            latest[run_id] = max(latest[run_id], rank[key])
        return count


def _final(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: doc.get(k) for k in COMPARED}


def test_every_event_three_times_shuffled_ends_like_a_clean_run(settings, db, daemon_factory):
    seed = seed_for("duplicates_and_reordering")
    daemon = daemon_factory(settings)
    executions = Executions(daemon.effects.handlers)

    publish(settings, start_body("reference"))
    reference = wait_status(db, settings, "reference", timeout=60)
    assert reference["status"] == "succeeded", reference.get("error")
    assert_consistent(db, settings, "reference")
    expected = reference_transitions(db, settings, "reference")
    assert not executions.problems(db, settings, "reference")

    tap = DuplicatingShufflingTap(daemon.publisher.publish, random.Random(seed))
    daemon.effects.publish = tap
    runs = [f"dup-shuffle-{i}" for i in range(RUNS)]
    try:
        for run_id in runs:
            publish(settings, start_body(run_id))
        docs = {run_id: wait_status(db, settings, run_id, timeout=120) for run_id in runs}
    finally:
        tap.close()
        daemon.effects.publish = daemon.publisher.publish

    sent_ids = {mid for _run, _eid, mid in tap.sent}

    def accounted() -> dict[str, dict[str, Any]]:
        records = {}
        for run_id in runs:
            for record in audit(db, settings, run_id):
                records.setdefault(record["message_id"], record)  # a redelivered copy adds a duplicate
        return records

    try:
        records = wait_for(lambda: (r := accounted()) and sent_ids <= set(r) and r, 60,
                           "every copy published by the tap to be in an audit log")
    except AssertionError:
        records = accounted()

    problems: list[str] = []
    missing = sent_ids - set(records)
    if missing:
        problems.append(f"{len(missing)} published copies have no audit record")
    damaged: set[str] = set()
    for run_id, doc in docs.items():
        if _final(doc) != _final(reference):
            problems.append(f"{run_id} differs from the reference run: {_final(doc)} != {_final(reference)}")
            damaged.add(run_id)
        # each transition once, each effect's outcome once, the reference run's transitions,
        # each effect executed once (a duplicated outcome must not make anything run again)
        twice = applied_once_problems(db, settings, run_id, expected) + executions.problems(db, settings, run_id)
        if twice:
            problems += twice
            damaged.add(run_id)
    by_outcome = Counter(records[m]["outcome"] for m in sent_ids & set(records))
    dead = rejected(db)
    if dead:
        problems.append(f"rejected or dead-lettered: {[(v['reason'], v['message'][:100]) for v in dead.values()]}")

    events = len(tap.received)
    print(f"tap: {events} events -> {len(tap.sent)} copies ({len(tap.sent) - events} duplicates), "
          f"{tap.overtaken()} events overtaken by a later one of their run; "
          f"audit outcomes of the copies: {dict(by_outcome)}", flush=True)
    assert events and len(tap.sent) == COPIES * events, (events, len(tap.sent))
    # tried: copies delivered duplicated and shuffled; lost: copies without a trace, runs damaged
    lost = len(missing) + len(dead) + len(damaged)
    summary("duplicates_and_reordering", tried=len(tap.sent),
            survived=len(sent_ids & set(records)) if not problems else 0, lost=lost)
    assert not problems, f"seed={seed}: " + "; ".join(problems)
