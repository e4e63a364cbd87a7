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
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import structlog

from daemon.config import Settings
from daemon.faults import crash_point
from daemon.store import Applied, RunStore
from handlers.base import FAILURE_EVENT, EffectContext, Handler, Outcome, outcome_mismatch
from machines.errors import NotReady, PodiumError
from machines.messages import Event

log = structlog.get_logger("podium.effects")

MAX_ATTEMPTS = 5  # with backoff 2, 4, 8, 16 s: about half a minute of transient trouble
Publish = Callable[[Event, Mapping[str, str]], object]
Key = tuple[str, str]  # (run_id, effect_id)
JobState = Literal["waiting", "ready", "running", "reporting", "reported"]


def deadline_for(settings: Settings, kind: str) -> float:
    """The start-to-close deadline of one attempt of an effect ``kind``, in seconds."""
    if kind in settings.effect_deadline_seconds:
        return float(settings.effect_deadline_seconds[kind])
    defaults = {
        "preflight": settings.preflight_timeout_seconds + 60.0,  # its own timeout, then reporting
        "build": 1800.0,
        "deploy": 900.0,
        "configgen": 120.0,
        "iam.provision": 120.0,
        "iam.verify": 60.0,
        "iam.bind": 120.0,
        "director.command": 60.0,  # one publish
    }
    return defaults.get(kind, 120.0)


@dataclass(eq=False)
class _Job:
    """One effect this replica leases, from intake to its outcome being applied."""

    key: Key
    kind: str
    claim: str
    run_doc: Mapping[str, Any]
    effect: Mapping[str, Any]
    attempts: int  # claims so far, this one included (1 = the first)
    state: JobState = "waiting"
    since: float = field(default_factory=time.monotonic)  # when it entered its state
    deadline: float = math.inf
    slot: bool = False  # holds one of its kind's slots
    abandoned: bool = False  # past its deadline: its thread is left to finish alone


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
        self._held: dict[Key, _Job] = {}
        self._free = dict(concurrency or {})  # kind -> free slots
        self._waiting: dict[str, deque[_Job]] = {k: deque() for k in self._free}
        self._ready: deque[_Job] = deque()  # slot taken, waiting for a worker
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._live = 0  # worker threads taking work
        self._idle = 0
        self._hung = 0  # abandoned threads still inside a handler
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._tick = min(max(settings.effect_lease_seconds / 3, 0.2), 1.0)

    # ---- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        for name, target in (("effect-heartbeat", self._heartbeat), ("effect-sweep", self._sweep_loop)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def shutdown(self, grace: float) -> None:
        """Stop taking work, release what has not started, wait up to ``grace`` for the rest."""
        self._stop.set()
        with self._cv:
            queued = {k: j.claim for k, j in self._held.items() if j.state in ("waiting", "ready")}
            for key in queued:
                del self._held[key]
            for waiting in self._waiting.values():
                waiting.clear()
            self._ready.clear()
            self._cv.notify_all()
        try:
            self.store.release_leases(queued)
        except Exception as exc:  # noqa: BLE001 - their leases will simply expire
            log.warning("could not release leases", error=repr(exc))
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            with self._lock:
                if not any(j.state in ("running", "reporting") for j in self._held.values()):
                    break
            self._stop.wait(0.05)

    @property
    def busy(self) -> int:
        with self._lock:
            return sum(1 for j in self._held.values() if j.state != "reported")

    def settle(self, run_id: str, effect_id: str) -> None:
        """The outcome of an effect was applied (here or by another replica): stop leasing it."""
        with self._lock:
            job = self._held.pop((run_id, effect_id), None)
            if job is not None:
                self._unqueue(job)

    def health(self) -> str | None:
        """Why the pool is saturated or stuck, or None if it is fine."""
        now = time.monotonic()
        if self._threads and not all(t.is_alive() for t in self._threads):
            return "the effect heartbeat or sweep thread died"
        with self._lock:
            late = [j for j in self._held.values() if j.state == "running" and now > j.deadline + 3 * self._tick]
            hung, live, idle = self._hung, self._live, self._idle
            oldest = now - self._ready[0].since if self._ready else 0.0
        workers = self.settings.effect_workers
        if late:
            return f"{len(late)} effects run past their deadline and were not abandoned (e.g. {late[0].key[1]})"
        if hung >= workers:
            return f"{hung} effect handlers hung past their deadline; no worker is left to replace them"
        if oldest > self.settings.effect_stall_seconds and idle == 0 and live + hung >= workers:
            return f"effect pool saturated: all {workers} workers busy, oldest effect waiting {oldest:.0f} s"
        return None

    # ---- intake of work ------------------------------------------------------------
    def on_applied(self, applied: Applied) -> None:
        for effect in applied.effects:
            self._submit(applied.run_doc, effect.model_dump(), attempts=1, claim=applied.claims.get(effect.effect_id, ""))

    def _submit(self, run_doc: Mapping[str, Any], effect: Mapping[str, Any], attempts: int, claim: str) -> bool:
        """Take an effect leased to this replica; False if it is held already or there is no room
        (its lease then expires and the sweep of some replica re-drives it)."""
        key = (str(run_doc.get("run_id") or effect["run_id"]), str(effect["effect_id"]))
        job = _Job(key, str(effect["kind"]), claim, run_doc, effect, attempts)
        with self._cv:
            if key in self._held or self._stop.is_set():
                return False
            if len(self._held) >= self.settings.effect_queue_limit:
                log.warning("effect queue full, leaving the effect to the sweep", effect_id=key[1])
                return False
            self._held[key] = job
            self._admit(job)
        return True

    # ---- dispatch (all under self._lock) ---------------------------------------------
    def _admit(self, job: _Job) -> None:
        """Take the kind's slot before a worker: an effect waiting for its kind holds no worker."""
        if job.kind not in self._free:
            self._to_ready(job)
        elif self._free[job.kind] > 0:
            self._free[job.kind] -= 1
            job.slot = True
            self._to_ready(job)
        else:
            job.state, job.since = "waiting", time.monotonic()
            self._waiting[job.kind].append(job)

    def _to_ready(self, job: _Job) -> None:
        job.state, job.since = "ready", time.monotonic()
        self._ready.append(job)
        self._spawn_if_needed()
        self._cv.notify()

    def _spawn_if_needed(self) -> None:
        """Workers start on demand, up to ``effect_workers``; threads left hung past their
        deadline are replaced, but never more than ``effect_workers`` of them (then health fails)."""
        workers = self.settings.effect_workers
        if len(self._ready) > self._idle and self._live < workers and self._live + self._hung < 2 * workers:
            self._live += 1
            threading.Thread(target=self._work, name="effect", daemon=True).start()

    def _release_slot(self, job: _Job) -> None:
        if not job.slot:
            return
        job.slot = False
        waiting = self._waiting[job.kind]
        if waiting:
            nxt = waiting.popleft()
            nxt.slot = True
            self._to_ready(nxt)
        else:
            self._free[job.kind] += 1

    def _unqueue(self, job: _Job) -> None:
        """A job dropped before it ran: out of its queue, its slot to the next."""
        if job.state == "waiting":
            self._waiting[job.kind].remove(job)
        elif job.state == "ready":
            self._ready.remove(job)
            self._release_slot(job)

    # ---- execution -------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cv:
                self._idle += 1
                while not self._ready and not self._stop.is_set():
                    self._cv.wait()
                self._idle -= 1
                if not self._ready:  # stopping
                    self._live -= 1
                    return
                job = self._ready.popleft()
                job.state, job.since = "running", time.monotonic()
                job.deadline = job.since + deadline_for(self.settings, job.kind)
            self._run(job)
            with self._cv:
                self._release_slot(job)
                if job.abandoned:  # a replacement took this thread's place
                    self._hung -= 1
                    return

    def _run(self, job: _Job) -> None:
        run_id, effect_id = job.key
        with structlog.contextvars.bound_contextvars(run_id=run_id, effect_id=effect_id, trace_id=job.run_doc.get("trace_id")):
            try:
                self._execute(job)
            except Exception as exc:  # noqa: BLE001 - never lose the worker thread; the lease expires
                log.error("effect crashed outside its handler", error=repr(exc))
            finally:
                with self._lock:
                    if self._held.get(job.key) is job and job.state in ("running", "reporting") and not job.abandoned:
                        del self._held[job.key]

    def _context(self, job: _Job) -> EffectContext:
        return EffectContext(
            run_id=job.key[0],
            effect_id=job.key[1],
            kind=job.kind,
            item=job.effect.get("item"),
            params=job.effect.get("params") or {},
            attempt=job.attempts - 1,
            run=job.run_doc,
            settings=self.settings,
        )

    def _execute(self, job: _Job) -> None:
        ctx, attempts = self._context(job), job.attempts
        handler = self.handlers.get(ctx.kind)
        outcomes: Sequence[Outcome]
        if attempts > MAX_ATTEMPTS:
            last = job.effect.get("last_error")
            outcomes = [self._failure(ctx, f"effect {ctx.effect_id} crashed or was abandoned {attempts - 1} times"
                                           + (f"; last error: {last}" if last else ""))]
        elif handler is None:
            outcomes = [self._failure(ctx, f"no handler for effect kind {ctx.kind!r}")]
        else:
            try:
                log.info("effect started", kind=ctx.kind, item=ctx.item, attempt=attempts)
                outcomes = handler(ctx)
                crash_point("mid_effect", ctx.kind)
            except NotReady as exc:
                if self._take_result(job):
                    log.info("effect not ready yet", detail=exc.message[:200], recheck_in_s=exc.retry_after)
                    self.store.effect_retry_later(*job.key, job.claim, exc.retry_after, exc.message, recheck=True)
                return
            except PodiumError as exc:
                if exc.retryable and attempts < MAX_ATTEMPTS:
                    return self._retry_later(job, exc.message, exc.retry_after)
                outcomes = [self._failure(ctx, exc.message)]
            except Exception as exc:  # noqa: BLE001 - a handler bug fails the run clearly, after retries
                if attempts < MAX_ATTEMPTS:
                    return self._retry_later(job, repr(exc))
                outcomes = [self._failure(ctx, f"{ctx.kind} raised {exc!r} after {attempts} attempts")]
            outcomes = self._checked(ctx, outcomes)
        if self._take_result(job):
            self._report(job, ctx, outcomes)

    def _take_result(self, job: _Job) -> bool:
        """The worker may report only while the job is still its own: not past its deadline,
        lease not lost, not settled elsewhere. Otherwise the result is dropped."""
        with self._lock:
            if self._held.get(job.key) is job and job.state == "running":
                job.state = "reporting"
                return True
        log.warning("late effect result dropped: its deadline passed or its lease was lost", kind=job.kind)
        return False

    def _checked(self, ctx: EffectContext, outcomes: Any) -> Sequence[Outcome]:
        """A handler that returns garbage fails the run with a clear error instead of hanging it."""
        if isinstance(outcomes, (list, tuple)) and all(isinstance(o, Outcome) for o in outcomes):
            try:  # an outcome that is no valid event would crash _report and be re-driven until the timeout
                for outcome in outcomes:
                    self._event(ctx, "", outcome).to_json()
            except Exception as exc:  # noqa: BLE001 - pydantic validation or serialisation errors
                return [self._failure(ctx, f"handler for {ctx.kind} returned an outcome that is not a valid event: {exc}")]
            for outcome in outcomes:  # the store would ignore it: the effect would never settle
                mismatch = outcome_mismatch(ctx.kind, ctx.item, outcome.type, outcome.item)
                if mismatch:
                    return [self._failure(ctx, f"handler for {ctx.kind} returned a wrong outcome: {mismatch}")]
            return outcomes
        return [self._failure(ctx, f"handler for {ctx.kind} returned {type(outcomes).__name__}, not outcomes")]

    @staticmethod
    def _event(ctx: EffectContext, claim: str, outcome: Outcome) -> Event:
        data = dict(outcome.data)
        data["effect_id"] = ctx.effect_id
        data["claim"] = claim
        return Event(
            run_id=ctx.run_id,
            event_id=f"{ctx.effect_id}~{outcome.type}~{outcome.item or '-'}",
            type=outcome.type,
            item=outcome.item,
            data=data,
        )

    def _report(self, job: _Job, ctx: EffectContext, outcomes: Sequence[Outcome]) -> None:
        attrs = {"run_id": ctx.run_id}
        if ctx.trace_id:
            attrs["trace_id"] = ctx.trace_id
        for outcome in outcomes:
            attrs["type"] = outcome.type
            self.publish(self._event(ctx, job.claim, outcome), attrs)
        if not outcomes:
            self.store.effect_done(*job.key, job.claim)
        else:
            # Keep the lease alive (heartbeat) until the outcome is applied, so a slow apply
            # does not make the sweep run the effect again.
            with self._lock:
                if self._held.get(job.key) is job:
                    job.state, job.since = "reported", time.monotonic()
        log.info("effect finished", kind=ctx.kind, outcomes=[o.type for o in outcomes])

    def _retry_later(self, job: _Job, error: str, hint: float | None = None) -> None:
        if self._take_result(job):
            self._schedule_retry(job, error, hint)

    def _schedule_retry(self, job: _Job, error: str, hint: float | None = None) -> None:
        # Exponential backoff, or longer if the service said when to come back (RetryInfo).
        delay = min(max(2.0**job.attempts, hint or 0.0), 600.0 if hint else 60.0)
        log.warning("effect failed, will retry", error=error[:300], retry_in_s=delay, attempt=job.attempts)
        self.store.effect_retry_later(*job.key, job.claim, delay, error)

    @staticmethod
    def _failure(ctx: EffectContext, message: str) -> Outcome:
        log.error("effect failed", kind=ctx.kind, item=ctx.item, error=message[:500])
        return Outcome(FAILURE_EVENT.get(ctx.kind, "director.failed"), ctx.item, {"error": message[:4000]})

    # ---- deadlines -------------------------------------------------------------------
    def _expire_overdue(self) -> None:
        """Abandon running effects past their deadline: the attempt fails as retryable."""
        now = time.monotonic()
        overdue: list[_Job] = []
        with self._cv:
            for job in [j for j in self._held.values() if j.state == "running" and now > j.deadline]:
                job.state, job.abandoned = "reporting", True  # the worker's result is dropped from now on
                self._hung += 1
                self._live -= 1
                self._release_slot(job)
                self._spawn_if_needed()  # a replacement for the thread left behind
                overdue.append(job)
        for job in overdue:
            self._abandon(job)

    def _abandon(self, job: _Job) -> None:
        budget = deadline_for(self.settings, job.kind)
        error = f"{job.kind} exceeded its deadline of {budget:g} s (attempt {job.attempts}); abandoned"
        with structlog.contextvars.bound_contextvars(run_id=job.key[0], effect_id=job.key[1]):
            try:
                if job.attempts < MAX_ATTEMPTS:
                    self._schedule_retry(job, error)
                else:
                    ctx = self._context(job)
                    self._report(job, ctx, [self._failure(ctx, f"{error}; gave up after {job.attempts} attempts")])
            except Exception as exc:  # noqa: BLE001 - the lease is no longer renewed: it expires
                log.warning("could not hand back an overdue effect", error=repr(exc))
            finally:
                with self._lock:
                    if self._held.get(job.key) is job and job.state == "reporting":
                        del self._held[job.key]

    # ---- background loops ----------------------------------------------------------
    def _heartbeat(self) -> None:
        period = max(self.settings.effect_lease_seconds / 3, 0.2)
        next_renewal = time.monotonic() + period
        while not self._stop.wait(self._tick):
            self._expire_overdue()
            if time.monotonic() >= next_renewal:
                next_renewal = time.monotonic() + period
                self.renew()

    def renew(self) -> None:
        """Extend the leases this replica holds; drop those it lost."""
        with self._lock:
            # An outcome not applied within a few leases is given up: the sweep re-drives it.
            cutoff = time.monotonic() - 5 * self.settings.effect_lease_seconds
            for key in [k for k, j in self._held.items() if j.state == "reported" and j.since < cutoff]:
                del self._held[key]
            held = {k: j.claim for k, j in self._held.items()}
        try:
            lost = self.store.extend_leases(held)
        except Exception as exc:  # noqa: BLE001
            log.warning("lease heartbeat failed", error=repr(exc))
            return
        crash_point("during_heartbeat", "")
        if lost:
            self._drop_lost({k: held[k] for k in lost})

    def _drop_lost(self, lost: Mapping[Key, str]) -> None:
        with self._cv:
            for key, claim in lost.items():
                job = self._held.get(key)
                if job is None or job.claim != claim:
                    continue
                del self._held[key]
                self._unqueue(job)  # a running one keeps running; its result is dropped
                log.warning("effect lease lost: dropped", run_id=key[0], effect_id=key[1], state=job.state)

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
                if len(self._held) >= self.settings.effect_queue_limit:
                    break  # no room: another replica (or a later sweep) takes the rest
            try:
                claimed = self.store.claim_effect(*key)
            except Exception as exc:  # noqa: BLE001 - contention with another replica: it won
                log.info("effect claim lost", effect_id=key[1], error=repr(exc))
                continue
            if claimed is None:
                continue
            data, run_doc = claimed
            crash_point("during_claim", str(data.get("kind", "")))
            if run_doc.get("status") != "running":
                self.store.effect_done(*key, str(data["claim"]))  # the run ended meanwhile: nothing to do
                continue
            log.info("re-driving effect", run_id=key[0], effect_id=key[1], attempts=data.get("attempts"))
            if self._submit(run_doc, data, attempts=int(data["attempts"]), claim=str(data["claim"])):
                taken += 1
        return taken
