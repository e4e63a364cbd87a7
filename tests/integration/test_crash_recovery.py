"""The daemon as a real subprocess, killed with SIGKILL at chosen points, restarted: every run
still succeeds with the transitions of a clean run, each once (contiguous versions), each
effect's outcome applied once, and every effect executed (the stand-in ledger)."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest

from tests.faults.checks import (
    applied_once_problems,
    effect_ids,
    execution_problems,
    ledger,
    reference_transitions,
)
from tests.integration.conftest import (
    assert_consistent,
    publish,
    start_body,
    wait_for,
    wait_status,
)

pytestmark = pytest.mark.slow


def _reference(settings, db, run_id: str = "reference"):
    """A clean run on the daemon now running: the transitions every other run must match."""
    publish(settings, start_body(run_id))
    assert wait_status(db, settings, run_id, timeout=60)["status"] == "succeeded"
    return reference_transitions(db, settings, run_id)


@pytest.mark.parametrize(
    "fault",
    [
        "after_commit:build.succeeded",  # committed, not acked: the message comes back, is a duplicate
        "before_effect:deploy",  # committed, effect never started: the lease expires, the sweep re-drives it
        "mid_effect:build",  # the handler did its work, its outcome was never published: re-run, applied once
    ],
)
def test_sigkill_at_a_point_then_restart_finishes_every_run(settings, db, daemon_process, tmp_path: Path, fault):
    # Budgets are wall-clock time: the emulator keeps a killed daemon's transaction locks for up
    # to a minute (docs/reliability.md), longer than the 30 s test budget for IAM propagation.
    settings = settings.model_copy(update={"iam_budget_seconds": 180.0, "director_ready_budget_seconds": 180.0})
    faults_dir = tmp_path / "faults"
    env = {"PODIUM_STANDIN_LEDGER": "1", "PODIUM_FAULTS_DIR": str(faults_dir)}
    first = daemon_process(settings, "first", **env, PODIUM_FAULTS=fault).start()
    runs = [f"crash-{i}" for i in range(3)]
    for run_id in runs:
        publish(settings, start_body(run_id))
    assert first.wait_dead(60), f"the fault {fault} never fired"
    assert list(faults_dir.iterdir()), "no fault marker written"

    daemon_process(settings, "second", **env).start()
    docs = {run_id: wait_status(db, settings, run_id, timeout=180) for run_id in runs}
    reference = _reference(settings, db)
    for run_id, doc in docs.items():
        assert doc["status"] == "succeeded", (run_id, doc.get("error"))
        problems = applied_once_problems(db, settings, run_id, reference)
        assert not problems, problems
        executions = ledger(db, run_id)
        effects = effect_ids(db, settings, run_id)
        # every effect ran (but an IAM poll the next poll overtook: the run may end before the
        # sweep re-drives it); one that ran more than once (interrupted, or re-driven while the
        # dead daemon's abandoned transaction still held the run's lock) had its outcome applied once
        assert effects, run_id
        assert not execution_problems(run_id, executions, effects, allowed=len(effects)), (effects, executions)


def test_two_daemons_drive_twenty_runs_without_lost_or_doubled_transitions(settings, db, daemon_process):
    ledger_on = {"PODIUM_STANDIN_LEDGER": "1"}
    daemon_process(settings, "a", **ledger_on).start()
    daemon_process(settings, "b", **ledger_on).start()
    runs = [f"pair-{i:02d}" for i in range(20)]
    for run_id in runs:
        publish(settings, start_body(run_id))
    docs = {run_id: wait_status(db, settings, run_id, timeout=180) for run_id in runs}
    reference = _reference(settings, db)
    twice: dict[str, dict[str, int]] = {}
    for run_id, doc in docs.items():
        assert doc["status"] == "succeeded", (run_id, doc.get("error"))
        problems = applied_once_problems(db, settings, run_id, reference)
        assert not problems, problems
        executions = ledger(db, run_id)
        assert effect_ids(db, settings, run_id) <= set(executions), (run_id, executions)
        twice.update({f"{run_id} {e}": n for e, n in executions.items() if n > 1})
    # Effects are at-least-once: with both replicas alive a lease still expires when a heartbeat
    # is held up longer than the lease (3 s here; on 2 cores the emulator's lock waits under 20
    # runs do that), and the other replica runs the effect again. Its outcome is then applied
    # once (checked above); a third execution would mean a lease was taken from a live owner twice.
    thrice = {k: n for k, n in twice.items() if n > 2}
    assert not thrice, f"effects executed more than twice by two live replicas: {thrice}"
    print(f"effects executed twice (a lease expired under load): {len(twice)}", flush=True)


def _port_from_log(log: Path) -> int:
    def find() -> int | None:
        for line in log.read_text().splitlines():
            if '"daemon started"' in line:
                return int(json.loads(line)["port"])
        return None

    return wait_for(find, 30, "the daemon to log its port")


def test_healthz_and_sigterm_exit_within_ten_seconds(settings, db, daemon_process, tmp_path: Path):
    proc = daemon_process(settings, "graceful").start()
    port = _port_from_log(tmp_path / "graceful.log")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
        assert resp.status == 200
        assert json.loads(resp.read())["status"] == "ok"
    publish(settings, start_body("graceful-1"))
    time.sleep(0.5)  # let work be in flight
    began = time.monotonic()
    code = proc.terminate(timeout=15)
    assert time.monotonic() - began < 10
    assert code == 0
    # what was in flight is finished by the next daemon
    daemon_process(settings, "after").start()
    assert wait_status(db, settings, "graceful-1", timeout=60)["status"] == "succeeded"
    assert_consistent(db, settings, "graceful-1")
