"""Effect leases on Firestore: claims, renewals, hand-backs and the writes that settle effects.

An effect (``runs/<run_id>/effects/<effect_id>``) is leased under a *claim*. Every write here
is conditional on it: the effect is read, checked (still pending, still this claim) and
written with an ``update_time`` precondition, so a replica that lost its lease can neither
renew nor settle it. :class:`EffectLeases` is a mixin of :class:`daemon.store.RunStore`, not
a separate object, so the store's ``client`` is the one every lease write goes through (a test
may replace it on a store). Where effects live (``_effect_ref``) and the sweep's query
(``expired_effects``) stay with the store's other paths and queries.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from google.api_core.exceptions import FailedPrecondition
from google.cloud import firestore

from daemon.firestore_tx import Snapshots, run_transaction
from machines.errors import TransientError
from machines.messages import EffectSpec, RunView

log = structlog.get_logger("podium.store")

_GUARDED_BATCH = 200  # effects per conditional batch (Firestore allows 500 writes)
_GUARD_ROUNDS = 5  # read-check-write tries when a precondition keeps failing

Key = tuple[str, str]  # (run_id, effect_id)


@dataclass(frozen=True)
class LeasedEffect:
    """An effect this replica holds a lease on, typed from its document."""

    run_id: str
    spec: EffectSpec
    claim: str
    attempts: int  # claims so far, this one included (1 = the first)
    last_error: str | None = None

    @property
    def key(self) -> Key:
        return (self.run_id, self.spec.effect_id)


def leased_effect(doc: Mapping[str, Any]) -> LeasedEffect:
    spec = EffectSpec(effect_id=doc["effect_id"], kind=doc["kind"], item=doc.get("item"), params=doc.get("params") or {})
    return LeasedEffect(str(doc["run_id"]), spec, str(doc["claim"]), int(doc["attempts"]), doc.get("last_error"))


def utcnow() -> datetime:
    return datetime.now(UTC)


class EffectLeases:
    """The lease writes of :class:`daemon.store.RunStore` (which sets these attributes)."""

    client: firestore.Client
    runs: firestore.CollectionReference
    owner: str
    lease: timedelta
    _serial: Callable[[str], AbstractContextManager[None]]  # one transaction per run at a time
    _effect_ref: Callable[[str, str], Any]  # (run_id, effect_id) -> the effect's document

    def new_claim(self) -> str:
        """A claim id: which lease of an effect (creation or sweep) a runner works under."""
        return f"{self.owner}:{uuid.uuid4().hex[:12]}"

    # ---- what the effect runner writes -----------------------------------------------
    def effect_done(self, run_id: str, effect_id: str, claim: str) -> bool:
        """Mark done an effect that reports nothing. False if the claim was lost (nothing written)."""
        return not self._write_if_claimed({(run_id, effect_id): claim}, {"status": "done", "done_at": utcnow()})

    def effect_retry_later(
        self, run_id: str, effect_id: str, claim: str, delay: float, error: str, recheck: bool = False
    ) -> bool:
        """Leave the effect pending with a lease that expires after the backoff: the sweep re-drives it.

        ``recheck``: the work is under way, not failed (``NotReady``), so the next claim does not
        count an attempt. False if the claim was lost (nothing written).
        """
        update: dict[str, Any] = {
            "lease_expires": utcnow() + timedelta(seconds=delay),
            "last_error": error[:2000],
            "recheck": recheck,
        }
        return not self._write_if_claimed({(run_id, effect_id): claim}, update)

    def claim_effect(self, run_id: str, effect_id: str) -> tuple[LeasedEffect, RunView] | None:
        """Take over an effect whose lease expired. Returns (the effect, its run) or None if lost.

        The effect comes back with its new ``claim`` and ``attempts``: every claim counts an
        attempt (except the re-check of work that was not ready, or work handed back unstarted on
        shutdown), so an effect that keeps
        crashing its process is not re-driven forever. Only the effect is read in the
        transaction: locking the run document here would contend with the transactions
        applying that run's events.
        """
        run_ref = self.runs.document(run_id)
        ref = self._effect_ref(run_id, effect_id)

        def tx(transaction: firestore.Transaction, snaps: Snapshots) -> dict[str, Any] | None:
            now = utcnow()
            eff = snaps[ref.path]
            if not eff.exists:
                return None
            data = eff.to_dict() or {}
            if data.get("status") != "pending" or data["lease_expires"] > now:
                return None
            attempts = int(data.get("attempts", 0)) + (0 if data.get("recheck") else 1)
            update = {"owner": self.owner, "claim": self.new_claim(), "lease_expires": now + self.lease,
                      "attempts": attempts, "recheck": False}
            transaction.update(ref, update)
            return data | update

        with self._serial(run_id):
            claimed = run_transaction(self.client, [ref], tx)
        if claimed is None:
            return None
        run = run_ref.get()
        return (leased_effect(claimed), RunView.model_validate(run.to_dict() or {})) if run.exists else None

    def extend_leases(self, held: Mapping[Key, str], fresh: Collection[Key] = ()) -> set[Key]:
        """Renew the leases of ``{(run_id, effect_id): claim}``; returns the keys no longer ours
        (taken by another claim, or settled): the runner drops those. The ``fresh`` ones (granted
        or renewed moments ago) are only checked, not written: a write is what makes a
        heartbeat cost, and under load it collides with the applies settling them."""
        return self._write_if_claimed(held, {"lease_expires": utcnow() + self.lease}, fresh)

    def release_leases(self, held: Mapping[Key, str]) -> None:
        """On shutdown: hand queued effects back so another replica takes them at once. They never
        started, so taking them over is not a new attempt (``recheck``): a replica stopped
        gracefully (a scale-in, a redeploy) costs no effect its retry budget."""
        self._write_if_claimed(held, {"lease_expires": utcnow(), "recheck": True})

    # ---- conditional writes ------------------------------------------------------------
    def _write_if_claimed(self, held: Mapping[Key, str], fields: Mapping[str, Any],
                          check_only: Collection[Key] = ()) -> set[Key]:
        """Write ``fields`` to each effect still pending under its claim (except those in
        ``check_only``, only read); return the keys that are not."""
        lost: set[Key] = set()
        keys = list(held)
        for i in range(0, len(keys), _GUARDED_BATCH):
            chunk = {k: held[k] for k in keys[i : i + _GUARDED_BATCH]}
            lost |= self._write_chunk_if_claimed(chunk, fields, check_only)
        return lost

    def _write_chunk_if_claimed(self, held: Mapping[Key, str], fields: Mapping[str, Any],
                                check_only: Collection[Key]) -> set[Key]:
        """One conditional batch for the chunk; if any effect changed between read and write (an
        apply, a claim: likely under load), each one on its own, so one busy effect cannot keep
        every other lease of this replica from being renewed."""
        lost: set[Key] = set()
        batch, writes = self.client.batch(), 0
        for key, snap in self._pending_under_claim(held, lost):
            if key in check_only:
                continue
            batch.update(snap.reference, dict(fields), option=self.client.write_option(last_update_time=snap.update_time))
            writes += 1
        if not writes:
            return lost
        try:
            batch.commit()
            return lost
        except FailedPrecondition:
            pass
        for key in [k for k in held if k not in lost and k not in check_only]:
            try:
                if not self._write_one_if_claimed(key, held[key], fields):
                    lost.add(key)
            except TransientError as exc:  # still ours as far as we know: the next heartbeat retries
                log.warning("lease write kept colliding", effect_id=key[1], error=str(exc))
        return lost

    def _pending_under_claim(self, held: Mapping[Key, str], lost: set[Key]) -> Iterator[tuple[Key, Any]]:
        """The snapshots of the effects still pending under their claim; adds the others to ``lost``."""
        refs = {self._effect_ref(*key).path: key for key in held}
        for snap in self.client.get_all([self._effect_ref(*key) for key in held]):
            key = refs[snap.reference.path]
            data = (snap.to_dict() or {}) if snap.exists else {}
            if data.get("status") != "pending" or data.get("claim") != held[key]:
                lost.add(key)
            else:
                yield key, snap

    def _write_one_if_claimed(self, key: Key, claim: str, fields: Mapping[str, Any]) -> bool:
        """Conditional write of one effect; False once it is no longer pending under ``claim``."""
        for _ in range(_GUARD_ROUNDS):
            lost: set[Key] = set()
            found = list(self._pending_under_claim({key: claim}, lost))
            if not found:
                return False
            snap = found[0][1]
            try:
                snap.reference.update(dict(fields), option=self.client.write_option(last_update_time=snap.update_time))
                return True
            except FailedPrecondition:  # changed between read and write again: read again
                continue
        raise TransientError(f"effect {key[1]} of run {key[0]} kept changing under us ({_GUARD_ROUNDS} tries)")
