"""``podium serve``: wires store, engine, effects, timers, intake and HTTP into one process.

Start order: plumbing → store → wake-ups → effects → timers → HTTP (health, push, the
dashboard) → intake (work arrives last).
Stop order (SIGTERM; Cloud Run kills 10 s later): stop pulling → stop timers and wake-ups → hand back
queued effects and wait for running ones → stop HTTP. The whole stop is bounded.
"""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType

import structlog

from daemon import backends, logs
from daemon.config import Settings
from daemon.dashboard import Dashboard
from daemon.effects import EffectRunner
from daemon.engine import Engine
from daemon.firestore_tx import store_client
from daemon.http import DaemonHTTP
from daemon.intake import PullIntake
from daemon.notify import Notifier
from daemon.outcome_delivery import OutcomeDelivery
from daemon.pubsub import EventPublisher, ensure_daemon_plumbing
from daemon.push_auth import make_verifier
from daemon.store import Applied, RunStore
from daemon.timers import TimerSweep
from daemon.wakeups import Wakeups

log = structlog.get_logger("podium.daemon")

STOP_BUDGET_SECONDS = 8.0


class Daemon:
    def __init__(self, settings: Settings, *, http_port: int | None = None, pull: bool = True) -> None:
        self.settings = settings
        self.pull = pull
        self.store = RunStore(
            store_client(settings.project),
            settings.collection,
            owner=settings.replica_id,
            lease_seconds=settings.effect_lease_seconds,
        )
        self.publisher = EventPublisher(settings.project, settings.events_topic, ordered=settings.events_ordering)
        # Deadlines this replica writes (timers, effect re-checks) are acted on at their moment;
        # the sweeps find the rest.
        self.wakeups = Wakeups()
        self.effects = EffectRunner(
            settings,
            self.store,
            backends.handlers_for(settings),
            self.publisher.publish,
            concurrency=backends.concurrency_for(settings),
            wakeups=self.wakeups,
        )
        self.notifier = Notifier(settings, self.publisher)
        self.engine = Engine(
            settings, self.store, on_applied=self.effects.on_applied, notify=self._transitioned,
            settled=self.effects.settle,
        )
        # Outcomes of effects run here are applied here at once (published only as a fallback).
        self.effects.publish = OutcomeDelivery(
            self.engine, self.publisher.publish, eager=settings.eager_outcomes, running=self.effects.running_for,
            batch_wait=settings.outcome_batch_wait_seconds)
        self.timers = TimerSweep(self.engine, settings.sweep_interval_seconds, self.wakeups)
        self.intake = PullIntake(settings, self.engine)
        self.healthy = Health(self)
        self.http = DaemonHTTP(settings, self.engine, self.healthy, verify_token=make_verifier(settings), port=http_port,
                               dashboard=Dashboard(settings) if settings.dashboard else None)
        self._stopped = threading.Event()
        self._started = False

    def _transitioned(self, applied: Applied) -> None:
        """After every transition committed here: its notification, and its timer's wake-up."""
        self.notifier(applied)
        self.timers.expect(applied)

    def unhealthy_reason(self) -> str | None:
        """Why ``/healthz`` must fail (None if the daemon serves): starting, a subscriber that
        stopped pulling, an effect pool that is saturated or stuck."""
        if not self._started:
            return "starting"
        if self.pull and not self.intake.healthy():
            return "the subscriber is not pulling"
        return self.effects.health()

    def start(self) -> None:
        # Named before any background work: the effect sweep may claim work (and a crash test
        # kill the process) before "daemon started" is logged.
        log.info("daemon starting", replica=self.settings.replica_id)
        ensure_daemon_plumbing(self.settings)
        self.wakeups.start()
        self.effects.start()
        self.timers.start()
        self.http.start()
        if self.pull:
            self.intake.start()
        self._started = True
        log.info("daemon started", replica=self.settings.replica_id, backend=self.settings.backend,
                 port=self.http.port, project=self.settings.project)
        if self.settings.dashboard:
            log.info("dashboard", url=self.dashboard_url)

    @property
    def dashboard_url(self) -> str:
        host = self.settings.host if self.settings.host not in ("0.0.0.0", "::") else "127.0.0.1"
        return f"http://{f'[{host}]' if ':' in host else host}:{self.http.port}/dashboard/"

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        began = time.monotonic()
        log.info("stopping")
        if self.pull:
            self.intake.stop(timeout=3.0)
        self.timers.stop(timeout=1.0)
        self.wakeups.stop(timeout=1.0)
        left = STOP_BUDGET_SECONDS - (time.monotonic() - began)
        self.effects.shutdown(grace=max(left - 1.0, 0.5))
        self.http.stop()
        log.info("stopped", seconds=round(time.monotonic() - began, 2))

    def run_forever(self) -> None:
        requested = threading.Event()

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("signal received", signal=signal.Signals(signum).name)
            requested.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.start()
        while not requested.wait(0.5):
            pass
        self.stop()  # on the main thread, so the process exits only after its bounded stop


class Health:
    """``daemon.healthy()``: true when the daemon serves; ``why()`` says what is wrong if not."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    def __call__(self) -> bool:
        return self.why() is None

    def why(self) -> str | None:
        return self._daemon.unhealthy_reason()


def serve(settings: Settings) -> None:
    fmt = settings.log_format if settings.log_format != "auto" else ("json" if settings.backend == "gcp" else "console")
    logs.configure(fmt, settings.project)
    Daemon(settings, pull=settings.delivery == "pull").run_forever()
