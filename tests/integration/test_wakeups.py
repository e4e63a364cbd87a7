"""Wake-ups at their moment (daemon/wakeups.py): with sweeps 30 s apart, a NotReady re-check, a
retry's backoff and a run's timer still happen when they are due, not at the next sweep."""

from __future__ import annotations

import time

from handlers import standin
from machines.errors import NotReady
from tests.integration.conftest import assert_consistent, audit, publish, start_body, wait_status

SLOW_SWEEPS = {"sweep_interval_seconds": 30.0}


def test_a_not_ready_effect_is_rechecked_at_its_retry_after_not_at_the_sweep(settings, db, daemon_factory):
    daemon = daemon_factory(settings.model_copy(update=SLOW_SWEEPS))
    checks: dict[str, int] = {}

    def deploy_starting_slowly(ctx):
        checks[ctx.item] = checks.get(ctx.item, 0) + 1
        if checks[ctx.item] < 3:  # two re-checks, 0.2 s apart, then healthy
            raise NotReady(f"{ctx.item} is starting", retry_after=0.2)
        return standin.HANDLERS["deploy"](ctx)

    daemon.effects.handlers["deploy"] = deploy_starting_slowly
    began = time.monotonic()
    publish(settings, start_body("recheck-1"))
    assert wait_status(db, settings, "recheck-1", timeout=25)["status"] == "succeeded"
    assert time.monotonic() - began < 10  # the sweep alone would need two 30 s rounds
    assert checks == {"director": 3, "publisher": 3, "subscriber": 3}  # the director is deployed too
    assert_consistent(db, settings, "recheck-1")


def test_a_runs_timer_fires_at_its_wake_at_not_at_the_sweep(settings, db, daemon_factory):
    settings = settings.model_copy(update=SLOW_SWEEPS | {"director_ready_budget_seconds": 1.0})
    daemon = daemon_factory(settings)
    daemon.effects.handlers["director.command"] = lambda ctx: []  # a director that never answers
    began = time.monotonic()
    publish(settings, start_body("deadline-1"))
    doc = wait_status(db, settings, "deadline-1", timeout=25)
    assert doc["status"] == "failed" and doc["error"]["reason"] == "timeout", doc.get("error")
    assert time.monotonic() - began < 10
    fired = [e for e in audit(db, settings, "deadline-1") if e["type"] == "timer.fired" and e["outcome"] == "applied"]
    assert fired and all(e["message_id"].startswith("timer~") for e in fired)
