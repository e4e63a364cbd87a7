"""The run repository on Firestore: the only module that reads or writes run documents.

Every message costs ONE transaction (DESIGN.md §7 rule 1): read the run and the event's
audit record together, decide, then write the run (version+1), the audit record and the
outbox entries in one commit. The transaction body has no side effects, because Firestore
may run it more than once. Effects created here are already leased to this replica, and
the transaction applying an effect's outcome event marks it done: no extra round trips.
"""

from __future__ import annotations

import base64
import hashlib
import re
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from google.api_core.exceptions import FailedPrecondition
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from handlers.base import outcome_mismatch
from machines.errors import TransientError, UnknownRun, clip
from machines.messages import EffectSpec, Event, RunState
from machines.orchestration import Decision, decide, failed_run, start_run

EFFECTS = "effects"
EVENTS = "events"
REJECTED = "rejected_messages"
MAX_RAW_BODY = 64 * 1024
log = structlog.get_logger("podium.store")

_GUARDED_BATCH = 200  # effects per conditional batch (Firestore allows 500 writes)
_GUARD_ROUNDS = 5  # read-check-write tries when a precondition keeps failing

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


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Applied:
    """The result of one message: its outcome and, if it changed the run, what to do next."""

    outcome: str
    run_id: str
    detail: str = ""
    decision: Decision | None = None
    effects: list[EffectSpec] = field(default_factory=list)
    run_doc: dict[str, Any] = field(default_factory=dict)
    settled_effect: str | None = None  # the effect whose outcome this message was (now done)
    claims: dict[str, str] = field(default_factory=dict)  # effect_id -> claim: effects leased to this replica

    @property
    def from_state(self) -> str | None:
        return self.decision.from_state if self.decision else None

    @property
    def to_state(self) -> str | None:
        return self.decision.to_state if self.decision else None


def run_fields(run: RunState) -> dict[str, Any]:
    data = run.model_dump(mode="python", include=set(_MACHINE_FIELDS))
    return data


class RunStore:
    def __init__(self, client: firestore.Client, collection: str, owner: str, lease_seconds: float) -> None:
        self.client = client
        self.runs = client.collection(collection)
        self.owner = owner
        self.lease = timedelta(seconds=lease_seconds)
        # Transactions on one run are serialised inside this replica: the Firestore emulator (and
        # Firestore's pessimistic mode) would otherwise make them wait on each other's locks.
        # One lock per run, not per hash stripe: two different runs never wait for each other.
        self._serial = _RunLocks()

    # ---- reads -----------------------------------------------------------------------
    def get(self, run_id: str) -> dict[str, Any] | None:
        snap = self.runs.document(run_id).get()
        return snap.to_dict() if snap.exists else None

    def events(self, run_id: str) -> list[dict[str, Any]]:
        docs = self.runs.document(run_id).collection(EVENTS).order_by("received_at").stream()
        return [(d.to_dict() or {}) | {"id": d.id} for d in docs]

    def effects(self, run_id: str) -> list[dict[str, Any]]:
        return [(d.to_dict() or {}) | {"id": d.id} for d in self.runs.document(run_id).collection(EFFECTS).stream()]

    def list_runs(self, status: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        query: Any = self.runs
        if status:
            query = query.where(filter=FieldFilter("status", "==", status))
        query = query.order_by("created_at", direction=firestore.Query.DESCENDING).limit(limit)
        return [d.to_dict() or {} for d in query.stream()]

    # ---- the hot path ------------------------------------------------------------------
    def start(
        self,
        run_id: str,
        message_id: str,
        *,
        plan: Mapping[str, Any] | None,
        limits: Mapping[str, float],
        extra: Mapping[str, Any],
        invalid: tuple[str, str] | None = None,
    ) -> Applied:
        """Create the run if absent (a second start is recorded as a duplicate and changes nothing)."""
        run_ref = self.runs.document(run_id)
        event_id = f"cmd~{message_id}"

        @firestore.transactional
        def tx(transaction: firestore.Transaction) -> Applied:
            now = utcnow()
            snap = run_ref.get(transaction=transaction)
            if snap.exists:
                # A derived id: a redelivered start (same message id) must not overwrite the
                # record of the start it applied, which holds version 1.
                transaction.set(
                    run_ref.collection(EVENTS).document(f"{event_id}~dup~{message_id}"),
                    _audit(event_id, "command.start", None, message_id, now, snap.get("state"), None, "duplicate",
                           f"run {run_id} already exists; start ignored"),
                )
                return Applied("duplicate", run_id, "run already exists")
            if invalid is not None:
                run = failed_run(run_id, invalid[0], invalid[1], now)
                decision = Decision("applied", "pending", "failed", run, [], f"rejected at start: {invalid[0]}")
            else:
                assert plan is not None
                decision = start_run(run_id, plan, limits, now)
                decision.run.version = 1
            doc = {"run_id": run_id, "created_at": now, **run_fields(decision.run), "plan": decision.run.plan,
                   "limits": decision.run.limits, **extra}
            doc["updated_at"] = now
            transaction.create(run_ref, doc)
            transaction.set(
                run_ref.collection(EVENTS).document(event_id),
                _audit(event_id, "command.start", None, message_id, now, "pending", decision.to_state, "applied",
                       decision.detail, version=decision.run.version),
            )
            claims = self._write_effects(transaction, run_ref, decision.effects, now)
            return Applied("applied", run_id, decision.detail, decision, decision.effects, doc, claims=claims)

        with self._serial(run_id):
            return tx(self.client.transaction())

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

        @firestore.transactional
        def tx(transaction: firestore.Transaction) -> Applied:
            now = utcnow()
            snaps = {s.reference.path: s for s in transaction.get_all(refs)}
            run_snap, event_snap = snaps[run_ref.path], snaps[event_ref.path]
            if not run_snap.exists:
                raise UnknownRun(f"no run with id {event.run_id!r}")
            doc = run_snap.to_dict() or {}
            effect_snap = snaps.get(effect_ref.path) if effect_ref is not None else None
            effect = (effect_snap.to_dict() or {}) if effect_snap is not None and effect_snap.exists else None
            refused = _not_its_outcome(event, effect)
            if refused:  # settles nothing and changes nothing; a valid twin may still come
                transaction.set(
                    run_ref.collection(EVENTS).document(f"{event.event_id}~ign~{message_id}"),
                    _audit(event.event_id, event.type, event.item, message_id, now, doc.get("state"), None,
                           "ignored", refused),
                )
                return Applied("ignored", event.run_id, refused, run_doc=doc)
            settles = effect_ref if effect is not None and effect.get("status") == "pending" else None
            if event_snap.exists:
                dup_id = f"{event.event_id}~dup~{message_id}"
                transaction.set(
                    run_ref.collection(EVENTS).document(dup_id),
                    _audit(event.event_id, event.type, event.item, message_id, now, doc.get("state"), None,
                           "duplicate", "already applied"),
                )
                self._mark_done(transaction, settles, now)
                return Applied("duplicate", event.run_id, "already applied", run_doc=doc, settled_effect=effect_id)
            run = RunState.model_validate(doc)
            decision = decide(run, event, now)
            if decision.applied:
                decision.run.version = run.version + 1
                decision.run.updated_at = now
                fields = run_fields(decision.run)
                # Only the fields this transition changed (always version and updated_at): the
                # document ends the same, with less to encode and send than every machine field.
                transaction.update(run_ref, {k: v for k, v in fields.items() if k not in doc or doc[k] != v})
                record_id = event.event_id
                doc = doc | fields
            else:  # an ignored event does not consume its id: a valid twin may still come
                record_id = f"{event.event_id}~ign~{message_id}"
            transaction.set(
                run_ref.collection(EVENTS).document(record_id),
                _audit(event.event_id, event.type, event.item, message_id, now, decision.from_state,
                       decision.to_state if decision.applied else None, decision.outcome, decision.detail,
                       version=decision.run.version if decision.applied else None),
            )
            claims = self._write_effects(transaction, run_ref, decision.effects, now)
            self._mark_done(transaction, settles, now)
            return Applied(decision.outcome, event.run_id, decision.detail, decision, decision.effects, doc, effect_id,
                           claims)

        with self._serial(event.run_id):
            return tx(self.client.transaction())

    def new_claim(self) -> str:
        """A claim id: which lease of an effect (creation or sweep) a runner works under."""
        return f"{self.owner}:{uuid.uuid4().hex[:12]}"

    def _write_effects(
        self, transaction: firestore.Transaction, run_ref: Any, effects: Sequence[EffectSpec], now: datetime
    ) -> dict[str, str]:
        """Create the effects leased to this replica (the first claim counts as attempt 1)."""
        claims: dict[str, str] = {}
        for eff in effects:
            claims[eff.effect_id] = claim = self.new_claim()
            transaction.set(
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
            transaction.update(effect_ref, {"status": "done", "done_at": now})

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
        raw = body[:MAX_RAW_BODY]
        try:
            text: str | None = raw.decode("utf-8")
            encoded = None
        except UnicodeDecodeError:
            text, encoded = None, base64.b64encode(raw).decode()
        self.client.collection(REJECTED).document(rejected_doc_id(message_id)).set(
            {
                "message_id": clip(message_id, 1500),
                "source": source,
                "reason": reason,
                "message": clip(message, 2000),
                "body": text,
                "body_base64": encoded,
                "body_bytes": len(body),
                "truncated": len(body) > MAX_RAW_BODY,
                "attributes": bounded_attributes(attributes),
                "received_at": utcnow(),
            }
        )

    # ---- effects (outbox) --------------------------------------------------------------
    # Every lease write is conditional on the claim the runner works under: the effect is read,
    # checked (still pending, still this claim) and written with an ``update_time``
    # precondition, so a replica that lost its lease can neither renew nor settle it.
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

    def expired_effects(self, now: datetime, limit: int = 50) -> list[dict[str, Any]]:
        query = (
            self.client.collection_group(EFFECTS)
            .where(filter=FieldFilter("status", "==", "pending"))
            .where(filter=FieldFilter("lease_expires", "<=", now))
            .limit(limit)
        )
        return [(d.to_dict() or {}) | {"path": d.reference.path} for d in query.stream()]

    def claim_effect(self, run_id: str, effect_id: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """Take over an effect whose lease expired. Returns (effect, run document) or None if lost.

        The effect comes back with its new ``claim`` and ``attempts``: every claim counts an
        attempt (except the re-check of work that was not ready, or work handed back unstarted on
        shutdown), so an effect that keeps
        crashing its process is not re-driven forever. Only the effect is read in the
        transaction: locking the run document here would contend with the transactions
        applying that run's events.
        """
        run_ref = self.runs.document(run_id)
        ref = run_ref.collection(EFFECTS).document(effect_id)

        @firestore.transactional
        def tx(transaction: firestore.Transaction) -> dict[str, Any] | None:
            now = utcnow()
            eff = ref.get(transaction=transaction)
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
            claimed = tx(self.client.transaction())
        if claimed is None:
            return None
        run = run_ref.get()
        return (claimed, run.to_dict() or {}) if run.exists else None

    def extend_leases(self, held: Mapping[tuple[str, str], str]) -> set[tuple[str, str]]:
        """Renew the leases of ``{(run_id, effect_id): claim}``; returns the keys no longer ours
        (taken by another claim, or settled): the runner drops those."""
        return self._write_if_claimed(held, {"lease_expires": utcnow() + self.lease})

    def release_leases(self, held: Mapping[tuple[str, str], str]) -> None:
        """On shutdown: hand queued effects back so another replica takes them at once. They never
        started, so taking them over is not a new attempt (``recheck``): a replica stopped
        gracefully (a scale-in, a redeploy) costs no effect its retry budget."""
        self._write_if_claimed(held, {"lease_expires": utcnow(), "recheck": True})

    def _effect_ref(self, run_id: str, effect_id: str) -> Any:
        return self.runs.document(run_id).collection(EFFECTS).document(effect_id)

    def _write_if_claimed(
        self, held: Mapping[tuple[str, str], str], fields: Mapping[str, Any]
    ) -> set[tuple[str, str]]:
        """Write ``fields`` to each effect still pending under its claim; return the keys that are not."""
        lost: set[tuple[str, str]] = set()
        keys = list(held)
        for i in range(0, len(keys), _GUARDED_BATCH):
            chunk = {k: held[k] for k in keys[i : i + _GUARDED_BATCH]}
            lost |= self._write_chunk_if_claimed(chunk, fields)
        return lost

    def _write_chunk_if_claimed(
        self, held: Mapping[tuple[str, str], str], fields: Mapping[str, Any]
    ) -> set[tuple[str, str]]:
        """One conditional batch for the chunk; if any effect changed between read and write (an
        apply, a claim: likely under load), each one on its own, so one busy effect cannot keep
        every other lease of this replica from being renewed."""
        lost: set[tuple[str, str]] = set()
        batch, writes = self.client.batch(), 0
        for _key, snap in self._pending_under_claim(held, lost):
            batch.update(snap.reference, dict(fields), option=self.client.write_option(last_update_time=snap.update_time))
            writes += 1
        if not writes:
            return lost
        try:
            batch.commit()
            return lost
        except FailedPrecondition:
            pass
        for key in [k for k in held if k not in lost]:
            try:
                if not self._write_one_if_claimed(key, held[key], fields):
                    lost.add(key)
            except TransientError as exc:  # still ours as far as we know: the next heartbeat retries
                log.warning("lease write kept colliding", effect_id=key[1], error=str(exc))
        return lost

    def _pending_under_claim(
        self, held: Mapping[tuple[str, str], str], lost: set[tuple[str, str]]
    ) -> Iterator[tuple[tuple[str, str], Any]]:
        """The snapshots of the effects still pending under their claim; adds the others to ``lost``."""
        refs = {self._effect_ref(*key).path: key for key in held}
        for snap in self.client.get_all([self._effect_ref(*key) for key in held]):
            key = refs[snap.reference.path]
            data = (snap.to_dict() or {}) if snap.exists else {}
            if data.get("status") != "pending" or data.get("claim") != held[key]:
                lost.add(key)
            else:
                yield key, snap

    def _write_one_if_claimed(self, key: tuple[str, str], claim: str, fields: Mapping[str, Any]) -> bool:
        """Conditional write of one effect; False once it is no longer pending under ``claim``."""
        for _ in range(_GUARD_ROUNDS):
            lost: set[tuple[str, str]] = set()
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


def rejected_doc_id(message_id: str) -> str:
    """The message id itself when it is a usable document id (Pub/Sub's are digits), else a
    digest of it: a pushed envelope may carry any id, and its record must still be written."""
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:~@+=-]{0,199}", message_id):
        return message_id
    return "id-" + hashlib.sha256(message_id.encode("utf-8", "replace")).hexdigest()[:40]


def bounded_attributes(attributes: Mapping[str, str]) -> dict[str, str]:
    """Pub/Sub's own limits (100 attributes, 256-byte keys, 1024-byte values): a pushed envelope
    may exceed them, and the record of a rejected message must still fit in one document."""
    return {str(k)[:256]: str(v)[:1024] for k, v in list(attributes.items())[:100]}


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
