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
from datetime import datetime, timedelta
from typing import Any

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from daemon import rejected
from daemon.architectures import Architectures
from daemon.firestore_tx import Snapshots, run_transaction
from daemon.firestore_writes import create_doc, set_doc
from daemon.store_apply import RunApply
from daemon.store_leases import EffectLeases, utcnow
from daemon.store_records import (  # re-exported: the store's callers import them from here
    EFFECTS,
    EVENTS,
    Applied,
    audit_record,
    run_fields,
    run_state,
    run_view,
    stored_limits,
)
from daemon.store_targets import Targets, start_on_busy_target
from machines.messages import EffectSpec
from machines.orchestration import rejected_start, start_run

__all__ = ["EFFECTS", "EVENTS", "Applied", "RunStore", "run_fields", "run_state", "run_view", "stored_limits"]


class RunStore(RunApply, EffectLeases):
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
                    audit_record(event_id, "command.start", None, message_id, now, snap.get("state"), None, "duplicate",
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
                audit_record(event_id, "command.start", None, message_id, now, "pending", decision.to_state, "applied",
                       decision.detail, version=decision.run.version),
            )
            claims = self._write_effects(transaction, run_ref, decision.effects, now)
            if "architecture" in extra:
                self.architectures.remember(run_id, extra["architecture"])
            return Applied("applied", run_id, decision.detail, decision, decision.effects, run_view(doc), claims=claims)

        with self._serial(run_id):
            return run_transaction(self.client, refs, tx)

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
