"""Fixtures for engine tests: per-test settings, an in-process daemon, a daemon subprocess."""

from __future__ import annotations

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
from google.cloud import firestore, pubsub_v1

from daemon.config import Settings
from daemon.pubsub import ensure_daemon_plumbing
from daemon.server import Daemon

REPO = Path(__file__).resolve().parents[2]
TESTDATA = REPO / "testdata"
ARCHITECTURE_YAML = (TESTDATA / "architecture.yaml").read_text()


def make_settings(project: str, unique: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "project": project,
        "commands_topic": f"cmd-{unique}",
        "events_topic": f"evt-{unique}",
        "dead_letter_topic": f"dlq-{unique}",
        "backend": "standin",
        "source_root": TESTDATA,
        "state_dir": Path("/tmp") / f"podium-state-{unique}",
        "effect_lease_seconds": 3.0,
        "sweep_interval_seconds": 0.3,
        "iam_budget_seconds": 30.0,
        "director_ready_budget_seconds": 10.0,
        "ack_deadline_seconds": 10,
        "max_delivery_attempts": 5,  # the minimum Pub/Sub allows: dead-letter tests stay short
        # Suites start testdata many times at once on the stand-in backend; the target lock has
        # its own tests (test_targets.py) and is on in the local end-to-end suites.
        "one_run_per_target": False,
    }
    values.update(overrides)
    return Settings(**values)


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment a daemon subprocess needs to run with these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PODIUM_")}
    env.update(
        {
            "PODIUM_PROJECT": settings.project,
            "PODIUM_COMMANDS_TOPIC": settings.commands_topic,
            "PODIUM_EVENTS_TOPIC": settings.events_topic,
            "PODIUM_DEAD_LETTER_TOPIC": settings.dead_letter_topic,
            "PODIUM_BACKEND": settings.backend,
            "PODIUM_SOURCE_ROOT": str(settings.source_root),
            "PODIUM_STATE_DIR": str(settings.state_dir),
            "PODIUM_EFFECT_LEASE_SECONDS": str(settings.effect_lease_seconds),
            "PODIUM_SWEEP_INTERVAL_SECONDS": str(settings.sweep_interval_seconds),
            "PODIUM_IAM_BUDGET_SECONDS": str(settings.iam_budget_seconds),
            "PODIUM_DIRECTOR_READY_BUDGET_SECONDS": str(settings.director_ready_budget_seconds),
            "PODIUM_LOCAL_IAM_DELAY_SECONDS": str(settings.local_iam_delay_seconds),
            "PODIUM_ACK_DEADLINE_SECONDS": str(settings.ack_deadline_seconds),
            "PODIUM_MAX_DELIVERY_ATTEMPTS": str(settings.max_delivery_attempts),
            "PODIUM_ONE_RUN_PER_TARGET": str(settings.one_run_per_target).lower(),
            "PODIUM_EAGER_OUTCOMES": str(settings.eager_outcomes).lower(),
            "PODIUM_PORT": "0",
            "PODIUM_LOG_FORMAT": "json",
        }
    )
    return env


@pytest.fixture
def settings(emulators: Any, firestore_reset: None, project: str, unique: str) -> Settings:
    s = make_settings(project, unique)
    ensure_daemon_plumbing(s)  # as deploy/setup.sh does once per project
    return s


@pytest.fixture
def db(settings: Settings) -> Iterator[firestore.Client]:
    client = firestore.Client(project=settings.project)
    yield client
    client.close()


@pytest.fixture
def daemon_factory() -> Iterator[Callable[[Settings], Daemon]]:
    started: list[Daemon] = []

    def make(s: Settings) -> Daemon:
        d = Daemon(s, http_port=0)
        d.start()
        started.append(d)
        return d

    yield make
    for d in started:
        d.stop()


class DaemonProcess:
    """``podium serve`` as a real subprocess, killable with SIGKILL."""

    def __init__(self, settings: Settings, log_path: Path, extra_env: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.log_path = log_path
        self.env = settings_env(settings) | (extra_env or {})
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, **extra_env: str) -> DaemonProcess:
        env = self.env | extra_env
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "serve"], env=env, stdout=log, stderr=log, cwd=REPO
        )
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def wait_dead(self, timeout: float) -> bool:
        assert self.proc is not None
        try:
            self.proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture
def daemon_process(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    procs: list[DaemonProcess] = []

    def make(s: Settings, name: str = "daemon", **extra_env: str) -> DaemonProcess:
        p = DaemonProcess(s, tmp_path / f"{name}.log", extra_env)
        procs.append(p)
        return p

    yield make
    for p in procs:
        p.kill()


def publish(settings: Settings, body: bytes | dict[str, Any], topic: str | None = None, **attrs: str) -> str:
    client = pubsub_v1.PublisherClient()
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    path = f"projects/{settings.project}/topics/{topic or settings.commands_topic}"
    return str(client.publish(path, data, **attrs).result(timeout=30))


def start_body(run_id: str, yaml_text: str = ARCHITECTURE_YAML) -> dict[str, Any]:
    return {"command": "start", "run_id": run_id, "architecture_yaml": yaml_text, "source_root": str(TESTDATA)}


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def run_doc(db: firestore.Client, settings: Settings, run_id: str) -> dict[str, Any] | None:
    snap = db.collection(settings.collection).document(run_id).get()
    return snap.to_dict() if snap.exists else None


def wait_status(db: firestore.Client, settings: Settings, run_id: str, timeout: float = 60.0) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        doc = run_doc(db, settings, run_id)
        return doc if doc and doc.get("status") not in ("running", "queued") else None

    return wait_for(ended, timeout, f"run {run_id} to end")


def audit(db: firestore.Client, settings: Settings, run_id: str) -> list[dict[str, Any]]:
    docs = db.collection(settings.collection).document(run_id).collection("events").stream()
    return sorted((d.to_dict() | {"id": d.id} for d in docs), key=lambda e: (e["received_at"], e.get("version") or 0))


def assert_consistent(db: firestore.Client, settings: Settings, run_id: str) -> list[dict[str, Any]]:
    """Versions of applied records are exactly 1..version, each once: no lost or doubled transition."""
    doc = run_doc(db, settings, run_id)
    assert doc is not None
    applied = [e for e in audit(db, settings, run_id) if e["outcome"] == "applied"]
    versions = sorted(e["version"] for e in applied)
    assert versions == list(range(1, doc["version"] + 1)), (run_id, versions, doc["version"])
    return applied


def rejected(db: firestore.Client) -> dict[str, dict[str, Any]]:
    return {d.id: d.to_dict() for d in db.collection("rejected_messages").stream()}
