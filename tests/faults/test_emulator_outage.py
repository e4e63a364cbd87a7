"""Emulator outage: the Firestore or the Pub/Sub emulator is frozen (SIGSTOP on its java
process, state kept in memory) for about three seconds while runs are in flight, then
thawed (SIGCONT). The daemon keeps running, nacks and retries, and every run succeeds with
a consistent audit log.

Then both emulators at once for longer than the effect lease *and* the ack deadline: every
lease has expired and every message out for delivery is due again when they come back, yet
each effect's outcome is applied once and nothing is dead-lettered."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence

import pytest

from daemon.config import Settings
from daemon.pubsub import ensure_daemon_plumbing
from handlers.base import EffectContext, Handler, Outcome
from tests.faults.checks import Executions, applied_once_problems
from tests.faults.conftest import emulator_pid, frozen, port_answers, seed_for, summary
from tests.integration.conftest import (
    assert_consistent,
    make_settings,
    publish,
    rejected,
    run_doc,
    start_body,
    wait_for,
    wait_status,
)

pytestmark = pytest.mark.slow

OUTAGES = ("firestore", "pubsub", "firestore", "pubsub")  # order shuffled by the seed
RUNS_PER_OUTAGE = 2
EFFECT_SECONDS = 0.25  # stand-in handlers take this long, so a run lasts several seconds


def _slow(handler: Handler) -> Callable[[EffectContext], Sequence[Outcome]]:
    def run(ctx: EffectContext) -> Sequence[Outcome]:
        time.sleep(EFFECT_SECONDS)
        return handler(ctx)

    return run


def test_frozen_emulators_mid_run_then_every_run_succeeds(settings, db, daemon_factory, emulator_guard):
    seed = seed_for("emulator_outage")
    rng = random.Random(seed)
    emulators = emulator_guard
    pids = {name: emulator_pid(emulators, name) for name in ("firestore", "pubsub")}
    daemon = daemon_factory(settings)
    for kind, handler in list(daemon.effects.handlers.items()):
        daemon.effects.handlers[kind] = _slow(handler)

    order = list(OUTAGES)
    rng.shuffle(order)
    runs: list[str] = []
    log: list[str] = []
    for n, name in enumerate(order):
        batch = [f"outage-{n}-{name}-{i}" for i in range(RUNS_PER_OUTAGE)]
        for run_id in batch:
            publish(settings, start_body(run_id))
        runs += batch
        # mid-run: every run of the batch has started and none has ended
        wait_for(lambda b=batch: all((run_doc(db, settings, r) or {}).get("version", 0) >= 2 for r in b), 60,
                 f"seed={seed}: the runs of outage {n} to start")
        time.sleep(rng.uniform(0.0, 1.0))
        before = {r: run_doc(db, settings, r) or {} for r in runs}
        in_flight = sorted(r for r, d in before.items() if d.get("status") == "running")
        assert set(batch) <= set(in_flight), f"seed={seed}: outage {n} would not be mid-run: {before}"
        seconds = rng.uniform(2.5, 3.5)
        with frozen(pids[name]):
            time.sleep(seconds)
        thawed = time.monotonic()
        assert wait_for(lambda: port_answers(emulators.firestore_host) and port_answers(emulators.pubsub_host),
                        10, "the emulators to answer again")
        states = ", ".join(f"{r}@{before[r].get('state')}" for r in in_flight)
        log.append(f"outage {n}: {name} frozen {seconds:.1f} s with {len(in_flight)} run(s) in flight ({states})")
        print(log[-1], flush=True)
        # the daemon moves again after the thaw: some run in flight applies a new transition
        wait_for(lambda b=before, f=in_flight: any((run_doc(db, settings, r) or {}).get("version", 0)
                                                    > b[r].get("version", 0) for r in f),
                 60, f"seed={seed}: progress after the {name} outage {n}")
        print(f"  progress {time.monotonic() - thawed:.1f} s after the thaw", flush=True)

    problems: list[str] = []
    for run_id in runs:
        doc = wait_status(db, settings, run_id, timeout=120)
        if doc["status"] != "succeeded":
            problems.append(f"{run_id} {doc['status']}: {doc.get('error')}")
        try:
            assert_consistent(db, settings, run_id)
        except AssertionError as exc:
            problems.append(f"{run_id}: {exc}")
    dead = {k: (v["reason"], v["message"][:200]) for k, v in rejected(db).items()}
    if dead:
        problems.append(f"valid messages were rejected or dead-lettered: {dead}")
    if not daemon.healthy():
        problems.append("the daemon reports itself unhealthy after the outages")

    summary("emulator_outage", tried=len(order), survived=len(order) if not problems else 0, lost=len(problems))
    assert not problems, f"seed={seed}: " + "; ".join(problems) + "\n" + "\n".join(log)


def test_an_outage_longer_than_the_lease_and_the_ack_deadline(emulators, firestore_reset, project, unique, db,
                                                             daemon_factory, emulator_guard):
    settings = make_settings(project, unique, effect_lease_seconds=2.0, ack_deadline_seconds=10,
                             max_delivery_attempts=Settings.model_fields["max_delivery_attempts"].default)
    ensure_daemon_plumbing(settings)
    pids = {name: emulator_pid(emulator_guard, name) for name in ("firestore", "pubsub")}
    daemon = daemon_factory(settings)
    for kind, handler in list(daemon.effects.handlers.items()):
        daemon.effects.handlers[kind] = _slow(handler)
    executions = Executions(daemon.effects.handlers)
    runs = ["long-outage-1", "long-outage-2"]
    for run_id in runs:
        publish(settings, start_body(run_id))
    wait_for(lambda: all((run_doc(db, settings, r) or {}).get("version", 0) >= 3 for r in runs), 60,
             "both runs to be under way")
    seconds = max(settings.effect_lease_seconds, settings.ack_deadline_seconds) + 3
    with frozen(pids["firestore"]), frozen(pids["pubsub"]):
        time.sleep(seconds)
    print(f"both emulators frozen {seconds:.0f} s (lease {settings.effect_lease_seconds} s, "
          f"ack deadline {settings.ack_deadline_seconds} s)", flush=True)

    problems: list[str] = []
    for run_id in runs:
        doc = wait_status(db, settings, run_id, timeout=180)
        if doc["status"] != "succeeded":
            problems.append(f"{run_id} {doc['status']}: {doc.get('error')}")
        problems += applied_once_problems(db, settings, run_id)
        # A lease that expired under the owner may be taken over once after the thaw.
        problems += executions.problems(db, settings, run_id, allowed=2)
    dead = {k: (v["reason"], v["message"][:200]) for k, v in rejected(db).items()}
    if dead:
        problems.append(f"valid messages were rejected or dead-lettered: {dead}")
    summary("long_outage", tried=1, survived=0 if problems else 1, lost=len(problems))
    assert not problems, "; ".join(problems)

