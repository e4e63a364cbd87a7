"""The outbox worker: runs effects after their transition committed, under a lease.

* An effect created by this replica's transaction is already leased to it and runs at once.
* A heartbeat keeps the leases of queued and running effects alive (like pubsub's Leaser).
* A sweep re-drives effects whose lease expired (their replica died): claimed in a
  transaction, so two replicas never both take one.
* A handler error with ``retryable=False`` becomes the kind's ``*.failed`` event; any other
  error is retried with backoff through the lease (durable, no in-memory wait), and after
  ``MAX_ATTEMPTS`` it fails the run with the last error.
* Shutdown stops taking work, hands queued effects back (lease expires now) and waits a
  bounded time for running ones.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import structlog

from daemon.config import Settings
from daemon.faults import crash_point
from daemon.store import Applied, RunStore
from handlers.base import FAILURE_EVENT, EffectContext, Handler, Outcome
from machines.errors import NotReady, PodiumError
from machines.messages import Event

log = structlog.get_logger("podium.effects")

MAX_ATTEMPTS = 5  # with backoff 2, 4, 8, 16 s: about half a minute of transient trouble
Publish = Callable[[Event, Mapping[str, str]], object]


class EffectRunner:
    def __init__(
        self,
        settings: Settings,
        store: RunStore,
        handlers: Mapping[str, Handler],
        publish: Publish,
        concurrency: Mapping[str, int] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.handlers = dict(handlers)
        self.publish = publish
        self._pool = ThreadPoolExecutor(max_workers=settings.effect_workers, thread_name_prefix="effect")
        self._limits = {k: threading.BoundedSemaphore(v) for k, v in (concurrency or {}).items()}
        self._held: dict[tuple[str, str], str] = {}  # (run_id, effect_id) -> queued|running|reported
        self._reported_at: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # ---- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        for name, target in (("effect-heartbeat", self._heartbeat), ("effect-sweep", self._sweep_loop)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def shutdown(self, grace: float) -> None:
        """Stop taking work, release what has not started, wait up to ``grace`` for the rest."""
        self._stop.set()
        with self._lock:
            queued = [k for k, v in self._held.items() if v == "queued"]
        try:
            self.store.release_leases(queued)
        except Exception as exc:  # noqa: BLE001 - their leases will simply expire
            log.warning("could not release leases", error=repr(exc))
        self._pool.shutdown(wait=False, cancel_futures=True)
        deadline = datetime.now(UTC).timestamp() + grace
        while datetime.now(UTC).timestamp() < deadline:
            with self._lock:
                if not any(v == "running" for v in self._held.values()):
                    break
            self._stop.wait(0.05)

    @property
    def busy(self) -> int:
        with self._lock:
            return sum(1 for v in self._held.values() if v != "reported")

    def settle(self, run_id: str, effect_id: str) -> None:
        """The outcome of an effect was applied (here or by another replica): stop leasing it."""
        with self._lock:
            self._held.pop((run_id, effect_id), None)
            self._reported_at.pop((run_id, effect_id), None)

    # ---- intake of work ------------------------------------------------------------
    def on_applied(self, applied: Applied) -> None:
        for effect in applied.effects:
            self._submit(applied.run_doc, effect.model_dump(), attempts=0)

    def _submit(self, run_doc: Mapping[str, Any], effect: Mapping[str, Any], attempts: int) -> None:
        key = (str(run_doc.get("run_id") or effect["run_id"]), str(effect["effect_id"]))
        with self._lock:
            if key in self._held or self._stop.is_set():
                return
            self._held[key] = "queued"
        try:
            self._pool.submit(self._run, key, run_doc, effect, attempts)
        except RuntimeError:  # pool shut down between the check and the submit
            with self._lock:
                self._held.pop(key, None)

    # ---- execution -------------------------------------------------------------------
    def _run(self, key: tuple[str, str], run_doc: Mapping[str, Any], effect: Mapping[str, Any], attempts: int) -> None:
        run_id, effect_id = key
        kind = str(effect["kind"])
        with structlog.contextvars.bound_contextvars(run_id=run_id, effect_id=effect_id, trace_id=run_doc.get("trace_id")):
            limit = self._limits.get(kind)
            try:
                if limit is not None:
                    limit.acquire()
                with self._lock:
                    self._held[key] = "running"
                self._execute(run_doc, effect, attempts)
            except Exception as exc:  # noqa: BLE001 - never lose the worker thread
                log.error("effect crashed outside its handler", error=repr(exc))
            finally:
                if limit is not None:
                    limit.release()
                with self._lock:
                    if self._held.get(key) == "reported":
                        self._reported_at[key] = time.monotonic()
                    else:
                        self._held.pop(key, None)

    def _execute(self, run_doc: Mapping[str, Any], effect: Mapping[str, Any], attempts: int) -> None:
        run_id, effect_id, kind = str(run_doc["run_id"]), str(effect["effect_id"]), str(effect["kind"])
        ctx = EffectContext(
            run_id=run_id,
            effect_id=effect_id,
            kind=kind,
            item=effect.get("item"),
            params=effect.get("params") or {},
            attempt=attempts,
            run=run_doc,
            settings=self.settings,
        )
        handler = self.handlers.get(kind)
        outcomes: Sequence[Outcome]
        if handler is None:
            outcomes = [self._failure(ctx, f"no handler for effect kind {kind!r}")]
        else:
            try:
                log.info("effect started", kind=kind, item=ctx.item, attempt=attempts)
                outcomes = handler(ctx)
                crash_point("mid_effect", kind)
            except NotReady as exc:
                log.info("effect not ready yet", detail=exc.message[:200], recheck_in_s=exc.retry_after)
                self.store.effect_retry_later(ctx.run_id, ctx.effect_id, exc.retry_after, exc.message, count=False)
                return
            except PodiumError as exc:
                if exc.retryable and attempts + 1 < MAX_ATTEMPTS:
                    return self._retry_later(ctx, exc.message, attempts)
                outcomes = [self._failure(ctx, exc.message)]
            except Exception as exc:  # noqa: BLE001 - a handler bug fails the run clearly, after retries
                if attempts + 1 < MAX_ATTEMPTS:
                    return self._retry_later(ctx, repr(exc), attempts)
                outcomes = [self._failure(ctx, f"{kind} raised {exc!r} after {attempts + 1} attempts")]
            outcomes = self._checked(ctx, outcomes)
        self._report(ctx, outcomes)

    def _checked(self, ctx: EffectContext, outcomes: Any) -> Sequence[Outcome]:
        """A handler that returns garbage fails the run with a clear error instead of hanging it."""
        if isinstance(outcomes, (list, tuple)) and all(isinstance(o, Outcome) for o in outcomes):
            try:  # an outcome that is no valid event would crash _report and be re-driven until the timeout
                for outcome in outcomes:
                    self._event(ctx, outcome).to_json()
            except Exception as exc:  # noqa: BLE001 - pydantic validation or serialisation errors
                return [self._failure(ctx, f"handler for {ctx.kind} returned an outcome that is not a valid event: {exc}")]
            return outcomes
        return [self._failure(ctx, f"handler for {ctx.kind} returned {type(outcomes).__name__}, not outcomes")]

    @staticmethod
    def _event(ctx: EffectContext, outcome: Outcome) -> Event:
        data = dict(outcome.data)
        data["effect_id"] = ctx.effect_id
        return Event(
            run_id=ctx.run_id,
            event_id=f"{ctx.effect_id}~{outcome.type}~{outcome.item or '-'}",
            type=outcome.type,
            item=outcome.item,
            data=data,
        )

    def _report(self, ctx: EffectContext, outcomes: Sequence[Outcome]) -> None:
        attrs = {"run_id": ctx.run_id}
        if ctx.trace_id:
            attrs["trace_id"] = ctx.trace_id
        for outcome in outcomes:
            attrs["type"] = outcome.type
            self.publish(self._event(ctx, outcome), attrs)
        if not outcomes:
            self.store.effect_done(ctx.run_id, ctx.effect_id)
        else:
            # Keep the lease alive (heartbeat) until the outcome is applied, so a slow apply
            # does not make the sweep run the effect again.
            with self._lock:
                if (ctx.run_id, ctx.effect_id) in self._held:
                    self._held[(ctx.run_id, ctx.effect_id)] = "reported"
        log.info("effect finished", kind=ctx.kind, outcomes=[o.type for o in outcomes])

    def _retry_later(self, ctx: EffectContext, error: str, attempts: int) -> None:
        delay = min(2.0 ** (attempts + 1), 60.0)
        log.warning("effect failed, will retry", error=error[:300], retry_in_s=delay, attempt=attempts)
        self.store.effect_retry_later(ctx.run_id, ctx.effect_id, delay, error)

    @staticmethod
    def _failure(ctx: EffectContext, message: str) -> Outcome:
        log.error("effect failed", kind=ctx.kind, item=ctx.item, error=message[:500])
        return Outcome(FAILURE_EVENT.get(ctx.kind, "director.failed"), ctx.item, {"error": message[:4000]})

    # ---- background loops ----------------------------------------------------------
    def _heartbeat(self) -> None:
        period = max(self.settings.effect_lease_seconds / 3, 0.2)
        while not self._stop.wait(period):
            with self._lock:
                # An outcome not applied within a few leases is given up: the sweep re-drives it.
                cutoff = time.monotonic() - 5 * self.settings.effect_lease_seconds
                for key in [k for k, t in self._reported_at.items() if t < cutoff]:
                    self._held.pop(key, None)
                    self._reported_at.pop(key, None)
                keys = list(self._held)
            try:
                self.store.extend_leases(keys)
            except Exception as exc:  # noqa: BLE001
                log.warning("lease heartbeat failed", error=repr(exc))

    def _sweep_loop(self) -> None:
        self.sweep()  # on start-up: adopt whatever a dead replica left behind
        while not self._stop.wait(self.settings.sweep_interval_seconds):
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
            key = (str(effect["run_id"]), str(effect["effect_id"]))
            with self._lock:
                if key in self._held:
                    continue
            try:
                claimed = self.store.claim_effect(*key)
            except Exception as exc:  # noqa: BLE001 - contention with another replica: it won
                log.info("effect claim lost", effect_id=key[1], error=repr(exc))
                continue
            if claimed is None:
                continue
            data, run_doc = claimed
            if run_doc.get("status") != "running":
                self.store.effect_done(*key)  # the run ended meanwhile: nothing to do
                continue
            log.info("re-driving effect", run_id=key[0], effect_id=key[1], attempts=data.get("attempts", 0))
            self._submit(run_doc, data, attempts=int(data.get("attempts", 0)))
            taken += 1
        return taken
