"""The local deploy backend against the real Firestore emulator, with real processes.

Artifacts are built here (not by the build handler) the way the build writes them: a tar.gz of
the service folder, paths relative to it, named ``<service>-<sha256 of the bytes>.tar.gz`` under
``<state_dir>/artifacts``. The subscriber is given a ``resources.yaml`` naming a subscription
that does not exist: it retries quietly and still answers ``/healthz``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import tarfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from google.cloud import firestore

import handlers.deploy.local as deploy_local_module
from daemon.config import Settings
from handlers.base import EffectContext, Outcome
from handlers.deploy import registry as registry_module
from handlers.deploy.local import (
    FIRST_WAIT_SECONDS,
    deploy_local,
    list_processes,
    secret_env_name,
    stop_all,
    stop_run_local,
)
from handlers.deploy.registry import COLLECTION, ProcessRegistry, fingerprint, is_alive
from machines.architecture import load_architecture
from machines.errors import HandlerError, NotReady
from machines.hydration import hydrate
from machines.messages import RunView

TESTDATA = Path(__file__).resolve().parents[2] / "testdata"

ARCHITECTURE = """
name: deploy-test
project_id: {project}
region: europe-west1
service_manager_spec:
  name: director
  service_account: director-sa
  deployment: {{source_path: ., buildable_module_path: director}}
dataflows:
  tracer:
    services:
      subscriber:
        name: subscriber
        service_account: subscriber-sa
        deployment:
          source_path: .
          buildable_module_path: subscriber
          environment_vars: {{GREETING: hello}}
      crasher:
        name: crasher
        service_account: crasher-sa
        deployment: {{source_path: ., buildable_module_path: crasher}}
      echo:
        name: echo
        service_account: echo-sa
        deployment:
          source_path: .
          buildable_module_path: echo
          environment_vars: {{GREETING: hello}}
          secret_environment_vars:
            - {{name: API_TOKEN, value_from: "api-token-{unique}"}}
            - {{name: DB_PASSWORD, value_from: "db.password-{unique}"}}
      leaker:
        name: leaker
        service_account: leaker-sa
        deployment:
          source_path: .
          buildable_module_path: leaker
          secret_environment_vars:
            - {{name: API_TOKEN, value_from: "api-token-{unique}"}}
"""

# Prints its own secret, and another it could only know from the daemon, then dies.
LEAKER_MAIN = """\
import os, sys
print("leaker: my token is", os.environ.get("API_TOKEN"), flush=True)
print("leaker: a daemon secret seen elsewhere: other-service-secret-value", flush=True)
sys.exit(3)
"""

# Lives past the deploy's first wait (FIRST_WAIT_SECONDS), so the first call finds it alive and a
# re-check finds it dead.
CRASHER_MAIN = """\
import sys, time
print("crasher: boom, the configuration is unusable", flush=True)
time.sleep(FIRST_WAIT + 0.5)
sys.exit(3)
""".replace("FIRST_WAIT", str(FIRST_WAIT_SECONDS))

# Exits at once: the deploy's first call sees it die.
QUICK_CRASHER_MAIN = """\
import sys
print("crasher: gone at once", flush=True)
sys.exit(4)
"""

# Answers /healthz with 200 after sleeping DELAY seconds.
LATE_SERVER_MAIN = """\
import os, time
from http.server import BaseHTTPRequestHandler, HTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

time.sleep(DELAY)
HTTPServer((os.environ["HOST"], int(os.environ["PORT"])), Handler).serve_forever()
"""

# Answers /healthz with the variables it was given (only in tests: never echo a real secret).
ECHO_MAIN = """\
import json, os
from http.server import BaseHTTPRequestHandler, HTTPServer

NAMES = ["PORT", "HOST", "PROJECT_ID", "SERVICE_NAME", "DATAFLOW_NAME", "GREETING", "API_TOKEN",
         "DB_PASSWORD", "PUBSUB_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST"]

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if os.path.exists(f"unhealthy-{os.getpid()}"):  # a test's switch
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        env = {n: os.environ.get(n) for n in NAMES}
        env["podium_vars"] = sorted(k for k in os.environ if k.startswith("PODIUM_"))
        env["all_names"] = sorted(os.environ)
        body = json.dumps(env).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

HTTPServer((os.environ["HOST"], int(os.environ["PORT"])), Handler).serve_forever()
"""


# --------------------------------------------------------------------------- helpers


def write_artifact(state_dir: Path, service: str, folder: Path) -> str:
    """A deterministic tar.gz of ``folder`` as the build stores it; returns the local image."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(
            p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts
        ):
            data = path.read_bytes()
            info = tarfile.TarInfo(path.relative_to(folder).as_posix())
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
        gz.write(raw.getvalue())
    blob = buf.getvalue()
    digest = hashlib.sha256(blob).hexdigest()
    artifacts = state_dir / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    (artifacts / f"{service}-{digest}.tar.gz").write_bytes(blob)
    return f"local://{service}@sha256:{digest}"


def subscriber_folder(root: Path, unique: str, marker: str = "") -> Path:
    folder = root / f"subscriber-src-{marker or 'a'}"
    shutil.copytree(
        TESTDATA / "subscriber",
        folder,
        ignore=shutil.ignore_patterns("__pycache__", "tests", "resources.yaml"),
    )
    resources = {
        "subscriptions": [
            {
                "name": f"absent-sub-{unique}",
                "topic": f"absent-topic-{unique}",
                "consumer_service": {
                    "name": "subscriber",
                    "lookup": {"key": "tracer-subscription-id", "method": "yaml"},
                },
            }
        ]
    }
    (folder / "resources.yaml").write_text(yaml.safe_dump(resources))
    if marker:  # a different image of the same service
        (folder / "VERSION").write_text(marker)
    return folder


def single_file_folder(root: Path, name: str, main: str) -> Path:
    folder = root / f"{name}-src"
    folder.mkdir()
    (folder / "main.py").write_text(main)
    return folder


def processes_under(path: Path) -> list[int]:
    """Pids of the live (non-zombie) processes whose cwd is under ``path``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and cwd.startswith(str(path)):
            pids.append(int(entry.name))
    return sorted(pids)


def pid_alive(pid: int) -> bool:
    fp = fingerprint(pid)
    return fp is not None and is_alive(pid, fp)


class Deployer:
    """Builds effect contexts for the test architecture and drives ``deploy_local`` the way the
    effect runner does: NotReady → call again after ``retry_after``."""

    def __init__(
        self, settings: Settings, project: str, unique: str, registry: ProcessRegistry
    ) -> None:
        self.settings = settings
        self.registry = registry
        arch = hydrate(
            load_architecture(ARCHITECTURE.format(project=project, unique=unique), "test")
        )
        self.architecture = arch.to_dict()
        self.not_ready = 0
        self.seen_pids: set[int] = set()

    def ctx(self, service: str, image: str, run_id: str = "run-1") -> EffectContext:
        run = {
            "run_id": run_id,
            "architecture": self.architecture,
            "outputs": {"images": {service: image}},
        }
        return EffectContext(
            run_id=run_id,
            effect_id=f"deploy-{service}",
            kind="deploy",
            item=service,
            params={},
            attempt=0,
            run=RunView.model_validate(run),
            settings=self.settings,
        )

    def deploy(
        self,
        service: str,
        image: str,
        *,
        registry: ProcessRegistry | None = None,
        timeout: float = 40.0,
        run_id: str = "run-1",
    ) -> Outcome:
        reg = registry or self.registry
        ctx = self.ctx(service, image, run_id=run_id)
        deadline = time.monotonic() + timeout
        while True:
            try:
                outcomes: Sequence[Outcome] = deploy_local(ctx, reg)
            except NotReady as exc:
                self._remember(reg, service)
                self.not_ready += 1
                if time.monotonic() > deadline:
                    raise
                time.sleep(exc.retry_after)
                continue
            except HandlerError:
                self._remember(reg, service)
                raise
            assert len(outcomes) == 1
            self.seen_pids.add(int(outcomes[0].data["pid"]))
            return outcomes[0]

    def _remember(self, reg: ProcessRegistry, service: str) -> None:
        record, _ = reg.get(self.settings.project, service)
        if record is not None:
            self.seen_pids.add(record.pid)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def settings(tmp_path: Path, project: str) -> Settings:
    return Settings(project=project, state_dir=tmp_path / "state", source_root=tmp_path)


@pytest.fixture
def registry(firestore_client: firestore.Client) -> ProcessRegistry:
    return ProcessRegistry(firestore_client)


@pytest.fixture
def deployer(
    settings: Settings, project: str, unique: str, registry: ProcessRegistry
) -> Iterator[Deployer]:
    d = Deployer(settings, project, unique, registry)
    yield d
    # Never leave a process behind, whatever the test did.
    stop_all(settings, project, registry=registry)
    for pid in d.seen_pids | set(processes_under(settings.state_dir)):
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while processes_under(settings.state_dir) and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.fixture
def subscriber_image(settings: Settings, tmp_path: Path, unique: str) -> str:
    return write_artifact(settings.state_dir, "subscriber", subscriber_folder(tmp_path, unique))


def healthz(url: str) -> requests.Response:
    return requests.get(f"{url}/healthz", timeout=2)


# --------------------------------------------------------------------------- tests


def test_deploy_serves_healthz_and_redeploy_adopts(
    deployer: Deployer,
    settings: Settings,
    subscriber_image: str,
    registry: ProcessRegistry,
    project: str,
) -> None:
    first = deployer.deploy("subscriber", subscriber_image)
    assert first.type == "deploy.succeeded" and first.item == "subscriber"
    url, pid = first.data["url"], first.data["pid"]
    assert url.startswith("http://127.0.0.1:")
    response = healthz(url)
    assert response.status_code == 200 and response.json()["service"] == "subscriber"

    digest = subscriber_image.rsplit(":", 1)[1]
    workdir = settings.state_dir / "deploy" / "subscriber" / digest
    assert (workdir / "main.py").is_file() and (workdir / "resources.yaml").is_file()
    assert (settings.state_dir / "logs" / "subscriber.log").is_file()

    record, _ = registry.get(project, "subscriber")
    assert (
        record is not None
        and record.pid == pid
        and record.image == subscriber_image
        and record.url == url
    )
    assert record.run_id == "run-1" and record.fingerprint == fingerprint(pid)

    again = deployer.deploy("subscriber", subscriber_image)
    assert again.data == first.data  # adopted: same pid, same url
    assert processes_under(settings.state_dir) == [pid]
    assert [p["service"] for p in list_processes(settings, project, registry=registry)] == [
        "subscriber"
    ]
    assert list_processes(settings, project, registry=registry)[0]["alive"] is True


def test_new_image_replaces_the_process(
    deployer: Deployer,
    settings: Settings,
    subscriber_image: str,
    tmp_path: Path,
    unique: str,
    registry: ProcessRegistry,
    project: str,
) -> None:
    old = deployer.deploy("subscriber", subscriber_image)
    new_image = write_artifact(
        settings.state_dir, "subscriber", subscriber_folder(tmp_path, unique, marker="b")
    )
    assert new_image != subscriber_image

    new = deployer.deploy("subscriber", new_image)
    assert new.data["pid"] != old.data["pid"]
    assert not pid_alive(old.data["pid"])
    assert healthz(new.data["url"]).status_code == 200
    assert processes_under(settings.state_dir) == [new.data["pid"]]
    record, _ = registry.get(project, "subscriber")
    assert record is not None and record.image == new_image and record.pid == new.data["pid"]


def test_a_dead_process_is_replaced(
    deployer: Deployer, settings: Settings, subscriber_image: str
) -> None:
    old = deployer.deploy("subscriber", subscriber_image)
    os.killpg(old.data["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pid_alive(old.data["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)

    new = deployer.deploy("subscriber", subscriber_image)
    assert new.data["pid"] != old.data["pid"]
    assert healthz(new.data["url"]).status_code == 200
    assert processes_under(settings.state_dir) == [new.data["pid"]]


def test_a_restarted_daemon_adopts_instead_of_duplicating(
    deployer: Deployer, settings: Settings, subscriber_image: str, project: str
) -> None:
    first = deployer.deploy("subscriber", subscriber_image)
    # A new daemon: its own Firestore client and registry, no Popen handles of the old one.
    registry_module._CHILDREN.clear()
    client = firestore.Client(project=project)
    try:
        fresh = ProcessRegistry(client)
        again = deployer.deploy("subscriber", subscriber_image, registry=fresh)
    finally:
        client.close()
    assert again.data == first.data
    assert processes_under(settings.state_dir) == [first.data["pid"]]


def test_a_service_that_exits_fails_with_its_log_tail(
    deployer: Deployer, settings: Settings, tmp_path: Path, registry: ProcessRegistry, project: str
) -> None:
    image = write_artifact(
        settings.state_dir, "crasher", single_file_folder(tmp_path, "crasher", CRASHER_MAIN)
    )
    with pytest.raises(HandlerError) as failed:
        deployer.deploy("crasher", image)
    assert failed.value.retryable is False
    assert "crasher" in failed.value.message
    assert "boom, the configuration is unusable" in failed.value.message
    assert deployer.not_ready >= 1  # it was alive at first: the re-check reported, not restarted
    assert len(deployer.seen_pids) == 1
    assert registry.get(project, "crasher")[0] is None  # nothing left to adopt


def test_a_service_that_exits_at_once_fails_in_the_first_call(
    deployer: Deployer, settings: Settings, tmp_path: Path, registry: ProcessRegistry, project: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(deploy_local_module, "FIRST_WAIT_SECONDS", 20.0)  # its exit ends the wait
    image = write_artifact(
        settings.state_dir, "crasher", single_file_folder(tmp_path, "quick", QUICK_CRASHER_MAIN)
    )
    started = time.monotonic()
    with pytest.raises(HandlerError) as failed:
        deployer.deploy("crasher", image)
    assert time.monotonic() - started < 10.0
    assert "gone at once" in failed.value.message
    assert deployer.not_ready == 0  # the first call waited for it and saw it exit
    assert registry.get(project, "crasher")[0] is None


def test_a_service_that_answers_within_the_first_wait_is_deployed_in_one_call(
    deployer: Deployer, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deploy_local_module, "FIRST_WAIT_SECONDS", 20.0)  # its answer ends the wait
    main = LATE_SERVER_MAIN.replace("DELAY", "0")
    image = write_artifact(settings.state_dir, "crasher", single_file_folder(tmp_path, "prompt", main))
    started = time.monotonic()
    done = deployer.deploy("crasher", image)
    assert done.type == "deploy.succeeded"
    assert deployer.not_ready == 0  # no trip through the effect runner per health check
    assert time.monotonic() - started < 10.0
    assert healthz(done.data["url"]).status_code == 200


def test_a_service_slower_than_the_first_wait_is_rechecked_until_it_answers(
    deployer: Deployer, settings: Settings, tmp_path: Path
) -> None:
    main = LATE_SERVER_MAIN.replace("DELAY", str(FIRST_WAIT_SECONDS + 0.5))
    image = write_artifact(settings.state_dir, "crasher", single_file_folder(tmp_path, "late", main))
    done = deployer.deploy("crasher", image)
    assert done.type == "deploy.succeeded"
    assert deployer.not_ready >= 1  # the first call handed it back as NotReady after its wait
    assert len(deployer.seen_pids) == 1  # the re-checks adopted the same process


def test_a_missing_secret_fails_naming_it(
    deployer: Deployer,
    settings: Settings,
    tmp_path: Path,
    unique: str,
    registry: ProcessRegistry,
    project: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(secret_env_name(f"db.password-{unique}"), "not-the-missing-one")
    image = write_artifact(
        settings.state_dir, "echo", single_file_folder(tmp_path, "echo", ECHO_MAIN)
    )
    with pytest.raises(HandlerError) as failed:
        deployer.deploy("echo", image)
    assert failed.value.retryable is False
    assert f"api-token-{unique}" in failed.value.message and "API_TOKEN" in failed.value.message
    assert "not-the-missing-one" not in failed.value.message
    assert registry.get(project, "echo")[0] is None
    assert processes_under(settings.state_dir) == []


def test_environment_and_secrets_reach_only_the_process(
    deployer: Deployer,
    settings: Settings,
    tmp_path: Path,
    unique: str,
    firestore_client: firestore.Client,
    project: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token, password = f"tok-{unique}", f"pw-{unique}"
    monkeypatch.setenv(secret_env_name(f"api-token-{unique}"), token)
    assert secret_env_name(f"api-token-{unique}") == f"PODIUM_SECRET_API_TOKEN_{unique.upper()}"
    secrets = settings.state_dir / "secrets"
    secrets.mkdir(parents=True)
    (secrets / f"db.password-{unique}").write_text(password + "\n")
    image = write_artifact(
        settings.state_dir, "echo", single_file_folder(tmp_path, "echo", ECHO_MAIN)
    )

    outcome = deployer.deploy("echo", image)
    env: dict[str, Any] = healthz(outcome.data["url"]).json()
    port = outcome.data["url"].rsplit(":", 1)[1]
    assert env["PORT"] == port and env["HOST"] == "127.0.0.1"
    assert (
        env["PROJECT_ID"] == project
        and env["SERVICE_NAME"] == "echo"
        and env["DATAFLOW_NAME"] == "tracer"
    )
    assert env["GREETING"] == "hello"
    assert env["API_TOKEN"] == token and env["DB_PASSWORD"] == password
    assert env["PUBSUB_EMULATOR_HOST"] == os.environ["PUBSUB_EMULATOR_HOST"]
    assert env["FIRESTORE_EMULATOR_HOST"] == os.environ["FIRESTORE_EMULATOR_HOST"]
    assert env["podium_vars"] == []  # the daemon's PODIUM_* (its secrets included) stay home

    stored = json.dumps(
        [d.to_dict() for d in firestore_client.collection(COLLECTION).stream()], default=str
    )
    assert token not in stored and password not in stored
    log = (settings.state_dir / "logs" / "echo.log").read_text()
    assert token not in log and password not in log


# What a local service may see beyond its own variables (handlers.secrets.child_env).
MINIMAL_NAMES = {"PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "PUBSUB_EMULATOR_HOST",
                 "FIRESTORE_EMULATOR_HOST", "STORAGE_EMULATOR_HOST", "DATASTORE_EMULATOR_HOST",
                 "BIGTABLE_EMULATOR_HOST", "SPANNER_EMULATOR_HOST"}
OWN_NAMES = {"PORT", "HOST", "PYTHONUNBUFFERED", "PROJECT_ID", "SERVICE_NAME", "DATAFLOW_NAME", "GREETING",
             "API_TOKEN", "DB_PASSWORD", "LOCAL_BIGQUERY_DIR"}


def test_the_process_environment_is_only_the_minimal_set(
    deployer: Deployer,
    settings: Settings,
    tmp_path: Path,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(secret_env_name(f"api-token-{unique}"), "tok-minimal")
    monkeypatch.setenv(secret_env_name(f"db.password-{unique}"), "pw-minimal")
    monkeypatch.setenv("PODIUM_SECRET_SOMEONE_ELSES", "someone-elses-secret")
    monkeypatch.setenv("UNRELATED_DAEMON_VARIABLE", "daemon-only")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/daemon/credentials.json")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    image = write_artifact(settings.state_dir, "echo", single_file_folder(tmp_path, "echo", ECHO_MAIN))

    outcome = deployer.deploy("echo", image)
    names = set(healthz(outcome.data["url"]).json()["all_names"])

    extra = names - MINIMAL_NAMES - OWN_NAMES - {n for n in names if n.startswith("LC_")}
    # The interpreter may add a few of its own (e.g. LC_CTYPE on a C locale): nothing of the daemon's.
    assert not extra, f"the daemon's environment leaked into the service: {sorted(extra)}"
    assert "LC_ALL" in names and "API_TOKEN" in names and "DB_PASSWORD" in names


def test_a_secret_printed_by_a_failing_service_is_redacted_in_the_error(
    deployer: Deployer,
    settings: Settings,
    tmp_path: Path,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = f"leaked-token-{unique}"
    monkeypatch.setenv(secret_env_name(f"api-token-{unique}"), token)
    monkeypatch.setenv("PODIUM_SECRET_OTHER_SERVICE", "other-service-secret-value")
    image = write_artifact(settings.state_dir, "leaker", single_file_folder(tmp_path, "leaker", LEAKER_MAIN))

    with pytest.raises(HandlerError) as failed:
        deployer.deploy("leaker", image)

    message = failed.value.message
    assert "leaker: my token is ***" in message, message
    assert "a daemon secret seen elsewhere: ***" in message, message
    assert token not in message and "other-service-secret-value" not in message


def test_a_process_that_stopped_answering_is_restarted(
    deployer: Deployer,
    settings: Settings,
    tmp_path: Path,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(secret_env_name(f"api-token-{unique}"), "t")
    monkeypatch.setenv(secret_env_name(f"db.password-{unique}"), "p")
    image = write_artifact(
        settings.state_dir, "echo", single_file_folder(tmp_path, "echo", ECHO_MAIN)
    )
    first = deployer.deploy("echo", image)
    workdir = settings.state_dir / "deploy" / "echo" / image.rsplit(":", 1)[1]
    (workdir / f"unhealthy-{first.data['pid']}").touch()
    assert healthz(first.data["url"]).status_code == 503

    second = deployer.deploy("echo", image)
    assert second.data["pid"] != first.data["pid"]
    assert not pid_alive(first.data["pid"])
    assert healthz(second.data["url"]).status_code == 200
    assert processes_under(settings.state_dir) == [second.data["pid"]]


def test_stop_all_leaves_no_process(
    deployer: Deployer,
    settings: Settings,
    subscriber_image: str,
    tmp_path: Path,
    registry: ProcessRegistry,
    project: str,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(secret_env_name(f"api-token-{unique}"), "t")
    monkeypatch.setenv(secret_env_name(f"db.password-{unique}"), "p")
    echo_image = write_artifact(
        settings.state_dir, "echo", single_file_folder(tmp_path, "echo", ECHO_MAIN)
    )
    pids = [
        deployer.deploy("subscriber", subscriber_image).data["pid"],
        deployer.deploy("echo", echo_image).data["pid"],
    ]
    assert processes_under(settings.state_dir) == sorted(pids)

    assert stop_all(settings, project, registry=registry) == ["echo", "subscriber"]
    assert processes_under(settings.state_dir) == []
    assert not any(pid_alive(p) for p in pids)
    assert list_processes(settings, project, registry=registry) == []
    assert stop_all(settings, project, registry=registry) == []


def test_a_cancelled_runs_stop_ends_only_the_processes_it_started_before_the_cancel(
    deployer: Deployer,
    settings: Settings,
    subscriber_image: str,
    tmp_path: Path,
    registry: ProcessRegistry,
    project: str,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 14: cancel stops work. ``stop`` (the cancel's effect) ends the cancelled run's own
    processes; another run's process, and one its retry started after the cancel, stay."""
    monkeypatch.setenv(secret_env_name(f"api-token-{unique}"), "t")
    monkeypatch.setenv(secret_env_name(f"db.password-{unique}"), "p")
    echo_image = write_artifact(settings.state_dir, "echo", single_file_folder(tmp_path, "echo", ECHO_MAIN))
    ours = deployer.deploy("subscriber", subscriber_image).data["pid"]  # run-1
    theirs = deployer.deploy("echo", echo_image, run_id="run-2").data["pid"]  # deployed by another run

    def stop(cancelled_at: datetime) -> list[str]:
        stop_ctx = dataclasses.replace(deployer.ctx("subscriber", subscriber_image), kind="stop", item="run",
                                       effect_id="stop:run:a0", params={"cancelled_at": cancelled_at.isoformat()})
        (outcome,) = stop_run_local(stop_ctx, registry=registry)
        assert outcome.type == "stop.succeeded"
        return list(outcome.data["stopped"])

    assert stop(datetime(2000, 1, 1, tzinfo=UTC)) == []  # started after that "cancel": a retry's
    assert stop(datetime.now(UTC)) == ["subscriber"]
    assert not pid_alive(ours) and pid_alive(theirs)
    assert [p["service"] for p in list_processes(settings, project, registry=registry)] == ["echo"]


def test_registry_write_is_conditional(
    registry: ProcessRegistry, deployer: Deployer, subscriber_image: str, project: str
) -> None:
    """Two deployers racing on one service: the second write loses instead of overwriting."""
    deployer.deploy("subscriber", subscriber_image)
    record, seen = registry.get(project, "subscriber")
    assert record is not None
    assert registry.replace(record, None) is False  # it exists: create() loses
    theirs = dataclasses.replace(record, run_id="run-2")
    assert registry.replace(theirs, seen) is True
    ours = dataclasses.replace(record, run_id="run-3")
    assert registry.replace(ours, seen) is False  # the document changed since `seen`
    assert registry.get(project, "subscriber")[0] == theirs
