"""``RunStore.apply_many`` (daemon/store_apply.py): several outcomes of one run in ONE transaction,
against the Firestore emulator.

Each outcome stays its own transition: its own audit record and version, its effect settled,
its own dedup and claim check; the run document ends as applying them one by one leaves it. A
batch for an unknown run fails whole; a batch whose last outcome ends a run releases the target
lock in the same commit although the outcomes before it already buffered writes.
"""

from __future__ import annotations

from typing import Any

import pytest
from google.cloud import firestore

from daemon.store import Applied, RunStore
from daemon.store_targets import Targets
from machines.errors import UnknownRun
from machines.messages import Event

COLLECTION = "orchestrations"
SERVICES = ["consumer", "director", "publisher"]
PLAN: dict[str, Any] = {
    "director": "director",
    "services": ["consumer", "publisher"],
    "all_services": SERVICES,
    "dataflows": ["director-infra"],
    "app_dataflows": [],
}
TARGET = "podium-local/apply-many"
MESSAGE = "eager"  # as daemon/outcome_batches.py applies them


@pytest.fixture
def store(firestore_client: firestore.Client) -> RunStore:
    return RunStore(firestore_client, COLLECTION, owner="replica-a", lease_seconds=30.0)


def effects(store: RunStore, run_id: str) -> dict[str, dict[str, Any]]:
    return {e["id"]: e for e in store.effects(run_id)}


def records(store: RunStore, run_id: str) -> dict[str, dict[str, Any]]:
    return {e["id"]: e for e in store.events(run_id)}


def outcome(store: RunStore, run_id: str, effect_id: str, type_: str, claim: str | None = None,
            **data: Any) -> Event:
    """The outcome event of a pending effect, as ``Dispatcher._event`` builds it (its current claim
    unless ``claim`` says otherwise)."""
    effect = effects(store, run_id)[effect_id]
    return Event(run_id=run_id, event_id=f"{effect_id}~{type_}~{effect['item'] or '-'}", type=type_,
                 item=effect["item"], data={**data, "effect_id": effect_id,
                                            "claim": claim if claim is not None else effect["claim"]})


def in_preflight(store: RunStore, run_id: str, target: str | None = None) -> None:
    """Start a run and apply its config outcome: three preflight effects are then pending."""
    started = store.start(run_id, f"start-{run_id}", plan=PLAN, limits={}, extra={}, target=target)
    assert started.to_state == "generating_config"
    applied = store.apply(outcome(store, run_id, "configgen:-:a0", "config.generated"), MESSAGE)
    assert applied.to_state == "preflight"
    assert sorted(e for e in effects(store, run_id) if e.startswith("preflight:")) == [
        f"preflight:{s}:a0" for s in SERVICES]


def preflights_passed(store: RunStore, run_id: str) -> list[Event]:
    return [outcome(store, run_id, f"preflight:{s}:a0", "preflight.passed") for s in SERVICES]


def then_iam_and_builds(store: RunStore, run_id: str) -> list[Event]:
    """The next fan-out's outcomes: the three builds (recorded in provisioning_iam), then the accounts."""
    return [*(outcome(store, run_id, f"build:{s}:a0", "build.succeeded", image=f"img/{s}") for s in SERVICES),
            outcome(store, run_id, "iam.provision:accounts:a0", "iam.accounts_created")]


def machine_view(doc: dict[str, Any]) -> dict[str, Any]:
    """What the transitions decided, without the times (two runs are applied at different moments)."""
    timer = doc.get("timer") or {}
    return {k: doc.get(k) for k in ("state", "status", "version", "progress", "outputs", "error", "attempt",
                                    "failed_state", "timer_seq")} | {
        "timer": (timer.get("purpose"), timer.get("seq"))}


def test_a_batch_applies_each_outcome_as_its_own_transition(store: RunStore) -> None:
    in_preflight(store, "many")
    batch = preflights_passed(store, "many")
    results = store.apply_many("many", [(e, MESSAGE) for e in batch])

    assert [r.outcome for r in results] == ["applied"] * 3
    assert [r.to_state for r in results] == ["preflight", "preflight", "provisioning_iam"]
    assert [r.decision.run.version for r in results if r.decision] == [3, 4, 5]  # start 1, config 2
    # Each was decided on the run as the one before it left it.
    assert [sorted(s for s, v in (r.decision.run.progress["preflight"] if r.decision else {}).items()
                   if v == "succeeded") for r in results] == [SERVICES[:1], SERVICES[:2], SERVICES]
    assert results[2].run is not None and results[2].run.status == "running"  # for the new effects' handlers
    assert [r.settled_effect for r in results] == [f"preflight:{s}:a0" for s in SERVICES]
    assert results[0].effects == () and results[1].effects == ()
    assert sorted(e.effect_id for e in results[2].effects) == ["build:consumer:a0", "build:director:a0",
                                                               "build:publisher:a0", "iam.provision:accounts:a0"]
    assert set(results[2].claims) == {e.effect_id for e in results[2].effects}

    audit = records(store, "many")
    for event, version in zip(batch, (3, 4, 5), strict=True):
        record = audit[event.event_id]
        assert (record["outcome"], record["version"], record["message_id"], record["type"]) == (
            "applied", version, MESSAGE, "preflight.passed")
    assert audit[batch[2].event_id]["to_state"] == "provisioning_iam"
    assert [audit[e.event_id]["from_state"] for e in batch] == ["preflight"] * 3
    stored = effects(store, "many")
    assert all(stored[f"preflight:{s}:a0"]["status"] == "done" for s in SERVICES)
    # The effects the last transition scheduled were written by the same commit, leased here.
    assert all(stored[e.effect_id]["status"] == "pending" and stored[e.effect_id]["claim"] == results[2].claims[e.effect_id]
               for e in results[2].effects)
    doc = store.get("many") or {}
    assert (doc["state"], doc["version"]) == ("provisioning_iam", 5)


def test_a_batch_leaves_the_run_as_applying_its_outcomes_one_by_one(store: RunStore) -> None:
    for run_id in ("one", "many"):
        in_preflight(store, run_id)
    for next_outcomes in (preflights_passed, then_iam_and_builds):
        for event in next_outcomes(store, "one"):
            store.apply(event, MESSAGE)
        batch = next_outcomes(store, "many")
        assert len(store.apply_many("many", [(e, MESSAGE) for e in batch])) == len(batch)
    one, many = store.get("one") or {}, store.get("many") or {}
    assert many["state"] == "verifying_iam" and many["version"] == 9
    assert machine_view(many) == machine_view(one)
    assert {k: (v["status"], v["kind"]) for k, v in effects(store, "many").items()} == {
        k: (v["status"], v["kind"]) for k, v in effects(store, "one").items()}

    def log(run_id: str) -> list[tuple[Any, ...]]:
        return sorted((r["event_id"], r["outcome"], r["version"], r["from_state"], r["to_state"])
                      for r in store.events(run_id) if r["type"] != "command.start")

    assert log("many") == log("one")


def test_the_same_event_twice_in_a_batch_is_applied_once(store: RunStore) -> None:
    in_preflight(store, "dup")
    first, second, _ = preflights_passed(store, "dup")
    results = store.apply_many("dup", [(first, MESSAGE), (first, MESSAGE), (second, MESSAGE)])
    assert [r.outcome for r in results] == ["applied", "duplicate", "applied"]
    assert results[1].detail == "already applied" and results[1].decision is None
    assert [r.decision.run.version for r in (results[0], results[2]) if r.decision] == [3, 4]
    audit = records(store, "dup")
    assert audit[first.event_id]["version"] == 3 and audit[second.event_id]["version"] == 4
    dup = audit[f"{first.event_id}~dup~{MESSAGE}"]
    assert (dup["outcome"], dup["event_id"], dup["version"]) == ("duplicate", first.event_id, None)
    doc = store.get("dup") or {}
    assert doc["version"] == 4 and doc["progress"]["preflight"] == {
        "consumer": "succeeded", "director": "succeeded", "publisher": "pending"}
    assert effects(store, "dup")[first.data["effect_id"]]["status"] == "done"
    # An outcome already applied by an earlier transaction is a duplicate too.
    [again] = store.apply_many("dup", [(second, MESSAGE)])
    assert again.outcome == "duplicate" and (store.get("dup") or {})["version"] == 4


def test_the_outcome_of_a_superseded_claim_is_ignored_and_the_rest_of_the_batch_applies(store: RunStore) -> None:
    in_preflight(store, "stale")
    stale = outcome(store, "stale", "preflight:director:a0", "preflight.passed", claim="claim-of-a-lost-lease")
    consumer, _, publisher = preflights_passed(store, "stale")
    results = store.apply_many("stale", [(consumer, MESSAGE), (stale, MESSAGE), (publisher, MESSAGE)])
    assert [r.outcome for r in results] == ["applied", "ignored", "applied"]
    assert "superseded claim" in results[1].detail and results[1].settled_effect is None
    assert [r.decision.run.version for r in (results[0], results[2]) if r.decision] == [3, 4]
    audit = records(store, "stale")
    ignored = audit[f"{stale.event_id}~ign~{MESSAGE}"]
    assert ignored["outcome"] == "ignored" and "superseded claim" in ignored["detail"]
    assert stale.event_id not in audit  # the id is not used up: the current claim's outcome may come
    stored = effects(store, "stale")
    assert stored["preflight:director:a0"]["status"] == "pending"
    assert stored["preflight:consumer:a0"]["status"] == stored["preflight:publisher:a0"]["status"] == "done"
    doc = store.get("stale") or {}
    assert (doc["state"], doc["version"]) == ("preflight", 4)
    assert doc["progress"]["preflight"]["director"] == "pending"
    # The current claim's outcome of that effect then applies and completes the fan-in.
    [current] = store.apply_many("stale", [(outcome(store, "stale", "preflight:director:a0", "preflight.passed"),
                                            MESSAGE)])
    assert (current.outcome, current.to_state) == ("applied", "provisioning_iam")


def test_a_batch_for_an_unknown_run_fails_whole(store: RunStore) -> None:
    events = [Event(run_id="ghost", event_id=f"preflight:{s}:a0~preflight.passed~{s}", type="preflight.passed",
                    item=s, data={"effect_id": f"preflight:{s}:a0", "claim": "c"}) for s in SERVICES]
    with pytest.raises(UnknownRun):
        store.apply_many("ghost", [(e, MESSAGE) for e in events])
    assert store.get("ghost") is None and store.events("ghost") == [] and store.effects("ghost") == []


def test_a_batch_refuses_an_event_of_another_run(store: RunStore) -> None:
    in_preflight(store, "mine")
    in_preflight(store, "theirs")
    mine, *_ = preflights_passed(store, "mine")
    theirs, *_ = preflights_passed(store, "theirs")
    with pytest.raises(ValueError, match="not 'mine'"):
        store.apply_many("mine", [(mine, MESSAGE), (theirs, MESSAGE)])
    assert (store.get("mine") or {})["version"] == 2 and (store.get("theirs") or {})["version"] == 2


def test_a_batch_refuses_a_command_it_could_not_apply_safely(store: RunStore) -> None:
    in_preflight(store, "cmd")
    first, *_ = preflights_passed(store, "cmd")
    cancel = Event(run_id="cmd", event_id="cmd~cancel-1", type="command.cancel")
    with pytest.raises(ValueError, match="not an effect's outcome"):
        store.apply_many("cmd", [(first, MESSAGE), (cancel, "m-1")])
    assert (store.get("cmd") or {})["version"] == 2
    assert store.apply_many("cmd", [(cancel, "m-1")])[0].to_state == "cancelled"  # alone it applies


def test_a_batch_ending_its_run_releases_the_target_in_the_same_commit(store: RunStore) -> None:
    in_preflight(store, "holder", target=TARGET)
    queued = store.start("next", "start-next", plan=PLAN, limits={}, extra={}, target=TARGET)
    assert queued.to_state == "queued"
    lock_ref = Targets(store.client, COLLECTION).ref(TARGET)
    assert ((lock_ref.get().to_dict() or {})["holder"], (lock_ref.get().to_dict() or {})["queue"]) == (
        "holder", ["next"])

    consumer, director, _ = preflights_passed(store, "holder")
    failed = outcome(store, "holder", "preflight:publisher:a0", "preflight.failed", error="no Dockerfile")
    # Two outcomes buffer their writes (records, settled effects) before the last one, which
    # ends the run and must read the target's lock in the same transaction.
    results: list[Applied] = store.apply_many("holder", [(consumer, MESSAGE), (director, MESSAGE),
                                                         (failed, MESSAGE)])
    assert [r.outcome for r in results] == ["applied"] * 3
    assert [r.to_state for r in results] == ["preflight", "preflight", "failed"]

    doc = store.get("holder") or {}
    assert (doc["state"], doc["status"], doc["version"]) == ("failed", "failed", 5)
    assert doc["error"]["reason"] == "preflight_failed" and "no Dockerfile" in doc["error"]["message"]
    lock = lock_ref.get().to_dict() or {}
    assert (lock["holder"], lock["queue"]) == ("next", [])  # handed to the queued run ...
    woken = store.get("next") or {}
    assert woken["wake_at"] == lock["updated_at"] == doc["updated_at"]  # ... woken, by the same commit
    assert all(effects(store, "holder")[f"preflight:{s}:a0"]["status"] == "done" for s in SERVICES)
    audit = records(store, "holder")
    assert [audit[e.event_id]["version"] for e in (consumer, director, failed)] == [3, 4, 5]
