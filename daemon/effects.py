"""The outbox worker: runs effects after their transition committed, under a lease.

* An effect created by this replica's transaction is already leased to it and runs at once.
* Every lease is a *claim* (an id stored on the effect): the creation or a sweep's take-over.
  The runner keeps the claim with the effect, every lease write is conditional on it, and the
  outcome events carry it (``data.claim``), so a replica that lost the lease can neither renew
  it nor have its late outcome applied (the store records that outcome ``ignored``).
* A heartbeat keeps the leases of waiting and running effects alive (like pubsub's Leaser);
  an effect whose lease turns out lost is dropped (a running one's result is not reported).
* Every effect kind has a start-to-close deadline. Past it the lease is no longer renewed, the
  attempt fails as retryable (retry later with backoff) and the hung thread is abandoned: its
  late result is dropped and a new worker takes its place (Python cannot kill a thread).
* The per-kind bound is taken before an effect reaches a worker: effects waiting for their
  kind wait in a per-kind queue, not in a worker. Memory is bounded by ``effect_queue_limit``.
* A handler error with ``retryable=False`` becomes the kind's ``*.failed`` event; any other
  error is retried with backoff through the lease (durable, no in-memory wait). Each claim
  counts an attempt, so after ``MAX_ATTEMPTS`` the run fails with the last error, also when
  the attempts crashed the process or were abandoned.
* ``health()`` reports a pool that is saturated or stuck (``/healthz`` answers 503).
* Shutdown stops taking work, hands queued effects back (lease expires now) and waits a
  bounded time for running ones.

The work is split in two: :mod:`daemon.effect_dispatch` (queues, bounds, workers, outcomes,
retries) and :mod:`daemon.effect_leases` (heartbeat, lost leases, deadlines, the sweep).
:class:`EffectRunner` composes them behind the one API the daemon and the tests use.
"""

from __future__ import annotations

from collections.abc import Mapping

from daemon.config import Settings
from daemon.effect_dispatch import Dispatcher, Publish
from daemon.effect_jobs import Job, deadline_for
from daemon.effect_leases import Leaser
from daemon.store import Applied, RunStore
from daemon.store_leases import Key, LeasedEffect
from daemon.wakeups import Wakeups
from handlers.base import Handler

__all__ = ["MAX_ATTEMPTS", "EffectRunner", "Publish", "deadline_for"]

MAX_ATTEMPTS = 5  # with backoff 2, 4, 8, 16 s: about half a minute of transient trouble


class EffectRunner:
    """Runs the effects leased to this replica: a :class:`Dispatcher` and its :class:`Leaser`."""

    def __init__(
        self,
        settings: Settings,
        store: RunStore,
        handlers: Mapping[str, Handler],
        publish: Publish,
        concurrency: Mapping[str, int] | None = None,
        wakeups: Wakeups | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        # MAX_ATTEMPTS is read here, not at import: a test may lower it before building a runner.
        self._dispatcher = Dispatcher(settings, store, handlers, publish, concurrency, MAX_ATTEMPTS)
        self._leaser = Leaser(settings, store, self._dispatcher, wakeups)

    # ---- what callers (and tests) replace or inspect ---------------------------------------
    @property
    def handlers(self) -> dict[str, Handler]:
        return self._dispatcher.handlers

    @handlers.setter
    def handlers(self, handlers: dict[str, Handler]) -> None:
        self._dispatcher.handlers = handlers

    @property
    def publish(self) -> Publish:
        return self._dispatcher.publish

    @publish.setter
    def publish(self, publish: Publish) -> None:
        self._dispatcher.publish = publish

    @property
    def _held(self) -> dict[Key, Job]:
        return self._dispatcher.held

    # ---- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        self._leaser.start()

    def shutdown(self, grace: float) -> None:
        """Stop taking work, release what has not started, wait up to ``grace`` for the rest."""
        queued = self._dispatcher.stop_taking()
        self._leaser.release(queued)
        self._dispatcher.wait_running(grace)

    @property
    def busy(self) -> int:
        return self._dispatcher.busy

    def running_for(self, run_id: str) -> int:
        """How many effects of ``run_id`` a worker here is running now."""
        return self._dispatcher.running_for(run_id)

    def settle(self, run_id: str, effect_id: str) -> None:
        """The outcome of an effect was applied (here or by another replica): stop leasing it."""
        self._dispatcher.settle(run_id, effect_id)

    def health(self) -> str | None:
        """Why the pool is saturated or stuck, or None if it is fine."""
        # Overdue effects are abandoned on the heartbeat's tick: a few ticks late means stuck.
        return self._leaser.health() or self._dispatcher.health(late_after=3 * self._leaser.tick)

    # ---- intake of work ------------------------------------------------------------
    def on_applied(self, applied: Applied) -> None:
        if applied.run is None:
            return
        for spec in applied.effects:
            leased = LeasedEffect(applied.run_id, spec, applied.claims.get(spec.effect_id, ""), attempts=1)
            self._dispatcher.submit(applied.run, leased)

    # ---- leases ----------------------------------------------------------------------
    def renew(self) -> None:
        """Extend the leases this replica holds; drop those it lost."""
        self._leaser.renew()

    def sweep(self) -> int:
        """Re-drive pending effects whose lease expired. Returns how many this replica took."""
        return self._leaser.sweep()
