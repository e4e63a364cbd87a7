"""Applying events to a run: the transaction of :meth:`RunStore.apply` and :meth:`RunStore.apply_many`.

One event is one transition (DESIGN.md §7): it is checked (its effect's claim, duplicates), the
machine decides, and its audit record, the run's new fields and the effects it schedules are
written in the same commit as the effect it settles. ``apply_many`` applies several outcomes of
one run in ONE transaction (issue 15.2b, :mod:`daemon.outcome_batches`): each is still decided
on the run as the ones before it left it and keeps its own audit record and version; the run
document is written once, with what they changed together. A mixin of
:class:`daemon.store.RunStore`, like :class:`daemon.store_leases.EffectLeases`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from daemon.architectures import Architectures
from daemon.firestore_tx import Snapshots, run_transaction
from daemon.firestore_writes import set_doc, update_doc
from daemon.store_leases import utcnow
from daemon.store_records import (
    EFFECTS,
    EVENTS,
    READ_IN_APPLY,
    Applied,
    audit_record,
    not_its_outcome,
    run_fields,
    run_state,
    run_view,
)
from daemon.store_targets import Targets
from machines.errors import UnknownRun
from machines.messages import EffectSpec, Event
from machines.orchestration import decide

Item = tuple[Event, str]  # an event and the id of the message that carried it


@dataclass
class _Fold:
    """The run as the events of one transaction leave it, one after the other."""

    doc: dict[str, Any]  # the run document as read, with each applied decision's fields
    recorded: set[str] = field(default_factory=set)  # event ids applied by this transaction
    settled: set[str] = field(default_factory=set)  # effect paths marked done by this transaction
    # Effects this transaction (re)created, as written: a later event of the batch is checked
    # against them, not against what the read saw.
    effects: dict[str, dict[str, Any]] = field(default_factory=dict)


class RunApply:
    """The event-applying transactions of :class:`daemon.store.RunStore` (which sets these attributes)."""

    client: firestore.Client
    runs: Any
    lease: timedelta
    targets: Targets
    architectures: Architectures
    _serial: Callable[[str], AbstractContextManager[None]]

    def _write_effects(self, transaction: firestore.Transaction, run_ref: Any, effects: Sequence[EffectSpec],
                       now: datetime) -> dict[str, str]:
        raise NotImplementedError  # RunStore's

    def apply(self, event: Event, message_id: str) -> Applied:
        """Apply one event to its run in one transaction.

        An event carrying ``effect_id`` is that effect's outcome. The effect is read by the same
        ``get_all`` as the run (no extra round trip) and the same commit marks it done, but only
        if the event is an outcome of its kind and item and comes from its current claim: the
        outcome of a superseded claim (a replica that lost the lease) is recorded ``ignored``.
        """
        return self.apply_many(event.run_id, [(event, message_id)])[0]

    def apply_many(self, run_id: str, items: Sequence[Item]) -> list[Applied]:
        """Apply the events of run ``run_id``, in order, in one transaction; one result each.

        Several events must be outcomes of effects (what :mod:`daemon.outcome_batches`
        gathers): their reads after the first are at most the target lock of the event that
        ends the run, so deferring each event's writes to the commit changes nothing they
        read. A command could read what the batch has not written yet (a cancel queries the
        run's pending effects), so it is applied alone. If any event cannot be applied (an
        unknown run, a failed commit) the whole transaction fails."""
        run_ref = self.runs.document(run_id)
        refs: dict[str, Any] = {run_ref.path: run_ref}
        for event, _ in items:
            if event.run_id != run_id:
                raise ValueError(f"event {event.event_id!r} is for run {event.run_id!r}, not {run_id!r}")
            effect_ref = _effect_ref_of(run_ref, event)
            if len(items) > 1 and effect_ref is None:
                raise ValueError(f"event {event.event_id!r} is not an effect's outcome: it is applied alone")
            for ref in (run_ref.collection(EVENTS).document(event.event_id), effect_ref):
                if ref is not None:
                    refs.setdefault(ref.path, ref)

        def tx(transaction: firestore.Transaction, snaps: Snapshots) -> list[Applied]:
            now = utcnow()
            run_snap = snaps[run_ref.path]
            if not run_snap.exists:
                raise UnknownRun(f"no run with id {run_id!r}")
            read = run_snap.to_dict() or {}
            fold = _Fold(dict(read))
            results: list[Applied] = []
            deferred: list[Any] = []
            for event, message_id in items:
                results.append(self._apply_one(transaction, snaps, fold, event, message_id, now))
                # The next event's checks may read (a target lock) and the client refuses reads
                # after writes: hold this event's writes back until the last event is decided.
                deferred.extend(transaction._write_pbs)
                transaction._write_pbs.clear()
            changed = {k: v for k, v in fold.doc.items() if k not in read or read[k] != v}
            if changed:  # only what the transitions changed (always version and updated_at)
                update_doc(transaction, run_ref, changed)
            transaction._add_write_pbs(deferred)
            return results

        with self._serial(run_id):
            applied = run_transaction(self.client, list(refs.values()), tx, fields=READ_IN_APPLY)
        if any(a.effects and a.run is not None for a in applied):  # their handlers read the architecture
            architecture = self.architectures.of(run_id)
            applied = [replace(a, run=a.run.model_copy(update={"architecture": architecture}))
                       if a.effects and a.run is not None else a for a in applied]
        return applied

    def _apply_one(self, transaction: firestore.Transaction, snaps: Snapshots, fold: _Fold, event: Event,
                   message_id: str, now: datetime) -> Applied:
        run_ref = self.runs.document(event.run_id)
        doc = fold.doc
        effect_ref = _effect_ref_of(run_ref, event)
        effect_snap = snaps.get(effect_ref.path) if effect_ref is not None else None
        effect = (effect_snap.to_dict() or {}) if effect_snap is not None and effect_snap.exists else None
        if effect_ref is not None and effect_ref.path in fold.effects:
            effect = fold.effects[effect_ref.path]

        def record(record_id: str, outcome: str, detail: str, to_state: str | None = None,
                   from_state: str | None = None, version: int | None = None, type_: str | None = None) -> None:
            set_doc(transaction, run_ref.collection(EVENTS).document(record_id),
                    audit_record(event.event_id, type_ or event.type, event.item, message_id, now,
                                 from_state if from_state is not None else doc.get("state"), to_state, outcome,
                                 detail, version=version))

        refused = not_its_outcome(event, effect)
        if refused:  # settles nothing and changes nothing; a valid twin may still come
            record(f"{event.event_id}~ign~{message_id}", "ignored", refused)
            return Applied("ignored", event.run_id, refused)
        pending = effect is not None and effect.get("status") == "pending" and effect_ref.path not in fold.settled
        settles = effect_ref if pending else None
        effect_id = effect_ref.id if effect_ref is not None else None
        if snaps[run_ref.collection(EVENTS).document(event.event_id).path].exists or event.event_id in fold.recorded:
            record(f"{event.event_id}~dup~{message_id}", "duplicate", "already applied")
            self._settle(transaction, fold, settles, now)
            return Applied("duplicate", event.run_id, "already applied", settled_effect=effect_id)
        run = run_state(doc)
        target = doc.get("target") if isinstance(doc.get("target"), str) else None
        lock, event_now, busy = self.targets.before_decision(transaction, run, event, target)
        if busy:  # a retry or teardown must wait until the target is free: nothing changes
            record(f"{event.event_id}~ign~{message_id}", "ignored", busy)
            return Applied("ignored", event.run_id, busy)
        decision = decide(run, event_now, now)
        # A cancelled run's pending effects are cancelled with it: the replicas running them
        # lose their leases at the next renewal and stop (EffectContext.cancelled).
        stopped = (list(transaction.get(run_ref.collection(EFFECTS).where(
            filter=FieldFilter("status", "==", "pending"))))
            if decision.applied and decision.to_state == "cancelled" else [])
        if decision.applied and target is not None:
            self.targets.after_decision(transaction, decision, target, lock, now)
        if decision.applied:
            fold.doc = doc = doc | run_fields(decision.run)
            fold.recorded.add(event.event_id)
            record(event.event_id, decision.outcome, decision.detail, decision.to_state, decision.from_state,
                   decision.run.version, event_now.type)
        else:  # an ignored event does not consume its id: a valid twin may still come
            record(f"{event.event_id}~ign~{message_id}", decision.outcome, decision.detail, None,
                   decision.from_state, None, event_now.type)
        for snap in stopped:
            transaction.update(snap.reference, {"status": "cancelled", "done_at": now})
        claims = self._write_effects(transaction, run_ref, decision.effects, now)
        for spec in decision.effects:
            path = run_ref.collection(EFFECTS).document(spec.effect_id).path
            fold.effects[path] = {"effect_id": spec.effect_id, "kind": spec.kind, "item": spec.item,
                                  "claim": claims[spec.effect_id], "status": "pending"}
            fold.settled.discard(path)
        self._settle(transaction, fold, settles, now)
        return Applied(decision.outcome, event.run_id, decision.detail, decision, decision.effects, run_view(doc),
                       effect_id, claims)

    @staticmethod
    def _settle(transaction: firestore.Transaction, fold: _Fold, effect_ref: Any, now: datetime) -> None:
        # Conditional through the transaction: the effect was read (pending) by the same get_all.
        if effect_ref is not None:
            update_doc(transaction, effect_ref, {"status": "done", "done_at": now})
            fold.settled.add(effect_ref.path)


def _effect_ref_of(run_ref: Any, event: Event) -> Any:
    effect_id = event.data.get("effect_id")
    return run_ref.collection(EFFECTS).document(effect_id) if isinstance(effect_id, str) else None
