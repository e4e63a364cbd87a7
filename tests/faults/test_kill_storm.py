"""Kill storm: the daemon (a subprocess, local backend, the testdata architecture) is killed
with SIGKILL at seeded random moments, again and again, and restarted each time. Then the
run succeeds, every service runs exactly once, the audit log is consistent and the
publisher's messages reach the subscriber."""

from __future__ import annotations

import random
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest

from daemon.config import Settings
from daemon.pubsub import ensure_daemon_plumbing
from daemon.up import verify_dataflow
from handlers.deploy.local import list_processes, stop_all
from tests.faults.conftest import (
    kill_processes_under,
    processes_under,
    seed_for,
    summary,
    tail,
    wait_log_line,
)
from tests.integration.conftest import (
    TESTDATA,
    assert_consistent,
    audit,
    make_settings,
    publish,
    run_doc,
    start_body,
    wait_status,
)

pytestmark = pytest.mark.slow

KILLS = 20
DELAY = (0.3, 1.5)  # seconds between a daemon's start (or its "daemon started" line) and its kill
EARLY_SHARE = 0.25  # this share of kills counts the delay from the spawn: they hit the start-up
SERVICES = {"director", "publisher", "subscriber"}
RUN_ID = "storm-1"


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    dest = tmp_path / "testdata"
    shutil.copytree(TESTDATA, dest, ignore=shutil.ignore_patterns("resources.yaml", "services.yaml", "__pycache__"))
    return dest


@pytest.fixture
def storm_settings(emulators, firestore_reset, project, unique, workspace: Path, tmp_path: Path):
    s = make_settings(
        project,
        unique,
        backend="local",
        source_root=workspace,
        state_dir=tmp_path / "state",
        local_iam_delay_seconds=0.2,
        effect_lease_seconds=2.0,
        preflight_timeout_seconds=60.0,
        # Budgets are wall-clock time: a storm of dead daemons must not use them up.
        iam_budget_seconds=300.0,
        director_ready_budget_seconds=300.0,
    )
    ensure_daemon_plumbing(s)
    yield s
    stop_all(s)
    orphans = kill_processes_under(s.state_dir / "deploy")
    assert not orphans, f"service processes outside the registry were left running: {orphans}"


def test_twenty_sigkills_at_random_moments_then_the_run_succeeds(storm_settings: Settings, db, daemon_process,
                                                                  workspace: Path, tmp_path: Path):
    seed = seed_for("kill_storm")
    rng = random.Random(seed)
    settings = storm_settings
    body = start_body(RUN_ID, (workspace / "architecture.yaml").read_text())
    body["source_root"] = str(workspace)
    publish(settings, body)
    began = time.monotonic()

    kills: list[str] = []
    # The first daemon dies by its own fault point right after committing the start command,
    # before acking it: the redelivered start must change nothing (and keep version 1's record).
    first = daemon_process(settings, "storm-00", PODIUM_FAULTS="after_commit",
                           PODIUM_FAULTS_DIR=str(tmp_path / "fault-markers")).start()
    assert first.wait_dead(60), f"the after_commit fault never fired:\n{tail(tmp_path / 'storm-00.log')}"
    kills.append("kill 00: after_commit fault point (start committed, not acked)")
    print(kills[-1], flush=True)
    for i in range(1, KILLS):
        proc = daemon_process(settings, f"storm-{i:02d}").start()
        log = tmp_path / f"storm-{i:02d}.log"
        delay = rng.uniform(*DELAY)
        early = rng.random() < EARLY_SHARE
        if early:
            time.sleep(delay)
        else:
            wait_log_line(log, '"daemon started"', 60, alive=lambda p=proc: p.alive)
            time.sleep(delay)
        doc = run_doc(db, settings, RUN_ID) or {}
        assert proc.alive, f"seed={seed}: daemon {i} died on its own:\n{tail(log)}"
        proc.kill()
        kills.append(f"kill {i:02d}: +{delay:.2f} s after {'spawn' if early else 'ready'}, "
                     f"run {doc.get('state')} v{doc.get('version')}")
        print(kills[-1], flush=True)
        if doc.get("status") not in (None, "running"):
            break  # nothing left to interrupt
    storm_seconds = time.monotonic() - began

    final = daemon_process(settings, "final").start()
    doc = wait_status(db, settings, RUN_ID, timeout=240)
    print(f"storm: {len(kills)} kills in {storm_seconds:.1f} s; run ended {time.monotonic() - began:.1f} s "
          f"after its start as {doc['status']} (v{doc['version']})", flush=True)

    problems: list[str] = []
    if doc["status"] != "succeeded":
        problems.append(f"run {doc['status']}: {doc.get('error')}")
    try:
        applied = assert_consistent(db, settings, RUN_ID)
    except AssertionError as exc:
        problems.append(f"audit log inconsistent: {exc}")
        applied = []
    ids = Counter(e["event_id"] for e in applied)
    doubled = [i for i, n in ids.items() if n > 1]
    if doubled:
        problems.append(f"event ids applied twice: {doubled}")
    outcome_events = [e for e in audit(db, settings, RUN_ID) if e["outcome"] == "applied" and "~" in e["event_id"]]
    if len({e["event_id"] for e in outcome_events}) != len(outcome_events):
        problems.append("an effect outcome was applied twice")

    registered = [p for p in list_processes(settings) if p["alive"]]
    counts = Counter(p["service"] for p in registered)
    if counts != Counter(SERVICES):
        problems.append(f"registered live processes per service: {dict(counts)}")
    running = processes_under(settings.state_dir / "deploy")
    by_service = Counter(cwd.relative_to((settings.state_dir / "deploy").resolve()).parts[0]
                         for cwd in running.values())
    if by_service != Counter(SERVICES):
        problems.append(f"service processes actually running: {dict(by_service)} {running}")
    if doc["status"] == "succeeded":
        ok, detail = verify_dataflow(doc)
        if not ok:
            problems.append(detail)
        else:
            print(detail, flush=True)

    assert final.alive, f"seed={seed}: the final daemon died:\n{tail(tmp_path / 'final.log')}"
    summary("kill_storm", tried=len(kills), survived=len(kills) if not problems else 0, lost=len(problems))
    assert not problems, f"seed={seed}: " + "; ".join(problems) + "\n" + "\n".join(kills)
    assert len(kills) == KILLS, f"seed={seed}: the run ended after {len(kills)} kills, before the storm did"
