"""Leasing of effects: the heartbeat that keeps leases alive, and the sweep that takes them over.

The :class:`Leaser` works on the table of held effects the
:class:`daemon.effect_dispatch.Dispatcher` keeps (like google-cloud-pubsub's Leaser beside its
Dispatcher). Every tick its heartbeat gives up effects past their start-to-close deadline;
every third of a lease it renews the leases this replica holds and drops those it lost. The
sweep claims effects whose lease expired anywhere (a dead replica's, a retry's backoff) and
hands them to the dispatcher. Every lease write is conditional on the claim (the store).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime

import structlog

from daemon.config import Settings
from daemon.effect_dispatch import Dispatcher
from daemon.effect_jobs import Job, deadline_for
from daemon.store import RunStore
from daemon.store_leases import Key
from daemon.wakeups import Wakeups
from devtools.faults import crash_point

log = structlog.get_logger("podium.effects")  # one logger for the whole runner, as before the split


class Leaser:
    """Keeps the dispatcher's leases alive, abandons overdue effects, claims expired ones."""

    def __init__(self, settings: Settings, store: RunStore, dispatcher: Dispatcher,
                 wakeups: Wakeups | None = None) -> None:
        self.settings = settings
        self.store = store
        self.dispatcher = dispatcher
        self.wakeups = wakeups
        if wakeups is not None:
            dispatcher.retry_scheduled = self.wake
        # How often the heartbeat looks for overdue effects: a few times per lease, at most 1 s.
        self.period = max(settings.effect_lease_seconds / 3, 0.2)  # between lease renewals
        self.tick = min(self.period, 1.0)
        self._rewrite_all = False  # the last heartbeat failed: write every lease at the next
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for name, target in (("effect-heartbeat", self._heartbeat), ("effect-sweep", self._sweep_loop)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def health(self) -> str | None:
        """Why leasing is broken (a background thread died), or None."""
        if self._threads and not all(t.is_alive() for t in self._threads):
            return "the effect heartbeat or sweep thread died"
        return None

    def release(self, queued: Mapping[Key, str]) -> None:
        """On shutdown: hand back effects that never started, so another replica takes them at once."""
        try:
            self.store.release_leases(queued)
        except Exception as exc:  # noqa: BLE001 - their leases will simply expire
            log.warning("could not release leases", error=repr(exc))

    # ---- deadlines -------------------------------------------------------------------
    def _expire_overdue(self) -> None:
        """Abandon running effects past their deadline: the attempt fails as retryable."""
        for job in self.dispatcher.abandon_overdue():
            self._abandon(job)

    def _abandon(self, job: Job) -> None:
        dispatcher = self.dispatcher
        budget = deadline_for(self.settings, job.kind)
        error = f"{job.kind} exceeded its deadline of {budget:g} s (attempt {job.attempts}); abandoned"
        with structlog.contextvars.bound_contextvars(run_id=job.key[0], effect_id=job.key[1]):
            try:
                if job.attempts < dispatcher.max_attempts:
                    dispatcher.schedule_retry(job, error)
                else:
                    ctx = dispatcher.context(job)
                    dispatcher.report(job, ctx, [dispatcher.failure(ctx, f"{error}; gave up after {job.attempts} attempts")])
            except Exception as exc:  # noqa: BLE001 - the lease is no longer renewed: it expires
                log.warning("could not hand back an overdue effect", error=repr(exc))
            finally:
                dispatcher.forget(job)

    # ---- heartbeat -------------------------------------------------------------------
    def _heartbeat(self) -> None:
        next_renewal = time.monotonic() + self.period
        while not self.dispatcher.stop.wait(self.tick):
            self._expire_overdue()
            if time.monotonic() >= next_renewal:
                next_renewal = time.monotonic() + self.period
                self.renew()

    def renew(self) -> None:
        """Extend the leases this replica holds; drop those it lost.

        A lease granted or renewed less than a quarter of a renewal period ago is checked but
        not written (most effects settle within moments): the next heartbeat, a period later,
        writes it with more than half the lease left, as before. After a failed heartbeat the
        next one writes every lease."""
        dispatcher = self.dispatcher
        now = time.monotonic()
        with dispatcher.lock:
            # An outcome not applied within a few leases is given up: the sweep re-drives it.
            cutoff = now - 5 * self.settings.effect_lease_seconds
            for key in [k for k, j in dispatcher.held.items() if j.state == "reported" and j.since < cutoff]:
                del dispatcher.held[key]
            held = {k: j.claim for k, j in dispatcher.held.items()}
            young = now - self.period / 4
            fresh = set() if self._rewrite_all else {k for k, j in dispatcher.held.items() if j.leased_at > young}
        try:
            lost = self.store.extend_leases(held, fresh)
        except Exception as exc:  # noqa: BLE001
            log.warning("lease heartbeat failed", error=repr(exc))
            self._rewrite_all = True
            return
        self._rewrite_all = False
        crash_point("during_heartbeat", "")
        with dispatcher.lock:
            for key in held.keys() - lost - fresh:
                job = dispatcher.held.get(key)
                if job is not None and job.claim == held[key]:
                    job.leased_at = now
        if lost:
            self._drop_lost({k: held[k] for k in lost})

    def _drop_lost(self, lost: Mapping[Key, str]) -> None:
        for job in self.dispatcher.drop(lost):  # a running one keeps running; its result is dropped
            log.warning("effect lease lost: dropped", run_id=job.key[0], effect_id=job.key[1], state=job.state)

    # ---- sweep -----------------------------------------------------------------------
    def _sweep_loop(self) -> None:
        self.sweep()  # on start-up: adopt whatever a dead replica left behind
        while not self.dispatcher.stop.wait(self.settings.sweep_interval_seconds):
            self.sweep()

    def sweep(self) -> int:
        """Re-drive pending effects whose lease expired. Returns how many this replica took."""
        taken = 0
        try:
            expired = self.store.expired_effects(datetime.now(UTC))
        except Exception as exc:  # noqa: BLE001
            log.warning("effect sweep failed", error=repr(exc))
            return 0
        for effect in expired:
            took = self.take((str(effect["run_id"]), str(effect["effect_id"])))
            if took is None:
                break  # no room: another replica (or a later sweep) takes the rest
            taken += took
        return taken

    def take(self, key: Key) -> bool | None:
        """Claim one effect whose lease expired and run it here: True if taken, False if not
        (held here already, claimed elsewhere, not expired, its run ended), None if no room."""
        dispatcher = self.dispatcher
        with dispatcher.lock:
            if key in dispatcher.held:
                return False
            if len(dispatcher.held) >= self.settings.effect_queue_limit:
                return None
        try:
            claimed = self.store.claim_effect(*key)
        except Exception as exc:  # noqa: BLE001 - contention with another replica: it won
            log.info("effect claim lost", effect_id=key[1], error=repr(exc))
            return False
        if claimed is None:
            return False
        leased, run = claimed
        crash_point("during_claim", leased.spec.kind)
        if run.status != "running":
            self.store.effect_done(*key, leased.claim)  # the run ended meanwhile: nothing to do
            return False
        log.info("re-driving effect", run_id=key[0], effect_id=key[1], attempts=leased.attempts)
        return dispatcher.submit(run, leased)

    def wake(self, key: Key, delay: float) -> None:
        """Take the effect back at the moment its lease expires (a re-check or a retry this
        replica scheduled), instead of at the first sweep after it."""
        if self.wakeups is not None:
            # A little after the expiry, so the claim's "lease expired" check already holds.
            self.wakeups.at(("effect", key), delay + 0.05, lambda: self._wake(key))

    def _wake(self, key: Key) -> None:
        with structlog.contextvars.bound_contextvars(run_id=key[0], effect_id=key[1]):
            self.take(key)
