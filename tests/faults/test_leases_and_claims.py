"""Leases and claims under faults (issue 10 points 5 and 8), daemons as real subprocesses on the
stand-in backend with its execution ledger:

* a daemon killed right after a sweep's claim committed (``during_claim``), and one killed right
  after its heartbeat wrote a lease extension (``during_heartbeat``) while an effect runs: the
  run succeeds after a restart, each effect executed as often as the kills explain and its
  outcome applied once;
* a lease stolen while its first owner still runs: the owner is frozen (SIGSTOP) longer than
  the lease in the middle of a slow effect, a second daemon takes the effect over and runs it;
  thawed, the first owner must neither renew the lease nor have its late result applied.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.config import Settings
from tests.faults.checks import (
    applied,
    applied_once_problems,
    effect_ids,
    execution_problems,
    ledger,
)
from tests.faults.conftest import tail, wait_log_line
from tests.integration.conftest import (
    REPO,
    DaemonProcess,
    publish,
    start_body,
    wait_for,
    wait_status,
)

pytestmark = pytest.mark.slow

LEASE = 1.5  # seconds; the heartbeat renews every LEASE / 3
FREEZE = 3.5  # the first owner's stall lasts until its lease was taken over (about LEASE + a sweep)
SLOW = FREEZE + 3.0  # the stolen effect outlives the stall: its owner thaws while it still runs
CONFIGGEN = "configgen:-:a0"  # the first effect of every run


class KnobbedDaemon(DaemonProcess):
    """``podium serve`` through :mod:`tests.faults.slow_standin` (slow stand-in effects)."""

    def start(self, **extra_env: str) -> KnobbedDaemon:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.faults.slow_standin", "serve"],
            env=self.env | extra_env, stdout=log, stderr=log, cwd=REPO,
        )
        return self


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Callable[..., KnobbedDaemon]]:
    made: list[KnobbedDaemon] = []

    def make(settings: Settings, name: str, **env: str) -> KnobbedDaemon:
        proc = KnobbedDaemon(settings, tmp_path / f"{name}.log", {"PODIUM_STANDIN_LEDGER": "1", **env})
        made.append(proc)
        return proc

    yield make
    for proc in made:
        if proc.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.proc.pid, signal.SIGCONT)
        proc.kill()


def _lines(log: Path, message: str) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and entry.get("event", entry.get("message")) == message:
                out.append(entry)
    return out


def _effect_lease_expired(db: Any, settings: Settings, run_id: str, effect_id: str) -> bool:
    snap = db.collection(settings.collection).document(run_id).collection("effects").document(effect_id).get()
    if not snap.exists:
        return False
    data = snap.to_dict() or {}
    expires = data.get("lease_expires")
    return data.get("status") == "pending" and expires is not None and expires.timestamp() < time.time()


def _leave_an_expired_effect(settings: Settings, db: Any, daemons: Callable[..., KnobbedDaemon], faults: Path,
                             run_id: str) -> None:
    """A first daemon commits the run's start and dies before running its effect (``before_effect``);
    returns once that effect's lease has expired, so the next daemon's sweep claims it."""
    first = daemons(settings, "first", PODIUM_FAULTS="before_effect", PODIUM_FAULTS_DIR=str(faults)).start()
    publish(settings, start_body(run_id))
    assert first.wait_dead(60), f"before_effect never fired:\n{tail(first.log_path)}"
    wait_for(lambda: _effect_lease_expired(db, settings, run_id, CONFIGGEN), 30, "the dead daemon's lease to expire",
             interval=0.1)


def _final_checks(db: Any, settings: Settings, run_id: str, exceptions: dict[str, int]) -> dict[str, int]:
    doc = wait_status(db, settings, run_id, timeout=60)
    assert doc["status"] == "succeeded", (run_id, doc.get("error"))
    problems = applied_once_problems(db, settings, run_id)
    executions = ledger(db, run_id)
    problems += execution_problems(run_id, executions, effect_ids(db, settings, run_id), 1, exceptions)
    assert not problems, problems
    return executions


@pytest.mark.parametrize("point", ["during_claim", "during_heartbeat"])
def test_kill_during_claim_or_heartbeat_then_restart(settings, db, daemons, tmp_path: Path, point: str):
    """``during_claim``: the second daemon dies right after claiming the expired configgen, before
    running it: nobody has run it yet, so it runs exactly once, on the third daemon, after the
    dead claim's lease expired. ``during_heartbeat``: the second daemon claims it, runs it (slow)
    and dies right after its heartbeat extended the lease: it ran at most twice."""
    faults = tmp_path / "faults"
    run_id = f"{point}-1"
    began = time.monotonic()
    _leave_an_expired_effect(settings, db, daemons, faults, run_id)

    env = {"PODIUM_FAULTS": point, "PODIUM_FAULTS_DIR": str(faults)}
    if point == "during_heartbeat":
        # the configgen it claims at start-up is still running at its first renewal (LEASE / 3)
        env["PODIUM_TEST_SLOW_EFFECTS"] = "configgen=3"
    second = daemons(settings, "second", **env).start()
    assert second.wait_dead(60), f"{point} never fired:\n{tail(second.log_path)}"
    assert (faults / f"{point}-any").exists()
    # the kill hit while the dead daemon held the effect: it had claimed it (and, for the
    # heartbeat, started it) before dying
    replica = _lines(second.log_path, "daemon starting")[0]["replica"]  # logged before its sweep claims
    effect = db.collection(settings.collection).document(run_id).collection("effects").document(CONFIGGEN).get()
    assert effect.get("owner") == replica, f"the second daemon died before claiming {CONFIGGEN}:\n{tail(second.log_path)}"
    if point == "during_heartbeat":
        assert _lines(second.log_path, "effect started"), f"no effect ran at the kill:\n{tail(second.log_path)}"

    daemons(settings, "third").start()
    executions = _final_checks(db, settings, run_id, {CONFIGGEN: 2} if point == "during_heartbeat" else {})
    if point == "during_claim":
        assert executions[CONFIGGEN] == 1, executions
    print(f"{point}: run succeeded {time.monotonic() - began:.1f} s after its start; "
          f"configgen executed {executions[CONFIGGEN]} time(s)", flush=True)


def test_lease_stolen_while_its_first_owner_still_runs(settings, db, daemons, tmp_path: Path):
    settings = settings.model_copy(update={"effect_lease_seconds": LEASE})
    slow = {"PODIUM_TEST_SLOW_EFFECTS": f"configgen={SLOW}"}
    pair = [daemons(settings, name, **slow).start() for name in ("a", "b")]
    for proc in pair:
        wait_log_line(proc.log_path, '"daemon started"', 60, alive=lambda p=proc: p.alive)

    run_id = "stolen-1"
    began = time.monotonic()
    publish(settings, start_body(run_id))

    def runner() -> KnobbedDaemon | None:
        return next((p for p in pair if any(e.get("kind") == "configgen" for e in _lines(p.log_path, "effect started"))),
                    None)

    owner = wait_for(runner, 30, "a daemon to start the configgen effect", interval=0.05)
    thief = pair[1] if owner is pair[0] else pair[0]
    assert owner.proc is not None
    time.sleep(0.3)
    os.kill(owner.proc.pid, signal.SIGSTOP)  # its heartbeat stalls, its handler too
    try:  # the lease expires, the thief's sweep takes the effect over; then the owner thaws
        wait_for(lambda: any(e.get("effect_id") == CONFIGGEN for e in _lines(thief.log_path, "re-driving effect")),
                 FREEZE * 3, "the second daemon to take the effect over", interval=0.05)
        stolen_after = time.monotonic() - began
    finally:
        os.kill(owner.proc.pid, signal.SIGCONT)
    thawed = time.monotonic() - began

    executions = _final_checks(db, settings, run_id, {CONFIGGEN: 2})
    assert executions[CONFIGGEN] == 2, f"the effect was not taken over: {executions}"
    assert owner.alive and thief.alive
    outcome = [r for r in applied(db, settings, run_id) if r["type"] == "config.generated"]
    assert len(outcome) == 1, outcome
    # The first owner lost its lease while frozen: once thawed it must drop the effect (its
    # result is not reported; were it reported, the store would record it ``ignored``).
    reported = [e for e in _lines(owner.log_path, "effect finished") if e.get("effect_id") == CONFIGGEN]
    dropped = _lines(owner.log_path, "late effect result dropped: its deadline passed or its lease was lost")
    print(f"lease stolen {stolen_after:.1f} s after the start, owner thawed at {thawed:.1f} s, run succeeded "
          f"{time.monotonic() - began:.1f} s after its start; the first owner reported {len(reported)}, "
          f"dropped {len(dropped)} result(s)", flush=True)
    assert not reported, f"the first owner reported the outcome of a lease it had lost: {reported}"
