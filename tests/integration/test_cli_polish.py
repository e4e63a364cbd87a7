"""The CLI's rough edges a newcomer met (issue 14 point 4) and ``podium logs``: every check runs
the CLI as a subprocess, as a user would, with the environment a user would have.

Lean on purpose: runs are written into Firestore directly where the daemon adds nothing, the
subprocesses that need no emulator run in parallel, and one daemon serves the start checks.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import warnings
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path
from typing import Any

from google.cloud import pubsub_v1

from tests.integration.conftest import REPO, TESTDATA, settings_env, wait_for

CLI = [sys.executable, "-m", "cli.main"]
ARCHITECTURE = TESTDATA / "architecture.yaml"
BROKEN = "name: demo\nproject_id: podium-local\ndataflows:\n  d:\n    services:\n      s:\n        name: s\n"
CLOUD_VARIABLES = ("PUBSUB_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST", "STORAGE_EMULATOR_HOST",
                   "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CONFIG")
LONG_ID = "a-rather-long-run-id-that-must-stay-copyable-0123456789"
T0 = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)


def bare_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A user's shell without emulator variables, credentials or Podium settings: an empty HOME
    (no ~/.config/gcloud ADC) and no metadata server probe."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in CLOUD_VARIABLES and not k.startswith("PODIUM_")}
    return env | {"HOME": str(home), "NO_GCE_CHECK": "true", "COLUMNS": "80"} | extra


def user_env(settings: Any, **extra: str) -> dict[str, str]:
    """The variables a user sets to reach this test's topics and collection (emulators included)."""
    return settings_env(settings) | {"COLUMNS": "80", "PODIUM_LOG_FORMAT": "console"} | extra


def cli(*argv: str, env: dict[str, str], cwd: Path = REPO, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *argv], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def cli_all(calls: list[tuple[list[str], dict[str, str]]], cwd: Path) -> list[tuple[int, str, str]]:
    """Several CLI subprocesses at once (each is mostly interpreter start-up)."""
    procs = [subprocess.Popen([*CLI, *argv], env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for argv, env in calls]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=90)
        results.append((proc.returncode, out, err))
    return results


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---- without emulators ---------------------------------------------------------------------

def test_every_cloud_verb_without_emulators_or_credentials_says_what_to_set_and_exits_4(tmp_path):
    no_adc = bare_env(tmp_path)  # nothing set at all
    bad_key = bare_env(tmp_path, GOOGLE_APPLICATION_CREDENTIALS=str(tmp_path / "no-such-key.json"))
    verbs = [["serve"], ["start", str(ARCHITECTURE)], ["status"], ["status", "r1"], ["cancel", "r1"],
             ["retry", "r1"], ["teardown", "r1"], ["watch", "r1"], ["logs", "r1"], ["graph", "r1"], ["down"]]
    calls = [(argv, no_adc if i % 2 else bad_key) for i, argv in enumerate(verbs)]
    # an emulator variable naming a port nobody listens on: said at once, not after retries
    dead = bare_env(tmp_path, PUBSUB_EMULATOR_HOST=f"127.0.0.1:{unused_port()}",
                    FIRESTORE_EMULATOR_HOST=f"127.0.0.1:{unused_port()}")
    calls.append((["status"], dead))
    results = cli_all(calls, tmp_path)
    for (argv, env), (code, out, err) in zip(calls, results, strict=True):
        assert code == 4, (argv, code, out, err)
        assert "Traceback" not in err and out == "", (argv, err)
        assert len(err.strip().splitlines()) == 1, (argv, err)
        if env is dead:
            assert "nothing answers at PUBSUB_EMULATOR_HOST" in err and "podium up" in err
            continue
        assert err.startswith(f"podium {argv[0]}: "), err
        for hint in ("PUBSUB_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST", "podium up",
                     "gcloud auth application-default login"):
            assert hint in err, (argv, hint, err)
        if env is bad_key:
            assert "no-such-key.json" in err


def test_version_plan_errors_on_stderr_and_png_without_dot(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text(BROKEN)
    env = bare_env(tmp_path)
    no_dot = env | {"PATH": str(tmp_path / "empty-bin")}  # the interpreter is called by its full path
    calls = [(["--version"], env), (["plan", str(broken)], env), (["plan", str(tmp_path / "missing.yaml")], env),
             (["graph", "--format", "png"], no_dot)]
    (v_code, v_out, _), (p_code, p_out, p_err), (m_code, m_out, m_err), (g_code, g_out, g_err) = cli_all(calls,
                                                                                                      tmp_path)
    assert (v_code, v_out.strip()) == (0, f"podium {version('podium')}")
    assert (p_code, p_out) == (2, "") and "service_account" in p_err and str(broken) in p_err
    assert (m_code, m_out) == (2, "") and "cannot read" in m_err
    assert (g_code, g_out) == (4, "")
    assert len(g_err.strip().splitlines()) == 1 and "dot" in g_err and "Traceback" not in g_err
    assert not (tmp_path / "podium-machine.png").exists()


def test_up_prints_the_exports_and_ends_its_live_view_with_a_newline(tmp_path):
    """``podium up`` starting its own emulators (a 2 s timeout: the run has just begun)."""
    done = cli("up", "--timeout", "2", env=bare_env(tmp_path), cwd=tmp_path, timeout=180)
    assert done.returncode == 3, (done.stdout, done.stderr)
    exports = [line for line in done.stdout.splitlines() if line.startswith("export ")]
    assert len(exports) == 1, done.stdout
    assert re.fullmatch(r"export PUBSUB_EMULATOR_HOST=127\.0\.0\.1:\d+ FIRESTORE_EMULATOR_HOST=127\.0\.0\.1:\d+ "
                        r"STORAGE_EMULATOR_HOST=http://127\.0\.0\.1:\d+ PODIUM_PROJECT=podium-local", exports[0])
    # the live view's last line ends before what is printed next
    assert re.search(r"(^|\n)timed out after 2 s", done.stdout), done.stdout
    assert "elapsed=" in done.stdout


# ---- runs written straight into Firestore (no daemon needed) -------------------------------

def _spy(settings: Any) -> str:
    """A second subscription on the commands topic: it sees every command the CLI publishes."""
    subscriber = pubsub_v1.SubscriberClient()
    path = subscriber.subscription_path(settings.project, f"{settings.commands_topic}-spy")
    subscriber.create_subscription(request={"name": path, "topic": f"projects/{settings.project}/topics/"
                                                                   f"{settings.commands_topic}"})
    subscriber.close()
    return path


def _published(path: str, *, some: bool) -> list[dict[str, Any]]:
    """The commands the spy received (and acks them): until some arrive (``some``), else for 1.5 s."""
    subscriber = pubsub_v1.SubscriberClient()
    bodies: list[dict[str, Any]] = []
    deadline = time.monotonic() + (15.0 if some else 1.5)
    try:
        while time.monotonic() < deadline and not (some and bodies):
            with warnings.catch_warnings():  # deprecated, but the emulator answers at once with it
                warnings.simplefilter("ignore", DeprecationWarning)
                response = subscriber.pull(request={"subscription": path, "max_messages": 20,
                                                    "return_immediately": True}, timeout=10)
            received = list(response.received_messages)
            if received:
                subscriber.acknowledge(request={"subscription": path, "ack_ids": [m.ack_id for m in received]})
            bodies += [json.loads(m.message.data) for m in received]
            time.sleep(0.2)
    finally:
        subscriber.close()
    return bodies


def _put_run(db: Any, settings: Any, run_id: str, **fields: Any) -> None:
    doc = {"run_id": run_id, "version": 3, "created_at": T0, "updated_at": T0 + timedelta(seconds=125)} | fields
    db.collection(settings.collection).document(run_id).set(doc)


def test_status_watch_and_cancel_at_80_columns(settings, db, tmp_path):
    progress = {"dependent": {"tracer": "pending"}, "deploy": {"publisher": "failed", "subscriber": "succeeded"},
                "build": {"publisher": "succeeded"}, "director": {"director": "succeeded"},
                "preflight": {"publisher": "passed"}}
    error = {"state": "deploying_services", "reason": "deploy_failed",
             "message": "publisher exited before answering GET /healthz:\n" + "\n".join(f"line {i}" for i in range(40))}
    _put_run(db, settings, LONG_ID, state="failed", status="failed", progress=progress, error=error)
    _put_run(db, settings, "17000000000000001", state="cancelled", status="cancelled",
             updated_at=T0 + timedelta(seconds=5))
    events = db.collection(settings.collection).document(LONG_ID).collection("events")
    for i, (type_, frm, to) in enumerate([("command.start", "pending", "generating_config"),
                                           ("deploy.failed", "deploying_services", "failed")]):
        events.document(f"e{i}").set({"type": type_, "item": None, "message_id": str(i), "outcome": "applied",
                                      "from_state": frm, "to_state": to, "detail": "",
                                      "received_at": T0 + timedelta(seconds=60 * i + 1)})
    spy = _spy(settings)
    env = user_env(settings)
    calls = [(["status"], env), (["status", LONG_ID, "--events"], env), (["watch", LONG_ID], env),
             (["cancel", "17000000000000001"], env), (["cancel", LONG_ID, "--json"], env)]
    (l_code, listing, _), (s_code, shown, _), (w_code, watched, w_err), (c_code, c_out, _), (f_code, f_out, f_err) = \
        cli_all(calls, tmp_path)

    # the list: each id whole on one line (never folded or cut), the error shortened instead
    assert l_code == 0
    lines = listing.splitlines()
    assert any(line.startswith(LONG_ID + " ") for line in lines), listing
    assert any(line.startswith("17000000000000001 ") for line in lines), listing
    assert "…" in listing and "line 39" not in listing

    # one run: phases in pipeline order, the error's head, audit lines with their date
    assert s_code == 1  # a failed run
    phase_lines = [line.split()[0] for line in shown.splitlines() if line.startswith("  ") and "=" in line]
    assert phase_lines == ["preflight", "build", "director", "deploy", "dependent"], shown
    assert "error in deploying_services: deploy_failed" in shown and "line 18" in shown and "line 19" not in shown
    assert "2026-03-04 05:06:08.000" in shown and "2026-03-04 05:07:08.000" in shown

    # watch: the run's own elapsed time (created_at to updated_at: 2 min 5 s), dated events, a final newline
    assert w_code == 1, w_err
    assert "elapsed=2m05s" in watched and "2026-03-04 05:07:08" in watched
    assert watched.endswith("\n")

    # cancel: an already cancelled run is fine (exit 0), an ended one is refused (exit 1); nothing sent
    assert c_code == 0 and "already cancelled" in c_out
    assert f_code == 1, f_err
    refused = json.loads(f_out)
    assert (refused["outcome"], refused["status"], refused["message_id"]) == ("refused", "failed", None)
    assert _published(spy, some=False) == []


# ---- with a daemon -------------------------------------------------------------------------

def test_start_says_why_it_failed_and_that_a_second_start_is_a_duplicate(settings, db, daemon_factory, tmp_path):
    daemon_factory(settings)
    spy = _spy(settings)
    broken = tmp_path / "broken.yaml"
    broken.write_text(BROKEN)
    env = user_env(settings)
    first = cli("start", str(broken), "--no-validate", "--run-id", "dup-1", "--wait", "--timeout", "60",
                "--if-busy", "fail", env=env, cwd=tmp_path)
    assert first.returncode == 1, (first.stdout, first.stderr)
    assert "start published: run dup-1" in first.stdout
    assert "run dup-1 failed" in first.stderr and "invalid_architecture" in first.stderr
    assert "service_account" in first.stderr  # the head of error.message
    sent = _published(spy, some=True)
    assert [(m["run_id"], m["if_busy"]) for m in sent] == [("dup-1", "fail")]

    again = cli("start", str(broken), "--no-validate", "--run-id", "dup-1", env=env, cwd=tmp_path)
    assert again.returncode == 2, (again.stdout, again.stderr)
    assert "start published" not in again.stdout
    assert "duplicate" in again.stderr and "already exists" in again.stderr
    assert "the daemon recorded it as such" in again.stderr
    records = db.collection(settings.collection).document("dup-1").collection("events").stream()
    assert [r.to_dict()["outcome"] for r in records].count("duplicate") == 1
    assert [m.get("if_busy") for m in _published(spy, some=True)] == ["queue"]  # the default


# ---- podium logs ---------------------------------------------------------------------------

def _start_line(service: str, run_id: str) -> str:
    # the line handlers/deploy/local.py writes before each process's output
    return (f"--- podium: starting {service} (local://{service}@sha256:0) for run {run_id} on port 1 "
            f"at 2026-03-04T05:06:07+00:00 ---\n")


def _register(settings: Any, service: str, run_id: str, log: Path, offset: int) -> None:
    from handlers.deploy.local import registry_for
    from handlers.deploy.registry import ProcessRecord

    record = ProcessRecord(project="podium-local", service=service, pid=2**22 + 7, port=1,
                           url="http://127.0.0.1:1", image=f"local://{service}@sha256:0", started_at=T0,
                           run_id=run_id, effect_id="e", log_path=str(log), log_offset=offset,
                           fingerprint="gone", workdir="/tmp", config_hash="x")
    assert registry_for(settings.project).replace(record, None)


def test_logs_prints_a_runs_output_locally_and_the_cloud_logging_query_on_gcp(settings, db, tmp_path):
    from machines.architecture import load_architecture
    from machines.hydration import hydrate

    logs = Path(settings.state_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    publisher, subscriber = logs / "publisher.log", logs / "subscriber.log"
    earlier = _start_line("publisher", "old-run") + "output of the earlier run\n"
    publisher.write_text(earlier + _start_line("publisher", "logs-1") + "tick 1\n")
    subscriber.write_text(_start_line("subscriber", "logs-1") + "received 1\n")
    _register(settings, "publisher", "logs-1", publisher, len(earlier))
    _register(settings, "subscriber", "logs-1", subscriber, 0)
    arch = hydrate(load_architecture(ARCHITECTURE.read_text(), source="test")).to_dict()
    _put_run(db, settings, "logs-1", state="succeeded", status="succeeded", architecture=arch)
    env = user_env(settings)
    gcp = env | {"PODIUM_BACKEND": "gcp"}
    calls = [(["logs", "logs-1"], env), (["logs", "logs-1", "publisher"], env), (["logs", "old-run"], env),
             (["logs", "logs-1", "nosuch"], env), (["logs", "ghost-run"], env), (["logs", "logs-1"], gcp),
             (["logs", "logs-1", "publisher", "--json"], gcp)]
    both, one, old, nosuch, ghost, query, query_json = cli_all(calls, tmp_path)

    assert both[0] == 0, both
    assert "==> publisher (run logs-1, exited)" in both[1] and "==> subscriber (run logs-1, exited)" in both[1]
    assert "tick 1" in both[1] and "received 1" in both[1] and "earlier run" not in both[1]
    assert one[0] == 0 and one[1] == _start_line("publisher", "logs-1") + "tick 1\n"
    # a process no longer registered: found by its start line, up to the next process's
    assert old[0] == 0 and "output of the earlier run" in old[1] and "tick 1" not in old[1]
    assert nosuch[0] == 2 and "publisher, subscriber" in nosuch[2]
    assert ghost[0] == 2 and "ghost-run" in ghost[2]

    assert query[0] == 0, query
    assert 'resource.type="cloud_run_revision"' in query[1]
    assert 'resource.labels.service_name=("director" OR "publisher" OR "subscriber")' in query[1]
    assert 'resource.labels.location="europe-west1"' in query[1] and 'timestamp>="2026-03-04T05:06:07Z"' in query[1]
    assert "gcloud logging read 'resource.type=\"cloud_run_revision\" AND " in query[1]
    assert "--project=podium-local" in query[1]
    assert json.loads(query_json[1])["query"].splitlines()[1] == 'resource.labels.service_name="publisher"'

    # --follow prints what the service writes next
    follow = subprocess.Popen([*CLI, "logs", "logs-1", "publisher", "--follow"], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(follow.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        wait_for(lambda: "tick 1\n" in seen, 30, "the log so far")
        with publisher.open("a") as fh:
            fh.write("tick 2\n")
        wait_for(lambda: "tick 2\n" in seen, 30, "the new line")
    finally:
        follow.terminate()
        follow.wait(10)
