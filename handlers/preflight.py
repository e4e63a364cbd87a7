"""Preflight: run each service's own tests (``python -m pytest`` in its folder) before building it.

Each run is a subprocess in its own process group, so a hanging test (and anything it spawned)
is killed as a whole on timeout. The nested pytest gets a minimal environment
(``handlers.secrets.child_env``: PATH, HOME, locale, TMPDIR, the emulator switches) plus the
service's own declared variables and secrets: never the daemon's ``PODIUM_*`` settings, other
services' secrets, or a parent pytest's ``PYTEST_*``/``PYTHONPATH``. Its output is redacted of
every known secret value before the tail is kept (the tail is stored in Firestore).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from handlers.base import EffectContext, Outcome
from handlers.secrets import child_env, known_secret_values, redact, resolve_secrets, service_env

Reason = Literal["passed", "failed", "timeout", "no_tests", "missing_dir"]

OUTPUT_TAIL_CHARS = 4000
PYTEST_NO_TESTS_COLLECTED = 5
_KILL_GRACE_SECONDS = 5.0


@dataclass(frozen=True)
class PreflightResult:
    service: str
    passed: bool
    reason: Reason
    exit_code: int | None  # None when the process was killed or never started
    duration_s: float
    output_tail: str  # the last OUTPUT_TAIL_CHARS characters of stdout+stderr (or our own note)


def preflight_command() -> list[str]:
    return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]


def preflight_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The minimal environment (``child_env``) plus ``env``: nothing else of the daemon's."""
    return child_env(env)


def _tail(text: str) -> str:
    return text[-OUTPUT_TAIL_CHARS:]


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def run_preflight(
    service: str,
    service_dir: Path,
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    secrets: Iterable[str] = (),
) -> PreflightResult:
    """Run ``pytest`` in ``service_dir``; never raises for a failing, hanging or missing service.

    The output is redacted of ``secrets`` and every ``PODIUM_SECRET_*`` value before it is cut
    to its tail (so a secret cut in half at the tail's start cannot leak either).
    """
    started = time.monotonic()
    hidden = [*secrets, *known_secret_values()]

    def result(reason: Reason, exit_code: int | None, output: str) -> PreflightResult:
        return PreflightResult(
            service=service,
            passed=reason == "passed",
            reason=reason,
            exit_code=exit_code,
            duration_s=round(time.monotonic() - started, 3),
            output_tail=_tail(redact(output, hidden)),
        )

    service_dir = Path(service_dir)
    if not service_dir.is_dir():
        return result(
            "missing_dir", None, f"preflight: service folder {service_dir} does not exist"
        )

    try:
        proc = subprocess.Popen(
            preflight_command(),
            cwd=service_dir,
            env=preflight_env(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,  # its own process group: a timeout kills all it started
        )
    except OSError as exc:
        return result("failed", None, f"preflight: could not start pytest: {exc}")
    timed_out = False
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # pytest may have finished while something it started still holds the pipe open.
        timed_out = proc.poll() is None
        _kill_group(proc)
        try:
            output, _ = proc.communicate(timeout=_KILL_GRACE_SECONDS)
        except subprocess.TimeoutExpired:  # a grandchild left the group and holds the pipe
            proc.kill()
            proc.wait()
            output = ""
    except BaseException:
        _kill_group(proc)
        proc.wait()
        raise
    finally:
        # Whatever the tests left running in the group goes too (a group id lives as long as
        # any member does, and the kernel does not hand out a pid again that quickly).
        _kill_group(proc)

    output = output or ""
    if timed_out:
        note = f"\npreflight: timed out after {timeout:g} s; process group killed\n"
        return result("timeout", None, output + note)
    code = proc.returncode
    if code == 0:
        return result("passed", code, output)
    if code == PYTEST_NO_TESTS_COLLECTED:
        note = f"\npreflight: no tests were collected in {service_dir} (pytest exit code 5)\n"
        return result("no_tests", code, output + note)
    return result("failed", code, output)


def run_preflight_all(
    items: Sequence[tuple[str, Path]],
    *,
    timeout: float,
    concurrency: int = 4,
    env: Mapping[str, str] | None = None,
) -> list[PreflightResult]:
    """Run the services' preflights, at most ``concurrency`` at a time; results in input order."""
    if not items:
        return []
    workers = max(1, min(concurrency, len(items)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="preflight") as pool:
        futures = [
            pool.submit(run_preflight, name, path, timeout=timeout, env=env) for name, path in items
        ]
        return [f.result() for f in futures]


def preflight_effect(ctx: EffectContext) -> Sequence[Outcome]:
    """Effect kind ``preflight`` (one service): run its tests, report passed or failed with the tail."""
    from handlers.configgen import contained_service_dir

    service, dataflow, spec = ctx.target()
    folder = contained_service_dir(spec, ctx.source_root)  # never pytest a folder outside the root
    env: dict[str, str] = {}
    secrets: dict[str, str] = {}
    if spec.deployment is not None:
        project = ctx.architecture.project_id or ctx.settings.project
        env = service_env(spec.deployment, project=project, service=service, dataflow=dataflow)
        # Its own secrets only, where the daemon has them (gcp mode keeps them in Secret Manager).
        secrets = resolve_secrets(spec.deployment, Path(ctx.settings.state_dir), service, missing_ok=True)
    hidden = [*secrets.values(), *known_secret_values(Path(ctx.settings.state_dir))]
    result = run_preflight(
        service, folder, timeout=ctx.settings.preflight_timeout_seconds, env={**env, **secrets}, secrets=hidden
    )
    data = {"reason": result.reason, "output_tail": result.output_tail[-2000:], "duration_s": result.duration_s}
    if result.passed:
        return [Outcome("preflight.passed", service, data)]
    error = f"preflight of {service} {result.reason}: {result.output_tail[-1500:]}"
    return [Outcome("preflight.failed", service, {**data, "error": error})]
