"""Leases belong to their claim (issue 10, point 5), against the Firestore emulator.

Two ``RunStore``s with different owners stand for two replicas sharing one effect: B takes
over A's expired lease while A still runs it. From then on every lease write of A is refused,
A's outcome is recorded ``ignored`` (superseded claim) and only B's outcome applies.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.cloud import firestore

from daemon.config import Settings
from daemon.effects import EffectRunner
from daemon.store import Applied, RunStore
from handlers.base import Outcome
from machines.messages import Event

COLLECTION = "orchestrations"
PLAN: dict[str, Any] = {
    "director": "director",
    "services": ["publisher"],
    "all_services": ["director", "publisher"],
    "dataflows": ["director-infra"],
    "app_dataflows": [],
}
EFFECT = "configgen:-:a0"  # the first effect of every run


def make_store(client: firestore.Client, owner: str) -> RunStore:
    return RunStore(client, COLLECTION, owner=owner, lease_seconds=30.0)


@pytest.fixture
def stores(firestore_client: firestore.Client) -> tuple[RunStore, RunStore]:
    return make_store(firestore_client, "replica-a"), make_store(firestore_client, "replica-b")


def effect_doc(store: RunStore, run_id: str, effect_id: str = EFFECT) -> dict[str, Any]:
    snap = store.runs.document(run_id).collection("effects").document(effect_id).get()
    assert snap.exists
    return snap.to_dict() or {}


def expire(store: RunStore, run_id: str, effect_id: str = EFFECT) -> None:
    """A's heartbeat stalled for longer than the lease."""
    ref = store.runs.document(run_id).collection("effects").document(effect_id)
    ref.update({"lease_expires": datetime.now(UTC) - timedelta(seconds=1)})


def started(store: RunStore, run_id: str) -> Applied:
    applied = store.start(run_id, f"start-{run_id}", plan=PLAN, limits={}, extra={})
    assert [e.effect_id for e in applied.effects] == [EFFECT]
    return applied


def outcome(run_id: str, claim: str | None, type_: str = "config.generated", item: str | None = None) -> Event:
    data: dict[str, Any] = {"effect_id": EFFECT}
    if claim is not None:
        data["claim"] = claim
    return Event(run_id=run_id, event_id=f"{EFFECT}~{type_}~{item or '-'}", type=type_, item=item, data=data)


def test_a_stolen_lease_refuses_every_write_of_its_first_owner(stores):
    a, b = stores
    claim_a = started(a, "lease-1").claims[EFFECT]
    assert effect_doc(a, "lease-1")["claim"] == claim_a

    expire(a, "lease-1")
    claimed = b.claim_effect("lease-1", EFFECT)
    assert claimed is not None
    leased, run = claimed
    claim_b = leased.claim
    assert claim_b != claim_a and effect_doc(b, "lease-1")["owner"] == "replica-b" and run.run_id == "lease-1"
    taken = effect_doc(b, "lease-1")

    key = ("lease-1", EFFECT)
    assert a.extend_leases({key: claim_a}) == {key}
    assert a.effect_retry_later(*key, claim_a, 5.0, "A failed") is False
    a.release_leases({key: claim_a})
    assert a.effect_done(*key, claim_a) is False
    assert effect_doc(a, "lease-1") == taken  # none of A's writes landed

    # B's own writes go through
    assert b.extend_leases({key: claim_b}) == set()
    assert effect_doc(b, "lease-1")["lease_expires"] >= taken["lease_expires"]


def test_a_fresh_lease_is_checked_but_not_written_and_a_lost_one_is_still_found(stores):
    a, b = stores
    claim_1 = started(a, "fresh-1").claims[EFFECT]
    claim_2 = started(a, "fresh-2").claims[EFFECT]
    first, second = ("fresh-1", EFFECT), ("fresh-2", EFFECT)
    before = effect_doc(a, "fresh-1")
    expire(a, "fresh-2")
    assert b.claim_effect("fresh-2", EFFECT) is not None  # B took run 2's effect over
    taken = effect_doc(b, "fresh-2")

    # both fresh: nothing written, but the stolen one is reported lost
    assert a.extend_leases({first: claim_1, second: claim_2}, fresh={first, second}) == {second}
    assert effect_doc(a, "fresh-1") == before and effect_doc(a, "fresh-2") == taken

    # not fresh any more: renewed
    assert a.extend_leases({first: claim_1}) == set()
    assert effect_doc(a, "fresh-1")["lease_expires"] > before["lease_expires"]


def test_the_outcome_of_a_superseded_claim_is_ignored_and_the_current_one_applies(stores):
    a, b = stores
    claim_a = started(a, "lease-2").claims[EFFECT]
    expire(a, "lease-2")
    claim_b = b.claim_effect("lease-2", EFFECT)[0].claim  # type: ignore[index]

    late = a.apply(outcome("lease-2", claim_a), "msg-a")
    assert late.outcome == "ignored" and f"superseded claim: effect {EFFECT!r}" in late.detail
    assert late.settled_effect is None
    assert effect_doc(a, "lease-2")["status"] == "pending"
    assert (a.get("lease-2") or {})["state"] == "generating_config"

    current = b.apply(outcome("lease-2", claim_b), "msg-b")  # the same event id: the ignored one did not use it
    assert current.outcome == "applied" and current.to_state == "preflight"
    assert current.settled_effect == EFFECT
    assert effect_doc(b, "lease-2")["status"] == "done"
    # the settled effect is no longer anybody's lease
    assert b.extend_leases({("lease-2", EFFECT): claim_b}) == {("lease-2", EFFECT)}
    records = {r["id"]: r for r in a.events("lease-2")}
    ignored = [r for r in records.values() if r["outcome"] == "ignored"]
    assert len(ignored) == 1 and "superseded claim" in ignored[0]["detail"]


def test_a_write_racing_a_steal_is_refused_by_the_precondition(stores, firestore_client):
    """A reads its effect (still its claim), B steals it, then A writes: the write must fail."""
    a, b = stores
    claim_a = started(a, "lease-3").claims[EFFECT]
    real_get_all = a.client.get_all
    rounds = []

    def get_all_then_steal(refs: Any, *args: Any, **kwargs: Any) -> Any:
        snaps = list(real_get_all(refs, *args, **kwargs))
        rounds.append(len(snaps))
        if len(rounds) == 1:
            expire(b, "lease-3")
            assert b.claim_effect("lease-3", EFFECT) is not None
        return snaps

    a.client = _Proxy(a.client, get_all=get_all_then_steal)
    key = ("lease-3", EFFECT)
    assert a.extend_leases({key: claim_a}) == {key}
    assert len(rounds) == 2  # the precondition failed, the re-read saw B's claim
    assert effect_doc(b, "lease-3")["owner"] == "replica-b"


def test_every_claim_counts_an_attempt_except_a_recheck(stores):
    a, b = stores
    claim_a = started(a, "lease-4").claims[EFFECT]
    assert effect_doc(a, "lease-4")["attempts"] == 1
    assert a.effect_retry_later("lease-4", EFFECT, claim_a, 0.0, "flaky")
    data = b.claim_effect("lease-4", EFFECT)[0]  # type: ignore[index]
    assert data.attempts == 2 and effect_doc(b, "lease-4")["attempts"] == 2
    assert b.effect_retry_later("lease-4", EFFECT, data.claim, 0.0, "not ready", recheck=True)
    again = a.claim_effect("lease-4", EFFECT)[0]  # type: ignore[index]
    assert again.attempts == 2  # waiting for work under way is no failed attempt
    assert effect_doc(a, "lease-4")["recheck"] is False


def test_an_event_settles_only_an_effect_of_its_own_kind_and_item(stores):
    a, _ = stores
    started(a, "lease-5")
    wrong_kind = a.apply(outcome("lease-5", None, "build.succeeded", "publisher"), "msg-1")
    assert wrong_kind.outcome == "ignored" and "not an outcome of effect" in wrong_kind.detail
    assert effect_doc(a, "lease-5")["status"] == "pending"
    # without a claim (as Cloud Build's notifications come) but of its kind: applied and settled
    right = a.apply(outcome("lease-5", None), "msg-2")
    assert right.outcome == "applied" and effect_doc(a, "lease-5")["status"] == "done"


def test_a_runner_that_lost_its_lease_drops_its_result_and_the_new_owner_finishes(firestore_client):
    """End to end with two runners: A's heartbeat stalls, B re-drives the effect, A's late
    outcome is ignored, and A's next heartbeat drops the effect."""
    settings = Settings(effect_lease_seconds=30.0, effect_workers=2)
    a_store, b_store = make_store(firestore_client, "replica-a"), make_store(firestore_client, "replica-b")
    gate, a_ran, results = threading.Event(), threading.Event(), []

    def applying(store: RunStore) -> Callable[[Event, Any], None]:
        return lambda event, _attrs: results.append((store.owner, store.apply(event, f"m-{store.owner}")))

    def slow(ctx: Any) -> list[Outcome]:
        a_ran.set()
        gate.wait(10)
        return [Outcome("config.generated")]

    runner_a = EffectRunner(settings, a_store, {"configgen": slow}, applying(a_store))
    runner_b = EffectRunner(settings, b_store, {"configgen": lambda ctx: [Outcome("config.generated")]},
                            applying(b_store))
    try:
        runner_a.on_applied(started(a_store, "lease-6"))  # A's heartbeat is never started: it "stalled"
        assert a_ran.wait(5)
        expire(a_store, "lease-6")
        assert runner_b.sweep() == 1
        _wait(lambda: results, "B's outcome")
        assert results[0][0] == "replica-b" and results[0][1].outcome == "applied"
        runner_b.settle("lease-6", EFFECT)

        gate.set()  # A finishes late and reports: the store ignores it
        _wait(lambda: len(results) == 2, "A's late outcome")
        assert results[1][0] == "replica-a" and "superseded claim" in results[1][1].detail
        assert (a_store.get("lease-6") or {})["state"] == "preflight"
        runner_a.renew()  # A's heartbeat comes back: the effect is not its lease any more
        assert runner_a._held == {}
    finally:
        gate.set()
        runner_a.shutdown(grace=1)
        runner_b.shutdown(grace=1)


class _Proxy:
    """A Firestore client with some methods replaced."""

    def __init__(self, client: firestore.Client, **overrides: Any) -> None:
        self._client = client
        self._overrides = overrides

    def __getattr__(self, name: str) -> Any:
        return self._overrides.get(name) or getattr(self._client, name)


def _wait(predicate: Callable[[], Any], what: str, timeout: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_work_handed_back_on_shutdown_costs_no_attempt_but_a_crash_does(stores):
    a, b = stores
    claim_a = started(a, "lease-handback").claims[EFFECT]
    assert effect_doc(a, "lease-handback")["attempts"] == 1
    a.release_leases({("lease-handback", EFFECT): claim_a})  # a graceful stop: never started
    data, _ = b.claim_effect("lease-handback", EFFECT)  # type: ignore[misc]
    assert data.attempts == 1, "an effect handed back unstarted lost an attempt"

    expire(b, "lease-handback")  # B died while running it: the next claim is a new attempt
    data, _ = a.claim_effect("lease-handback", EFFECT)  # type: ignore[misc]
    assert data.attempts == 2
