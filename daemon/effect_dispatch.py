"""Dispatch of leased effects: per-kind queues and bounds, worker threads, reporting outcomes.

The :class:`Dispatcher` holds the table of effects this replica leases (``held``) and runs
them: an effect first takes its kind's slot (waiting in a per-kind queue, not in a worker),
then a worker thread runs its handler and publishes the outcomes or schedules a retry
through the lease. Keeping the leases alive, and giving up effects past their deadline, is
the :class:`daemon.effect_leases.Leaser`'s part; it shares ``held`` and ``lock`` with this.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import structlog

from daemon.config import Settings
from daemon.effect_jobs import Job, deadline_for
from daemon.store import RunStore
from daemon.store_leases import Key, LeasedEffect
from devtools.faults import crash_point
from handlers.base import FAILURE_EVENT, EffectContext, Handler, Outcome, outcome_mismatch
from machines.errors import NotReady, PodiumError
from machines.messages import Event, RunView

log = structlog.get_logger("podium.effects")  # one logger for the whole runner, as before the split

Publish = Callable[[Event, Mapping[str, str]], object]
RetryScheduled = Callable[[Key, float], None]  # (effect, seconds until its lease expires)
class Dispatcher:
    """Runs the effects this replica leases, within per-kind bounds and ``effect_workers`` threads."""

    def __init__(
        self,
        settings: Settings,
        store: RunStore,
        handlers: Mapping[str, Handler],
        publish: Publish,
        concurrency: Mapping[str, int] | None,
        max_attempts: int,
    ) -> None:
        self.settings = settings
        self.store = store
        self.handlers = dict(handlers)
        self.publish = publish
        self.max_attempts = max_attempts
        # Told when an effect's retry or re-check is due (the Leaser wakes it then, not at a sweep).
        self.retry_scheduled: RetryScheduled = lambda _key, _delay: None
        self.held: dict[Key, Job] = {}  # shared with the Leaser, under ``lock``
        self.lock = threading.Lock()
        self.stop = threading.Event()  # no new work; workers exit once the ready queue is empty
        self._cv = threading.Condition(self.lock)
        self._free = dict(concurrency or {})  # kind -> free slots
        self._waiting: dict[str, deque[Job]] = {k: deque() for k in self._free}
        self._ready: deque[Job] = deque()  # slot taken, waiting for a worker
        self._live = 0  # worker threads taking work
        self._idle = 0
        self._hung = 0  # abandoned threads still inside a handler
        self._running: dict[str, int] = {}  # run id -> its jobs inside a handler (Job.counted)

    # ---- the table of held effects ---------------------------------------------------
    @property
    def busy(self) -> int:
        with self.lock:
            return sum(1 for j in self.held.values() if j.state != "reported")

    def running_for(self, run_id: str) -> int:
        """How many effects of ``run_id`` a worker here is running (their outcomes are near)."""
        with self.lock:
            return self._running.get(run_id, 0)

    def submit(self, run: RunView, leased: LeasedEffect) -> bool:
        """Take an effect leased to this replica; False if it is held already or there is no room
        (its lease then expires and the sweep of some replica re-drives it)."""
        job = Job(run, leased)
        key = job.key
        with self._cv:
            if key in self.held or self.stop.is_set():
                return False
            if len(self.held) >= self.settings.effect_queue_limit:
                log.warning("effect queue full, leaving the effect to the sweep", effect_id=key[1])
                return False
            self.held[key] = job
            self._admit(job)
        return True

    def settle(self, run_id: str, effect_id: str) -> None:
        """The outcome of an effect was applied (here or by another replica): stop leasing it."""
        with self.lock:
            job = self.held.pop((run_id, effect_id), None)
            if job is not None:
                self._unqueue(job)

    def drop(self, lost: Mapping[Key, str]) -> list[Job]:
        """Forget the jobs whose claim is in ``lost`` (their lease is gone); returns them.
        A running one is told to stop (``cancelled``); whatever it reports is dropped."""
        dropped: list[Job] = []
        with self._cv:
            for key, claim in lost.items():
                job = self.held.get(key)
                if job is None or job.claim != claim:
                    continue
                del self.held[key]
                self._unqueue(job)
                job.cancelled.set()
                dropped.append(job)
        return dropped

    def forget(self, job: Job) -> None:
        """Forget a job whose result was handed over (reported, retried) outside a worker."""
        with self.lock:
            if self.held.get(job.key) is job and job.state == "reporting":
                del self.held[job.key]

    def stop_taking(self) -> dict[Key, str]:
        """Stop taking work and forget what has not started; returns those effects' claims."""
        self.stop.set()
        with self._cv:
            queued = {k: j.claim for k, j in self.held.items() if j.state in ("waiting", "ready")}
            for key in queued:
                del self.held[key]
            for waiting in self._waiting.values():
                waiting.clear()
            self._ready.clear()
            self._cv.notify_all()
        return queued

    def wait_running(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for the running effects to finish."""
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            with self.lock:
                if not any(j.state in ("running", "reporting") for j in self.held.values()):
                    break
            time.sleep(0.05)  # the stop flag is already set: waiting on it would spin

    def abandon_overdue(self) -> list[Job]:
        """Mark running jobs past their deadline abandoned (their worker's result is dropped from
        now on) and start a replacement for each thread left behind; returns those jobs."""
        now = time.monotonic()
        overdue: list[Job] = []
        with self._cv:
            for job in [j for j in self.held.values() if j.state == "running" and now > j.deadline]:
                job.state, job.abandoned = "reporting", True
                self._uncount(job)
                self._hung += 1
                self._live -= 1
                self._release_slot(job)
                self._spawn_if_needed()
                overdue.append(job)
        return overdue

    def health(self, late_after: float) -> str | None:
        """Why the pool is saturated or stuck, or None if it is fine. A running effect more than
        ``late_after`` seconds past its deadline should have been abandoned by then."""
        now = time.monotonic()
        with self.lock:
            late = [j for j in self.held.values() if j.state == "running" and now > j.deadline + late_after]
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

    # ---- queues and bounds (all under self.lock) -------------------------------------
    def _admit(self, job: Job) -> None:
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

    def _to_ready(self, job: Job) -> None:
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

    def _release_slot(self, job: Job) -> None:
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

    def _uncount(self, job: Job) -> None:
        """Its handler is done (or given up): out of the count ``running_for`` reads."""
        if job.counted:
            job.counted = False
            run_id = job.key[0]
            self._running[run_id] -= 1
            if not self._running[run_id]:
                del self._running[run_id]

    def _unqueue(self, job: Job) -> None:
        """A job dropped before it ran: out of its queue, its slot to the next."""
        if job.state == "waiting":
            self._waiting[job.kind].remove(job)
        elif job.state == "ready":
            self._ready.remove(job)
            self._release_slot(job)

    # ---- workers -------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cv:
                self._idle += 1
                while not self._ready and not self.stop.is_set():
                    self._cv.wait()
                self._idle -= 1
                if not self._ready:  # stopping
                    self._live -= 1
                    return
                job = self._ready.popleft()
                job.state, job.since = "running", time.monotonic()
                job.deadline = job.since + deadline_for(self.settings, job.kind)
                job.counted = True
                self._running[job.key[0]] = self._running.get(job.key[0], 0) + 1
            self._run(job)
            with self._cv:
                self._release_slot(job)
                if job.abandoned:  # a replacement took this thread's place
                    self._hung -= 1
                    return

    def _run(self, job: Job) -> None:
        run_id, effect_id = job.key
        with structlog.contextvars.bound_contextvars(run_id=run_id, effect_id=effect_id, trace_id=job.run.trace_id):
            try:
                self._execute(job)
            except Exception as exc:  # noqa: BLE001 - never lose the worker thread; the lease expires
                log.error("effect crashed outside its handler", error=repr(exc))
            finally:
                with self.lock:
                    self._uncount(job)
                    if self.held.get(job.key) is job and job.state in ("running", "reporting") and not job.abandoned:
                        del self.held[job.key]

    def context(self, job: Job) -> EffectContext:
        spec = job.leased.spec
        return EffectContext(
            run_id=job.key[0],
            effect_id=spec.effect_id,
            kind=spec.kind,
            item=spec.item,
            params=spec.params,
            attempt=job.attempts - 1,
            run=job.run,
            settings=self.settings,
            cancelled=job.cancelled,
        )

    def _execute(self, job: Job) -> None:
        ctx, attempts, max_attempts = self.context(job), job.attempts, self.max_attempts
        handler = self.handlers.get(ctx.kind)
        outcomes: Sequence[Outcome]
        if attempts > max_attempts:
            last = job.leased.last_error
            outcomes = [self.failure(ctx, f"effect {ctx.effect_id} crashed or was abandoned {attempts - 1} times"
                                          + (f"; last error: {last}" if last else ""))]
        elif handler is None:
            outcomes = [self.failure(ctx, f"no handler for effect kind {ctx.kind!r}")]
        else:
            try:
                log.info("effect started", kind=ctx.kind, item=ctx.item, attempt=attempts)
                outcomes = handler(ctx)
                crash_point("mid_effect", ctx.kind)
            except NotReady as exc:
                if self._take_result(job):
                    log.info("effect not ready yet", detail=exc.message[:200], recheck_in_s=exc.retry_after)
                    if self.store.effect_retry_later(*job.key, job.claim, exc.retry_after, exc.message, recheck=True):
                        self.retry_scheduled(job.key, exc.retry_after)
                return
            except PodiumError as exc:
                if exc.retryable and attempts < max_attempts:
                    return self._retry_later(job, exc.message, exc.retry_after)
                outcomes = [self.failure(ctx, exc.message)]
            except Exception as exc:  # noqa: BLE001 - a handler bug fails the run clearly, after retries
                if attempts < max_attempts:
                    return self._retry_later(job, repr(exc))
                outcomes = [self.failure(ctx, f"{ctx.kind} raised {exc!r} after {attempts} attempts")]
            outcomes = self._checked(ctx, outcomes)
        if self._take_result(job):
            self.report(job, ctx, outcomes)

    def _take_result(self, job: Job) -> bool:
        """The worker may report only while the job is still its own: not past its deadline,
        lease not lost, not settled elsewhere. Otherwise the result is dropped. Either way the
        handler is done: its kind's slot goes to the next effect now, not after the report
        (which, with eager outcomes, is a whole transaction)."""
        with self._cv:
            self._release_slot(job)
            self._uncount(job)
            if self.held.get(job.key) is job and job.state == "running":
                job.state = "reporting"
                return True
        log.warning("late effect result dropped: its deadline passed or its lease was lost", kind=job.kind)
        return False

    # ---- outcomes and retries --------------------------------------------------------
    def _checked(self, ctx: EffectContext, outcomes: Any) -> Sequence[Outcome]:
        """A handler that returns garbage fails the run with a clear error instead of hanging it."""
        if isinstance(outcomes, (list, tuple)) and all(isinstance(o, Outcome) for o in outcomes):
            try:  # an outcome that is no valid event would crash report and be re-driven until the timeout
                for outcome in outcomes:
                    self._event(ctx, "", outcome).to_json()
            except Exception as exc:  # noqa: BLE001 - pydantic validation or serialisation errors
                return [self.failure(ctx, f"handler for {ctx.kind} returned an outcome that is not a valid event: {exc}")]
            for outcome in outcomes:  # the store would ignore it: the effect would never settle
                mismatch = outcome_mismatch(ctx.kind, ctx.item, outcome.type, outcome.item)
                if mismatch:
                    return [self.failure(ctx, f"handler for {ctx.kind} returned a wrong outcome: {mismatch}")]
            return outcomes
        return [self.failure(ctx, f"handler for {ctx.kind} returned {type(outcomes).__name__}, not outcomes")]

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

    def report(self, job: Job, ctx: EffectContext, outcomes: Sequence[Outcome]) -> None:
        """Publish the outcomes under the job's claim (or mark the effect done if there are none)."""
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
            with self.lock:
                if self.held.get(job.key) is job:
                    job.state, job.since = "reported", time.monotonic()
        log.info("effect finished", kind=ctx.kind, outcomes=[o.type for o in outcomes])

    def _retry_later(self, job: Job, error: str, hint: float | None = None) -> None:
        if self._take_result(job):
            self.schedule_retry(job, error, hint)

    def schedule_retry(self, job: Job, error: str, hint: float | None = None) -> None:
        """Hand the effect back to the store with a lease that expires after the backoff."""
        # Exponential backoff, or longer if the service said when to come back (RetryInfo).
        delay = min(max(2.0**job.attempts, hint or 0.0), 600.0 if hint else 60.0)
        log.warning("effect failed, will retry", error=error[:300], retry_in_s=delay, attempt=job.attempts)
        if self.store.effect_retry_later(*job.key, job.claim, delay, error):
            self.retry_scheduled(job.key, delay)

    @staticmethod
    def failure(ctx: EffectContext, message: str) -> Outcome:
        """The kind's failure outcome carrying ``message`` (logged)."""
        log.error("effect failed", kind=ctx.kind, item=ctx.item, error=message[:500])
        return Outcome(FAILURE_EVENT.get(ctx.kind, "director.failed"), ctx.item, {"error": message[:4000]})
