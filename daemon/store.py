"""The run repository on Firestore: the only module that reads or writes run documents.

Every message costs ONE transaction (DESIGN.md §7 rule 1): read the run and the event's
audit record together, decide, then write the run (version+1), the audit record and the
outbox entries in one commit. The transaction body has no side effects, because Firestore
may run it more than once. Effects created here are already leased to this replica, and
the transaction applying an effect's outcome event marks it done: no extra round trips.

The lease writes of effects (claims, renewals, hand-backs) are in :mod:`daemon.store_leases`,
the records of rejected messages in :mod:`daemon.rejected`, and the target locks (one active run
per target) in :mod:`daemon.store_targets`, read and written by the same transactions as the runs.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from daemon import rejected
from daemon.architectures import Architectures
from daemon.firestore_tx import Snapshots, run_transaction
from daemon.firestore_writes import create_doc, set_doc, update_doc
from daemon.store_leases import EffectLeases, utcnow
from daemon.store_targets import Targets, start_on_busy_target
from handlers.base import outcome_mismatch
from machines.errors import UnknownRun
from machines.messages import EffectSpec, Event, RunState, RunView
from machines.orchestration import (
    Decision,
    decide,
    rejected_start,
    start_run,
)

EFFECTS = "effects"
EVENTS = "events"

# Fields of the run document the machine owns; everything else (architecture, source_root)
# is written once at start.
_MACHINE_FIELDS = (
    "state",
    "status",
    "version",
    "error",
    "progress",
    "outputs",
    "attempt",
    "failed_state",
    "wake_at",
    "timer",
    "timer_seq",
    "updated_at",
)


@dataclass(frozen=True)
class Applied:
    """The result of one message: its outcome and, if it changed the run, what to do next."""

    outcome: str
    run_id: str
    detail: str = ""
    decision: Decision | None = None
    effects: tuple[EffectSpec, ...] = ()
    run: RunView | None = None  # the run after this message, as its effects' handlers see it
    settled_effect: str | None = None  # the effect whose outcome this message was (now done)
    claims: Mapping[str, str] = field(default_factory=dict)  # effect_id -> claim: effects leased to this replica

    @property
    def from_state(self) -> str | None:
        return self.decision.from_state if self.decision else None

    @property
    def to_state(self) -> str | None:
        return self.decision.to_state if self.decision else None


# What ``apply`` reads of the run and, in the same request, of the effect an outcome settles:
# everything but the run's architecture (daemon/architectures.py).
_READ_IN_APPLY = sorted(
    (set(RunState.model_fields) | set(RunView.model_fields) | {"target", "architecture_name"}) - {"architecture"}
    | {"kind", "item", "claim", "status"}
)


def run_fields(run: RunState) -> dict[str, Any]:
    """The machine's fields of a run as Firestore stores them."""
    return run.model_dump(mode="python", include=set(_MACHINE_FIELDS))


def stored_limits(limits: Mapping[str, timedelta]) -> dict[str, float]:
    return {key: duration.total_seconds() for key, duration in limits.items()}


def run_state(doc: Mapping[str, Any]) -> RunState:
    """A run document as the machine's record (limits are stored as seconds; pydantic reads them back)."""
    return RunState.model_validate(doc)


def run_view(doc: Mapping[str, Any]) -> RunView:
    return RunView.model_validate(doc)


class RunStore(EffectLeases):
    """The run repository: reads, the one transaction per message, and (from
    :class:`EffectLeases`) the lease writes of the effects; rejected messages in :mod:`daemon.rejected`."""

    def __init__(self, client: firestore.Client, collection: str, owner: str, lease_seconds: float) -> None:
        self.client = client
        self.runs = client.collection(collection)
        self.owner = owner
        self.lease = timedelta(seconds=lease_seconds)
        # Transactions on one run are serialised inside this replica: the Firestore emulator (and
        # Firestore's pessimistic mode) would otherwise make them wait on each other's locks.
        # One lock per run, not per hash stripe: two different runs never wait for each other.
        self._serial = _RunLocks()
        self.targets = Targets(client, collection)
        self.architectures = Architectures(self.runs)

    # ---- reads -----------------------------------------------------------------------
    def get(self, run_id: str) -> dict[str, Any] | None:
        snap = self.runs.document(run_id).get()
        return snap.to_dict() if snap.exists else None

    def events(self, run_id: str) -> list[dict[str, Any]]:
        docs = self.runs.document(run_id).collection(EVENTS).order_by("received_at").stream()
        return [(d.to_dict() or {}) | {"id": d.id} for d in docs]

    def effects(self, run_id: str) -> list[dict[str, Any]]:
        return [(d.to_dict() or {}) | {"id": d.id} for d in self.runs.document(run_id).collection(EFFECTS).stream()]

    def expired_effects(self, now: datetime, limit: int = 50) -> list[dict[str, Any]]:
        """Pending effects whose lease expired (the sweep claims them through ``claim_effect``)."""
        # With the other queries: the index check in tests/unit/test_deploy_packaging.py finds it here.
        query = (
            self.client.collection_group(EFFECTS)
            .where(filter=FieldFilter("status", "==", "pending"))
            .where(filter=FieldFilter("lease_expires", "<=", now))
            .limit(limit)
        )
        return [(d.to_dict() or {}) | {"path": d.reference.path} for d in query.stream()]

    def list_runs(self, status: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        query: Any = self.runs
        if status:
            query = query.where(filter=FieldFilter("status", "==", status))
        query = query.order_by("created_at", direction=firestore.Query.DESCENDING).limit(limit)
        return [d.to_dict() or {} for d in query.stream()]

    def _effect_ref(self, run_id: str, effect_id: str) -> Any:
        return self.runs.document(run_id).collection(EFFECTS).document(effect_id)

    # ---- the hot path ------------------------------------------------------------------
    def start(
        self,
        run_id: str,
        message_id: str,
        *,
        plan: Mapping[str, Any] | None,
        limits: Mapping[str, timedelta],
        extra: Mapping[str, Any],
        invalid: tuple[str, str] | None = None,
        target: str | None = None,
        if_busy: str = "queue",
    ) -> Applied:
        """Create the run if absent (a second start is recorded as a duplicate and changes nothing).

        With a ``target``, the run takes the target's lock; if another run holds it, the new run
        is queued behind it (``if_busy="queue"``) or fails with reason ``target_busy``."""
        run_ref = self.runs.document(run_id)
        event_id = f"cmd~{message_id}"
        target_ref = self.targets.ref(target) if target is not None and invalid is None else None

        refs = [run_ref] + ([target_ref] if target_ref is not None else [])

        def tx(transaction: firestore.Transaction, snaps: Snapshots) -> Applied:
            now = utcnow()
            snap = snaps[run_ref.path]
            lock = (Targets.lock_of(target_ref, target, snaps.get(target_ref.path))
                    if target_ref is not None and target is not None else None)
            if snap.exists:
                # A derived id: a redelivered start (same message id) must not overwrite the
                # record of the start it applied, which holds version 1.
                set_doc(
                    transaction,
                    run_ref.collection(EVENTS).document(f"{event_id}~dup~{message_id}"),
                    _audit(event_id, "command.start", None, message_id, now, snap.get("state"), None, "duplicate",
                           f"run {run_id} already exists; start ignored"),
                )
                return Applied("duplicate", run_id, "run already exists")
            busy = lock is not None and lock.busy_for(run_id)
            if busy and lock is not None and not self.targets.holder_ended(transaction, lock):
                decision = start_on_busy_target(run_id, plan, limits, now, lock, if_busy)
            elif invalid is not None:
                decision = rejected_start(run_id, invalid[0], invalid[1], now)
            else:
                assert plan is not None
                decision = start_run(run_id, plan, limits, now)
            if lock is not None and decision.to_state == "queued":
                self.targets.enqueue(transaction, lock, run_id, now)
            elif lock is not None and decision.to_state != "failed":
                self.targets.acquire(transaction, lock, run_id, now)
            doc = {"run_id": run_id, "created_at": now, **run_fields(decision.run), "plan": dict(decision.run.plan),
                   "limits": stored_limits(decision.run.limits), **extra}
            if target is not None:
                doc["target"] = target
            doc["updated_at"] = now
            create_doc(transaction, run_ref, doc)
            set_doc(
                transaction,
                run_ref.collection(EVENTS).document(event_id),
                _audit(event_id, "command.start", None, message_id, now, "pending", decision.to_state, "applied",
                       decision.detail, version=decision.run.version),
            )
            claims = self._write_effects(transaction, run_ref, decision.effects, now)
            if "architecture" in extra:
                self.architectures.remember(run_id, extra["architecture"])
            return Applied("applied", run_id, decision.detail, decision, decision.effects, run_view(doc), claims=claims)

        with self._serial(run_id):
            return run_transaction(self.client, refs, tx)

    def apply(self, event: Event, message_id: str) -> Applied:
        """Apply one event to its run in one transaction.

        An event carrying ``effect_id`` is that effect's outcome. The effect is read by the same
        ``get_all`` as the run (no extra round trip) and the same commit marks it done, but only
        if the event is an outcome of its kind and item and comes from its current claim: the
        outcome of a superseded claim (a replica that lost the lease) is recorded ``ignored``.
        """
        run_ref = self.runs.document(event.run_id)
        event_ref = run_ref.collection(EVENTS).document(event.event_id)
        effect_id = event.data.get("effect_id") if isinstance(event.data.get("effect_id"), str) else None
        effect_ref = run_ref.collection(EFFECTS).document(effect_id) if effect_id else None
        refs = [run_ref, event_ref] + ([effect_ref] if effect_ref is not None else [])

        def tx(transaction: firestore.Transaction, snaps: Snapshots) -> Applied:
            now = utcnow()
            run_snap, event_snap = snaps[run_ref.path], snaps[event_ref.path]
            if not run_snap.exists:
                raise UnknownRun(f"no run with id {event.run_id!r}")
            doc = run_snap.to_dict() or {}
            effect_snap = snaps.get(effect_ref.path) if effect_ref is not None else None
            effect = (effect_snap.to_dict() or {}) if effect_snap is not None and effect_snap.exists else None
            refused = _not_its_outcome(event, effect)
            if refused:  # settles nothing and changes nothing; a valid twin may still come
                set_doc(
                    transaction,
                    run_ref.collection(EVENTS).document(f"{event.event_id}~ign~{message_id}"),
                    _audit(event.event_id, event.type, event.item, message_id, now, doc.get("state"), None,
                           "ignored", refused),
                )
                return Applied("ignored", event.run_id, refused)
            settles = effect_ref if effect is not None and effect.get("status") == "pending" else None
            if event_snap.exists:
                dup_id = f"{event.event_id}~dup~{message_id}"
                set_doc(
                    transaction,
                    run_ref.collection(EVENTS).document(dup_id),
                    _audit(event.event_id, event.type, event.item, message_id, now, doc.get("state"), None,
                           "duplicate", "already applied"),
                )
                self._mark_done(transaction, settles, now)
                return Applied("duplicate", event.run_id, "already applied", settled_effect=effect_id)
            run = run_state(doc)
            target = doc.get("target") if isinstance(doc.get("target"), str) else None
            lock, event_now, busy = self.targets.before_decision(transaction, run, event, target)
            if busy:  # a retry or teardown must wait until the target is free: nothing changes
                set_doc(
                    transaction,
                    run_ref.collection(EVENTS).document(f"{event.event_id}~ign~{message_id}"),
                    _audit(event.event_id, event.type, event.item, message_id, now, doc.get("state"), None,
                           "ignored", busy),
                )
                return Applied("ignored", event.run_id, busy)
            decision = decide(run, event_now, now)
            # A cancelled run's pending effects are cancelled with it: the replicas running them
            # lose their leases at the next renewal and stop (EffectContext.cancelled). Read
            # here: every read of a transaction comes before its first write.
            stopped = (list(transaction.get(run_ref.collection(EFFECTS).where(
                filter=FieldFilter("status", "==", "pending"))))
                if decision.applied and decision.to_state == "cancelled" else [])
            if decision.applied and target is not None:
                self.targets.after_decision(transaction, decision, target, lock, now)
            if decision.applied:
                fields = run_fields(decision.run)
                # Only the fields this transition changed (always version and updated_at): the
                # document ends the same, with less to encode and send than every machine field.
                update_doc(transaction, run_ref, {k: v for k, v in fields.items() if k not in doc or doc[k] != v})
                record_id = event.event_id
                doc = doc | fields
            else:  # an ignored event does not consume its id: a valid twin may still come
                record_id = f"{event.event_id}~ign~{message_id}"
            set_doc(
                transaction,
                run_ref.collection(EVENTS).document(record_id),
                _audit(event.event_id, event_now.type, event.item, message_id, now, decision.from_state,
                       decision.to_state if decision.applied else None, decision.outcome, decision.detail,
                       version=decision.run.version if decision.applied else None),
            )
            for snap in stopped:
                transaction.update(snap.reference, {"status": "cancelled", "done_at": now})
            claims = self._write_effects(transaction, run_ref, decision.effects, now)
            self._mark_done(transaction, settles, now)
            return Applied(decision.outcome, event.run_id, decision.detail, decision, decision.effects, run_view(doc),
                           effect_id, claims)

        with self._serial(event.run_id):
            applied = run_transaction(self.client, refs, tx, fields=_READ_IN_APPLY)
        if applied.effects and applied.run is not None:  # their handlers read the architecture
            architecture = self.architectures.of(event.run_id)
            applied = replace(applied, run=applied.run.model_copy(update={"architecture": architecture}))
        return applied

    def _write_effects(
        self, transaction: firestore.Transaction, run_ref: Any, effects: Sequence[EffectSpec], now: datetime
    ) -> dict[str, str]:
        """Create the effects leased to this replica (the first claim counts as attempt 1)."""
        claims: dict[str, str] = {}
        for eff in effects:
            claims[eff.effect_id] = claim = self.new_claim()
            set_doc(
                transaction,
                run_ref.collection(EFFECTS).document(eff.effect_id),
                {
                    "run_id": run_ref.id,
                    "effect_id": eff.effect_id,
                    "kind": eff.kind,
                    "item": eff.item,
                    "params": eff.params,
                    "status": "pending",
                    "owner": self.owner,
                    "claim": claim,
                    "lease_expires": now + self.lease,
                    "attempts": 1,
                    "created_at": now,
                },
            )
        return claims

    @staticmethod
    def _mark_done(transaction: firestore.Transaction, effect_ref: Any, now: datetime) -> None:
        # Conditional through the transaction: the effect was read (pending) by the same get_all.
        if effect_ref is not None:
            update_doc(transaction, effect_ref, {"status": "done", "done_at": now})

    # ---- rejected input ----------------------------------------------------------------
    def record_rejected(
        self,
        message_id: str,
        body: bytes,
        attributes: Mapping[str, str],
        reason: str,
        message: str,
        source: str,
    ) -> None:
        """Record a message that is acked without being applied (see :mod:`daemon.rejected`)."""
        rejected.record_rejected(self.client, message_id, body, attributes, reason, message, source)

    # ---- timers ------------------------------------------------------------------------
    def due_timers(self, now: datetime, limit: int = 100) -> list[tuple[str, int]]:
        query = self.runs.where(filter=FieldFilter("wake_at", "<=", now)).limit(limit)
        out = []
        for snap in query.select(["timer"]).stream():
            timer = snap.get("timer") or {}
            if "seq" in timer:
                out.append((snap.id, int(timer["seq"])))
        return out


class _RunLocks:
    """A lock per run id, kept only while a thread holds or waits for it (memory stays bounded)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, list[int]]] = {}

    @contextmanager
    def __call__(self, run_id: str) -> Iterator[None]:
        with self._guard:
            entry = self._locks.get(run_id)
            if entry is None:
                entry = self._locks[run_id] = (threading.Lock(), [0])
            lock, users = entry
            users[0] += 1
        try:
            with lock:
                yield
        finally:
            with self._guard:
                users[0] -= 1
                if not users[0]:
                    del self._locks[run_id]


def _audit(
    event_id: str,
    type_: str,
    item: str | None,
    message_id: str,
    now: datetime,
    from_state: str | None,
    to_state: str | None,
    outcome: str,
    detail: str,
    version: int | None = None,
) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "type": type_,
        "item": item,
        "message_id": message_id,
        "received_at": now,
        "from_state": from_state,
        "to_state": to_state,
        "outcome": outcome,
        "detail": detail[:500],
        "version": version,
    }


def _not_its_outcome(event: Event, effect: Mapping[str, Any] | None) -> str | None:
    """Why an event naming an effect must not settle it nor move the run (None if it may).

    An event stamped with an effect it cannot be the outcome of (another kind or item) is a bug
    or a forgery; one from a claim the effect no longer has comes from a replica that lost the
    lease while another ran the effect again. Both are recorded ``ignored``, not applied. Events
    without a claim (Cloud Build's notifications) are checked for kind and item only.
    """
    if effect is None:
        return None
    mismatch = outcome_mismatch(str(effect.get("kind")), effect.get("item"), event.type, event.item)
    if mismatch:
        return f"not an outcome of effect {effect.get('effect_id')!r}: {mismatch}"
    claim = event.data.get("claim")
    if claim is not None and claim != effect.get("claim"):
        return f"superseded claim: effect {effect.get('effect_id')!r} is held by claim {effect.get('claim')!r}, not {claim!r}"
    return None
