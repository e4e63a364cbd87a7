"""The daemon as a real subprocess, killed with SIGKILL at chosen points, restarted: every run
still succeeds, no transition is applied twice, and each effect's outcome is applied once."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest
from google.cloud.firestore_v1.base_query import FieldFilter

from tests.integration.conftest import (
    assert_consistent,
    audit,
    publish,
    start_body,
    wait_for,
    wait_status,
)

pytestmark = pytest.mark.slow


def _ledger(db, run_id: str) -> dict[str, int]:
    docs = db.collection("standin_ledger").where(filter=FieldFilter("run_id", "==", run_id)).stream()
    return {d.to_dict()["effect_id"]: d.to_dict()["executions"] for d in docs}


def _outcomes_applied_once(db, settings, run_id: str) -> None:
    applied = [e for e in audit(db, settings, run_id) if e["outcome"] == "applied" and "~" in e["event_id"]]
    ids = [e["event_id"] for e in applied]
    assert len(ids) == len(set(ids)), f"an effect outcome was applied twice: {ids}"


@pytest.mark.parametrize(
    "fault",
    [
        "after_commit:build.succeeded",  # committed, not acked: the message comes back, is a duplicate
        "before_effect:deploy",  # committed, effect never started: the lease expires, the sweep re-drives it
        "mid_effect:build",  # the handler did its work, its outcome was never published: re-run, applied once
    ],
)
def test_sigkill_at_a_point_then_restart_finishes_every_run(settings, db, daemon_process, tmp_path: Path, fault):
    faults_dir = tmp_path / "faults"
    ledger = {"PODIUM_STANDIN_LEDGER": "1", "PODIUM_FAULTS_DIR": str(faults_dir)}
    first = daemon_process(settings, "first", **ledger, PODIUM_FAULTS=fault).start()
    runs = [f"crash-{i}" for i in range(3)]
    for run_id in runs:
        publish(settings, start_body(run_id))
    assert first.wait_dead(60), f"the fault {fault} never fired"
    assert list(faults_dir.iterdir()), "no fault marker written"

    daemon_process(settings, "second", **ledger).start()
    for run_id in runs:
        doc = wait_status(db, settings, run_id, timeout=90)
        assert doc["status"] == "succeeded", (run_id, doc.get("error"))
        assert_consistent(db, settings, run_id)
        _outcomes_applied_once(db, settings, run_id)
        executions = _ledger(db, run_id)
        effects = {e.id for e in db.collection(settings.collection).document(run_id).collection("effects").stream()}
        # every effect ran; one that ran more than once (interrupted, or re-driven while the dead
        # daemon's abandoned transaction still held the run's lock) had its outcome applied once
        assert effects and effects <= set(executions), (effects, executions)


def test_two_daemons_drive_twenty_runs_without_lost_or_doubled_transitions(settings, db, daemon_process):
    daemon_process(settings, "a").start()
    daemon_process(settings, "b").start()
    runs = [f"pair-{i:02d}" for i in range(20)]
    for run_id in runs:
        publish(settings, start_body(run_id))
    for run_id in runs:
        doc = wait_status(db, settings, run_id, timeout=180)
        assert doc["status"] == "succeeded", (run_id, doc.get("error"))
        applied = assert_consistent(db, settings, run_id)
        assert len(applied) == doc["version"]


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
