"""The ``local`` deploy backend: each service is a supervised process on this machine.

``deploy_local(ctx)`` (effect kind ``deploy``, ``ctx.item`` = the service; the director first):

1. The build's artifact ``<state_dir>/artifacts/<service>-<digest>.tar.gz`` (image
   ``local://<service>@sha256:<digest>``) is checked against its digest and extracted once into
   ``<state_dir>/deploy/<service>/<digest>/`` (atomically: a half-extracted folder never counts).
2. The registry (:mod:`handlers.deploy.registry`) is asked who serves the service. A live process
   (same pid *and* same start-time fingerprint) with the same image and configuration is
   adopted: redoing a deploy, or a restarted daemon, never starts a second copy. A live process
   of an older image or configuration is stopped (SIGTERM to its process group, SIGKILL after
   5 s); a dead one is replaced, except the one this very deploy started that died before it
   was ever healthy: that is the deploy's failure, reported with its log tail.
3. A new process is ``sys.executable main.py`` in that folder, in its own session (so it survives
   the daemon being killed with SIGKILL), output appended to ``<state_dir>/logs/<service>.log``,
   with ``PORT`` (a free loopback port), ``HOST=127.0.0.1``, ``PROJECT_ID``, ``SERVICE_NAME``,
   ``DATAFLOW_NAME``, ``LOCAL_BIGQUERY_DIR`` (``<state_dir>/bigquery``: local BigQuery
   datasets as SQLite files), the deployment's ``environment_vars`` and its own resolved secrets, on top
   of a minimal environment (``handlers.secrets.child_env``: PATH, HOME, locale, TMPDIR, the
   emulator switches). Nothing else of the daemon's environment reaches it.
4. Health: ``GET /healthz`` must answer 200. The deploy that started the process asks every
   20 ms until it is 1 s old (most answer by then: no trip through the engine per check; the
   only wait inside a handler here, bounded and cancellable, and a crash during it loses
   nothing: the effect's lease runs out and the re-drive adopts the process). Until it answers,
   a live process younger than 30 s raises ``NotReady`` (the effect runner calls again in 0.1 s
   for its first 3 s, then every 0.5 s, which adopts the same process and re-checks). A process
   that exited, or is still unhealthy after 30 s, fails the deploy with the service's log tail.

Secrets (DESIGN.md §9): ``secret_environment_vars: [{name, value_from}]`` are resolved when the
process starts, from the daemon's variable ``PODIUM_SECRET_<VALUE_FROM>`` (upper case, every
character that is not a letter or digit replaced by ``_``) or else from the file
``<state_dir>/secrets/<value_from>``. A value reaches only the child's environment: never the
registry, a log line, an event or an error message (those name the secret, never its value; a
service's log tail in an error is redacted of every secret value the daemon knows).

``stop_all(settings, project)`` is ``podium down``'s engine; ``list_processes`` shows the registry.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import requests
from google.cloud import firestore

from handlers.base import EffectContext, Outcome
from handlers.deploy.registry import (
    ProcessRecord,
    ProcessRegistry,
    fingerprint,
    is_alive,
    remember_child,
    stop_process,
)
from handlers.secrets import (
    child_env,
    known_secret_values,
    redact,
    resolve_secrets,
    secret_env_name,
    service_env,
)
from handlers.settings import HandlerSettings
from machines.architecture import DeploymentSpec
from machines.errors import HandlerError, NotReady

__all__ = [
    "HEALTH_GRACE_SECONDS",
    "deploy_local",
    "list_processes",
    "parse_local_image",
    "registry_for",
    "resolve_secrets",
    "secret_env_name",
    "service_env",
    "stop_all",
]

HEALTH_GRACE_SECONDS = 30.0
RECHECK_SECONDS = 0.5
# A local process usually answers within a second of its start: check often until then (a
# check is one local HTTP request), then every RECHECK_SECONDS.
EARLY_RECHECK_SECONDS, EARLY_SECONDS = 0.1, 3.0
# The deploy that starts a process waits here for its first answer, up to this age, asking every
# FIRST_POLL_SECONDS: most processes answer well within it, and each re-check through the engine
# (a lease write, a claim transaction) costs more than the wait. Slower ones go on as NotReady.
FIRST_WAIT_SECONDS, FIRST_POLL_SECONDS = 1.0, 0.02
HEALTH_TIMEOUT_SECONDS = 1.0
LOG_TAIL_CHARS = 2000
LOCAL_BIGQUERY_ENV = "LOCAL_BIGQUERY_DIR"

_LOCAL_IMAGE = re.compile(r"^local://(?P<service>[^@/\s]+)@sha256:(?P<digest>[0-9a-f]{12,128})$")


@cache
def registry_for(project: str) -> ProcessRegistry:
    """The registry in the daemon's own Firestore database (``settings.project``)."""
    return ProcessRegistry(firestore.Client(project=project))


# ---- the handler ----------------------------------------------------------------------------


def deploy_local(ctx: EffectContext, registry: ProcessRegistry | None = None) -> Sequence[Outcome]:
    arch = ctx.architecture
    service, dataflow, spec = ctx.target()
    if spec.deployment is None:
        raise HandlerError(f"deploy: service {service!r} has no deployment", retryable=False)
    deployment = spec.deployment
    project = arch.project_id or ctx.settings.project
    image = (ctx.outputs.get("images") or {}).get(service)
    if not image:
        raise HandlerError(f"deploy: no image was built for {service!r}", retryable=False)
    digest = parse_local_image(str(image), service)
    state_dir = Path(ctx.settings.state_dir)

    plain_env = service_env(deployment, project=project, service=service, dataflow=dataflow)
    # Local BigQuery: SQLite files the director creates and the services read and write.
    plain_env.setdefault(LOCAL_BIGQUERY_ENV, str(state_dir / "bigquery"))
    secrets = resolve_secrets(deployment, state_dir, service)  # fails early, naming a missing one
    hidden = [*secrets.values(), *known_secret_values(state_dir)]  # kept out of error messages
    config_hash = _config_hash(str(image), plain_env, deployment)

    reg = registry or registry_for(ctx.settings.project)
    current, update_time = reg.get(project, service)
    if current is not None:
        same = current.image == image and current.config_hash == config_hash
        if is_alive(current.pid, current.fingerprint):
            if same and (not current.healthy or _healthy(current.port)):
                return _check_health(reg, current, hidden)  # adopt: no second process
            # An older image or configuration, or one that was healthy and no longer is
            # (a supervisor restarts it rather than failing the run over it).
            stop_process(current.pid, current.fingerprint)
        elif (
            same
            and not current.healthy
            and (current.run_id, current.effect_id) == (ctx.run_id, ctx.effect_id)
        ):
            # This very deploy started it and it died before it was ever healthy: that is the
            # deploy's failure (with the log tail), not a process to replace behind its back.
            return _check_health(reg, current, hidden)
        # else: dead (a reboot, a crash after it was healthy, another run's): replaced below

    workdir = extract_artifact(state_dir, service, digest)
    record = _start(
        state_dir=state_dir,
        project=project,
        service=service,
        image=str(image),
        run_id=ctx.run_id,
        effect_id=ctx.effect_id,
        workdir=workdir,
        env={**plain_env, **secrets},
        config_hash=config_hash,
    )
    if not reg.replace(record, update_time):
        # Someone else (another replica, a concurrent run) registered a process meanwhile:
        # keep theirs, stop ours, and re-check (which adopts theirs or replaces it).
        stop_process(record.pid, record.fingerprint)
        raise NotReady(
            f"{service}: another deployer registered a process meanwhile",
            retry_after=RECHECK_SECONDS,
        )
    _await_first_answer(record, ctx.cancelled)
    return _check_health(reg, record, hidden)


def _await_first_answer(record: ProcessRecord, cancelled: threading.Event) -> None:
    """Wait until the process just started answers, exits or is ``FIRST_WAIT_SECONDS`` old
    (or the effect is cancelled); ``_check_health`` then says which. Bounded on the monotonic
    clock, each probe included."""
    deadline = time.monotonic() + FIRST_WAIT_SECONDS - record.age_seconds()
    while is_alive(record.pid, record.fingerprint):
        left = deadline - time.monotonic()
        if left <= 0 or _healthy(record.port, timeout=min(HEALTH_TIMEOUT_SECONDS, left)):
            return
        if cancelled.wait(min(FIRST_POLL_SECONDS, max(0.0, deadline - time.monotonic()))):
            return


def _check_health(reg: ProcessRegistry, record: ProcessRecord, hidden: Sequence[str]) -> Sequence[Outcome]:
    """``hidden``: the secret values to redact from a log tail put in an error message."""
    # Liveness first: a dead process's port may already serve somebody else.
    if is_alive(record.pid, record.fingerprint) and _healthy(record.port):
        if not record.healthy:
            reg.mark_healthy(record)
        return [Outcome("deploy.succeeded", record.service, {"url": record.url, "pid": record.pid})]
    if not is_alive(record.pid, record.fingerprint):
        tail = safe_log_tail(record, hidden)
        reg.delete(record.project, record.service, pid=record.pid)
        # Two processes can race for a free port between our probe and its bind: worth a retry.
        retryable = "Address already in use" in tail
        raise HandlerError(
            f"service {record.service} exited before answering GET /healthz (log {record.log_path}):\n{tail}",
            retryable=retryable,
        )
    age = record.age_seconds()
    if age < HEALTH_GRACE_SECONDS:
        raise NotReady(
            f"{record.service} (pid {record.pid}) does not answer GET /healthz with 200 yet ({age:.1f} s)",
            retry_after=EARLY_RECHECK_SECONDS if age < EARLY_SECONDS else RECHECK_SECONDS,
        )
    stop_process(record.pid, record.fingerprint)
    reg.delete(record.project, record.service, pid=record.pid)
    raise HandlerError(
        f"service {record.service} did not answer GET /healthz with 200 within {HEALTH_GRACE_SECONDS:.0f} s; "
        f"stopped it (log {record.log_path}):\n{safe_log_tail(record, hidden)}",
        retryable=False,
    )


def _healthy(port: int, timeout: float = HEALTH_TIMEOUT_SECONDS) -> bool:
    try:
        response = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=timeout)
    except requests.RequestException:
        return False
    return response.status_code == 200


# ---- images and artifacts -------------------------------------------------------------------


def parse_local_image(image: str, service: str) -> str:
    """The digest of ``local://<service>@sha256:<digest>`` (the image must be this service's)."""
    match = _LOCAL_IMAGE.match(image)
    if not match:
        raise HandlerError(
            f"deploy: {service}'s image {image!r} is not a local image (local://<service>@sha256:<digest>)",
            retryable=False,
        )
    if match["service"] != service:
        raise HandlerError(
            f"deploy: image {image!r} belongs to {match['service']!r}, not {service!r}",
            retryable=False,
        )
    return match["digest"]


def extract_artifact(state_dir: Path, service: str, digest: str) -> Path:
    """``<state_dir>/deploy/<service>/<digest>/``, extracted once from the build's artifact."""
    target = state_dir / "deploy" / service / digest
    if target.is_dir():
        return target
    artifact = state_dir / "artifacts" / f"{service}-{digest}.tar.gz"
    if not artifact.is_file():
        raise HandlerError(
            f"deploy: {service}'s artifact {artifact} does not exist (was it built here?)",
            retryable=False,
        )
    actual = _sha256_file(artifact)
    if actual != digest:
        raise HandlerError(
            f"deploy: {service}'s artifact {artifact} has sha256 {actual}, not the image's {digest}",
            retryable=False,
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{digest}.{uuid.uuid4().hex[:8]}.partial"
    try:
        with tarfile.open(artifact, "r:gz") as tar:
            tar.extractall(staging, filter="data")
        try:
            os.rename(staging, target)
        except OSError:  # extracted concurrently by someone else: theirs is the same bytes
            if not target.is_dir():
                raise
    except (OSError, tarfile.TarError) as exc:
        raise HandlerError(f"deploy: cannot extract {artifact}: {exc}", retryable=False) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---- environment and secrets ----------------------------------------------------------------


def _config_hash(image: str, plain_env: Mapping[str, str], deployment: DeploymentSpec) -> str:
    """What a process was started with, minus anything secret: a change means a restart."""
    doc = {
        "image": image,
        "env": dict(sorted(plain_env.items())),
        "secrets": sorted((s.name, s.value_from) for s in deployment.secret_environment_vars),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


# ---- processes ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(
    *,
    state_dir: Path,
    project: str,
    service: str,
    image: str,
    run_id: str,
    effect_id: str,
    workdir: Path,
    env: Mapping[str, str],
    config_hash: str,
) -> ProcessRecord:
    port = _free_port()
    process_env = child_env({**env, "PORT": str(port), "HOST": "127.0.0.1", "PYTHONUNBUFFERED": "1"})
    log_path = state_dir / "logs" / f"{service}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started_at = datetime.now(UTC)
    with log_path.open("ab") as log:
        offset = log.tell()
        log.write(
            f"--- podium: starting {service} ({image}) for run {run_id} on port {port} "
            f"at {started_at.isoformat()} ---\n".encode()
        )
        log.flush()
        try:
            proc = subprocess.Popen(
                [sys.executable, "main.py"],
                cwd=workdir,
                env=process_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise HandlerError(
                f"deploy: cannot start {service} in {workdir}: {exc}", retryable=False
            ) from exc
    remember_child(proc)
    return ProcessRecord(
        project=project,
        service=service,
        pid=proc.pid,
        port=port,
        url=f"http://127.0.0.1:{port}",
        image=image,
        started_at=started_at,
        run_id=run_id,
        effect_id=effect_id,
        log_path=str(log_path),
        log_offset=offset,
        fingerprint=fingerprint(proc.pid) or "",
        workdir=str(workdir),
        config_hash=config_hash,
    )


def safe_log_tail(record: ProcessRecord, hidden: Sequence[str], chars: int = LOG_TAIL_CHARS) -> str:
    """``log_tail`` redacted of ``hidden`` (secret values), for an error message (stored in
    Firestore). Read with a margin, so a secret cut at the start of the tail is whole when it
    is redacted."""
    margin = max((len(v) for v in hidden), default=0)
    return redact(log_tail(record, chars + margin), hidden)[-chars:]


def log_tail(record: ProcessRecord, chars: int = LOG_TAIL_CHARS) -> str:
    """The end of what this process wrote (not earlier processes' output in the same file)."""
    try:
        with open(record.log_path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(record.log_offset, size - chars))
            return fh.read().decode(errors="replace").strip() or "(the log is empty)"
    except OSError as exc:
        return f"(cannot read {record.log_path}: {exc})"


# ---- podium down / status ------------------------------------------------------------------


def undeploy_local(ctx: EffectContext, registry: ProcessRegistry | None = None) -> Sequence[Outcome]:
    """The ``undeploy`` effect: stop the service's process and forget it (gone already is fine)."""
    service = ctx.item or ""
    project = ctx.architecture.project_id or ctx.settings.project
    reg = registry or registry_for(ctx.settings.project)
    current, _ = reg.get(project, service)
    if current is not None:
        stop_process(current.pid, current.fingerprint)
        reg.delete(project, service, pid=current.pid)
    return [Outcome("undeploy.succeeded", service, {"stopped": current is not None})]


def stop_run_local(ctx: EffectContext, registry: ProcessRegistry | None = None) -> Sequence[Outcome]:
    """The ``stop`` effect of a cancelled run: stop the processes this run started before it was
    cancelled (``params.cancelled_at``); processes of other runs, or started by a retry after
    the cancel, are left alone."""
    project = ctx.architecture.project_id or ctx.settings.project
    reg = registry or registry_for(ctx.settings.project)
    cancelled_at = datetime.fromisoformat(str(ctx.params["cancelled_at"]))
    stopped: list[str] = []
    for record in reg.for_project(project):
        if record.run_id == ctx.run_id and record.started_at <= cancelled_at:
            stop_process(record.pid, record.fingerprint)
            reg.delete(record.project, record.service, pid=record.pid)
            stopped.append(record.service)
    return [Outcome("stop.succeeded", ctx.item, {"stopped": sorted(stopped)})]


def stop_all(
    settings: HandlerSettings, project: str | None = None, registry: ProcessRegistry | None = None
) -> list[str]:
    """Stop every registered process of ``project`` (default: every project this daemon's
    registry knows) and delete its registry document. Returns the services stopped, sorted."""
    reg = registry or registry_for(settings.project)
    stopped: list[str] = []
    for record in reg.for_project(project):
        stop_process(record.pid, record.fingerprint)
        reg.delete(record.project, record.service)
        stopped.append(record.service)
    return sorted(stopped)


def list_processes(
    settings: HandlerSettings, project: str | None = None, registry: ProcessRegistry | None = None
) -> list[dict[str, Any]]:
    """The registry's records of ``project`` (default: every project), each with ``alive``."""
    reg = registry or registry_for(settings.project)
    return [
        {**record.to_dict(), "alive": is_alive(record.pid, record.fingerprint)}
        for record in reg.for_project(project)
    ]
