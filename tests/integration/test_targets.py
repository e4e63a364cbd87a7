"""One active run per target (issue 14, point 1), against the Firestore emulator.

The store takes a target's lock in the transaction that starts a run; a second start of the same
target is queued (default) or refused (``if_busy: fail``), each recorded in the audit log; the
lock is released by the transaction that ends its holder, which hands it to the next queued run
and wakes it. Two ``RunStore``s stand for two replicas; the last test runs two daemons.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from google.cloud import firestore

from daemon.pubsub import ensure_daemon_plumbing
from daemon.store import RunStore
from daemon.store_targets import Targets
from machines.messages import Event
from tests.integration.conftest import (
    audit,
    make_settings,
    publish,
    run_doc,
    start_body,
    wait_for,
    wait_status,
)

COLLECTION = "orchestrations"
TARGET = "podium-local/podium-demo"
PLAN: dict[str, Any] = {
    "director": "director",
    "services": ["publisher"],
    "all_services": ["director", "publisher"],
    "dataflows": ["director-infra"],
    "app_dataflows": [],
}


def make_store(client: firestore.Client, owner: str) -> RunStore:
    return RunStore(client, COLLECTION, owner=owner, lease_seconds=30.0)


def start(store: RunStore, run_id: str, if_busy: str = "queue", target: str = TARGET):
    return store.start(run_id, f"m-{run_id}", plan=PLAN, limits={}, extra={}, target=target, if_busy=if_busy)


def lock(store: RunStore, target: str = TARGET) -> dict[str, Any]:
    return Targets(store.client, COLLECTION).ref(target).get().to_dict() or {}


def doc(store: RunStore, run_id: str) -> dict[str, Any]:
    return store.get(run_id) or {}


def fire_timer(store: RunStore, run_id: str):
    seq = doc(store, run_id)["timer"]["seq"]
    return store.apply(Event(run_id=run_id, event_id=f"timer~{seq}", type="timer.fired", data={"seq": seq}),
                       f"timer~{seq}")


def test_a_busy_target_queues_or_refuses_and_the_lock_passes_in_order(firestore_client: firestore.Client) -> None:
    store = make_store(firestore_client, "replica-a")
    assert start(store, "a").to_state == "generating_config"
    queued = start(store, "b")
    assert (queued.outcome, queued.to_state) == ("applied", "queued")
    assert (doc(store, "b")["state"], doc(store, "b")["status"], doc(store, "b")["target"]) == ("queued", "queued", TARGET)
    [record] = [e for e in store.events("b") if e["type"] == "command.start"]
    assert record["to_state"] == "queued" and f"target {TARGET} is busy with run a" in record["detail"]
    refused = start(store, "c", if_busy="fail")
    assert (refused.to_state, doc(store, "c")["error"]["reason"]) == ("failed", "target_busy")
    assert "busy with run a" in doc(store, "c")["error"]["message"]
    start(store, "d")
    assert (lock(store)["holder"], lock(store)["queue"]) == ("a", ["b", "d"])

    # A queued run's poll finds the target still held: it keeps waiting.
    assert fire_timer(store, "b").to_state == "queued"
    # A retry or teardown of a finished run must wait for the target too (c failed at start).
    busy = store.apply(Event(run_id="c", event_id="cmd~retry-c", type="command.retry"), "retry-c")
    assert busy.outcome == "ignored" and "busy with run a" in busy.detail
    # Cancelling a queued run takes it out of the queue.
    store.apply(Event(run_id="d", event_id="cmd~cancel-d", type="command.cancel"), "cancel-d")
    assert lock(store)["queue"] == ["b"]

    # a ends: the lock goes to b, whose wake-up is due now; firing it starts b.
    store.apply(Event(run_id="a", event_id="cmd~cancel-a", type="command.cancel"), "cancel-a")
    assert (lock(store)["holder"], lock(store)["queue"]) == ("b", [])
    b = doc(store, "b")
    assert b["wake_at"] <= doc(store, "a")["updated_at"]
    started = fire_timer(store, "b")
    assert (started.to_state, [e.kind for e in started.effects]) == ("generating_config", ["configgen"])
    assert doc(store, "b")["status"] == "running"
    kinds = [e["type"] for e in store.events("b") if e["outcome"] == "applied"]
    assert kinds[-1] == "target.acquired"


def test_concurrent_starts_from_two_replicas_leave_exactly_one_holder(firestore_client: firestore.Client) -> None:
    a, b = make_store(firestore.Client(project=firestore_client.project), "replica-a"), make_store(
        firestore.Client(project=firestore_client.project), "replica-b")
    for round_ in range(3):
        target = f"p/arch-{round_}"
        barrier, results = threading.Barrier(2), {}

        def go(store: RunStore, run_id: str, target: str = target, barrier: threading.Barrier = barrier,
               results: dict[str, Any] = results) -> None:
            barrier.wait()
            results[run_id] = start(store, run_id, target=target).to_state

        threads = [threading.Thread(target=go, args=(a, f"x{round_}")), threading.Thread(target=go, args=(b, f"y{round_}"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results.values()) == ["generating_config", "queued"], results
        holder = next(r for r, state in results.items() if state == "generating_config")
        waiting = next(r for r, state in results.items() if state == "queued")
        assert (lock(a, target)["holder"], lock(a, target)["queue"]) == (holder, [waiting])


@pytest.mark.slow
def test_two_daemons_run_two_starts_of_one_target_one_after_the_other(emulators, firestore_reset, project, unique,
                                                                       daemon_factory) -> None:
    settings = make_settings(project, unique, one_run_per_target=True)
    ensure_daemon_plumbing(settings)
    daemon_factory(settings)
    daemon_factory(settings)
    publish(settings, start_body("first"))
    publish(settings, start_body("second"))
    db = firestore.Client(project=project)
    first, second = (wait_status(db, settings, r, timeout=60) for r in ("first", "second"))
    assert first["status"] == second["status"] == "succeeded", (first.get("error"), second.get("error"))
    # Never both active: the later run started only after the earlier one ended.
    runs = {r: audit(db, settings, r) for r in ("first", "second")}
    queued = [r for r, events in runs.items() if any(e["to_state"] == "queued" for e in events)]
    assert len(queued) == 1, "one of the two starts found the target busy"
    later, earlier = queued[0], next(r for r in runs if r != queued[0])
    ended = max(e["received_at"] for e in runs[earlier] if e["to_state"] == "succeeded")
    acquired = next(e["received_at"] for e in runs[later] if e["type"] == "target.acquired")
    assert acquired >= ended
    assert wait_for(lambda: (lock_doc := Targets(db, settings.collection).ref(TARGET).get().to_dict())
                    and lock_doc["holder"] is None and lock_doc, 10, "the lock to be free")
    assert run_doc(db, settings, later)["target"] == TARGET
