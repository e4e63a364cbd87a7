"""Preflight: run each service's own tests in its folder before it is built, with its own runner.

Which runner (``choose_runner``), first match wins:

1. ``deployment.preflight.command`` in the architecture file: a file of the service (``./test.sh``,
   resolved inside its folder; no PATH lookup: a start command runs only the service's own code)
   and its arguments, as a list (no shell), for any language (the script may run npm, cargo, ...);
2. a ``go.mod`` in the service folder: ``go test ./...`` (the Go anchor's preflight), with the
   ``go`` found on the child's ``PATH``; without one the service fails with what to install;
3. Python (a ``pyproject.toml``/``setup.py``/``conftest.py``/... or any ``*.py`` file):
   ``python -m pytest`` with the daemon's interpreter, as before;
4. nothing recognised: nothing runs, the service has **no tests**.

What a service's preflight comes to (``PreflightResult.result``, ``data.result`` of its event):

* ``passed``: its tests ran and passed (``preflight.passed``).
* ``no_tests``: it has none — pytest collected nothing (exit code 5), ``go test`` found no test
  file in any package, or no runner was recognised. Reported as such and the run goes on
  (``preflight.passed`` with ``result: no_tests``, a warning in the log): issue 13 asks for a
  service without tests to be *reported* as "no tests" rather than fail the run, with an option
  to skip preflight on purpose. An explicit ``command`` cannot say "no tests": its exit code is
  its result.
* ``skipped``: ``deployment.preflight.skip: true`` for that service, or the run was started with
  ``skip_preflight`` (``podium start --skip-preflight``): nothing runs (``preflight.passed``).
* ``failed``: the tests failed (``reason: failed``), hung past the timeout (``timeout``), the
  folder is missing (``missing_dir``), the runner or the command's file is missing
  (``missing_tool``; the message says what to do) or the command's file resolves outside the
  folder (``refused``) — ``preflight.failed`` fails the run with the output's tail.

Each run is a subprocess in its own process group, so a hanging test (and anything it spawned)
is killed as a whole on timeout. The timeout is the daemon's ``PODIUM_PREFLIGHT_TIMEOUT_SECONDS``,
or the service's ``preflight.timeout_seconds`` when that is shorter (the daemon's value also
bounds the effect's deadline, so a service cannot ask for more). The child gets a minimal
environment (``handlers.secrets.child_env``: PATH, HOME, locale, TMPDIR, the emulator switches)
plus the service's own declared variables and secrets: never the daemon's ``PODIUM_*`` settings,
other services' secrets, or a parent pytest's ``PYTEST_*``/``PYTHONPATH``. Its output is redacted
of every known secret value before the tail is kept (the tail is stored in Firestore).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import structlog

from handlers.base import EffectContext, Outcome
from handlers.secrets import child_env, known_secret_values, redact, resolve_secrets, service_env
from machines.architecture.naming import preflight_program_problem

Reason = Literal[
    "passed", "failed", "timeout", "no_tests", "missing_dir", "missing_tool", "refused", "skipped", "cancelled",
]
Result = Literal["passed", "failed", "no_tests", "skipped"]
Runner = Literal["pytest", "go", "command", "none"]

OUTPUT_TAIL_CHARS = 4000
PYTEST_NO_TESTS_COLLECTED = 5
GO_INSTALL_HINT = "install Go (https://go.dev/doc/install; Debian/Ubuntu: apt-get install golang-go)"
_KILL_GRACE_SECONDS = 5.0
_CANCEL_CHECK_SECONDS = 0.5  # how often a running preflight looks at its effect's cancel flag
_PYTHON_MARKERS = ("pyproject.toml", "setup.py", "setup.cfg", "pytest.ini", "tox.ini", "conftest.py")
_NOT_SOURCE_DIRS = frozenset({"node_modules", "__pycache__", "venv", "site-packages", "vendor"})
_MAX_ENTRIES_SCANNED = 5000
_GO_OK_LINE = re.compile(r"^ok\s", re.MULTILINE)
_SKIP_HINT = "add tests, or set deployment.preflight.skip: true for this service to say it has none"

_RESULT_OF: dict[str, Result] = {"passed": "passed", "no_tests": "no_tests", "skipped": "skipped"}

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class PreflightResult:
    service: str
    passed: bool  # its tests ran and passed
    reason: Reason
    exit_code: int | None  # None when the process was killed or never started
    duration_s: float
    output_tail: str  # the last OUTPUT_TAIL_CHARS characters of stdout+stderr (or our own note)
    runner: Runner = "none"
    command: tuple[str, ...] = ()  # what ran, or would have run

    @property
    def result(self) -> Result:
        return _RESULT_OF.get(self.reason, "failed")

    @property
    def fails_run(self) -> bool:
        return self.result == "failed"


def preflight_command() -> list[str]:
    """The Python runner: pytest with the daemon's own interpreter."""
    return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]


def go_command(go: str = "go") -> list[str]:
    """The Go runner, as the anchor's PreflightValidator runs it."""
    return [go, "test", "./..."]


def preflight_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The minimal environment (``child_env``) plus ``env``: nothing else of the daemon's."""
    return child_env(env)


def looks_like_python(folder: Path) -> bool:
    """A Python project marker in ``folder``, or a ``*.py`` file under it (hidden folders,
    virtualenvs and ``node_modules`` aside; at most ``_MAX_ENTRIES_SCANNED`` entries looked at)."""
    if any((folder / marker).is_file() for marker in _PYTHON_MARKERS):
        return True
    seen = 0
    for _, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in _NOT_SOURCE_DIRS]
        if any(f.endswith(".py") for f in files):
            return True
        seen += len(dirs) + len(files)
        if seen > _MAX_ENTRIES_SCANNED:
            return False
    return False


def choose_runner(service_dir: Path, command: Sequence[str] = ()) -> Runner:
    """An explicit ``command``; else ``go`` for a ``go.mod``; else ``pytest`` for Python; else ``none``."""
    if command:
        return "command"
    if (service_dir / "go.mod").is_file():
        return "go"
    if looks_like_python(service_dir):
        return "pytest"
    return "none"


def _tail(text: str) -> str:
    return text[-OUTPUT_TAIL_CHARS:]


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


class _Cancelled(Exception):
    def __init__(self, output: str) -> None:
        super().__init__("cancelled")
        self.output = output


def _run_group(
    argv: Sequence[str], cwd: Path, env: Mapping[str, str], timeout: float,
    cancelled: threading.Event | None = None,
) -> tuple[str, int | None]:
    """Run ``argv`` in its own process group; (output, exit code), or exit code None on timeout.

    Raises ``OSError`` when it cannot start, ``_Cancelled`` (with the output so far) when
    ``cancelled`` is set while it runs. Whatever it left running in its group is killed."""
    proc = subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,  # its own process group: a timeout kills all it started
    )
    timed_out = False
    deadline = time.monotonic() + timeout
    try:
        while True:  # communicate() may be called again after a timeout without losing output
            try:
                output, _ = proc.communicate(timeout=max(0.0, min(_CANCEL_CHECK_SECONDS, deadline - time.monotonic())))
                break
            except subprocess.TimeoutExpired:
                if cancelled is not None and cancelled.is_set():
                    _kill_group(proc)
                    raise _Cancelled(proc.communicate(timeout=_KILL_GRACE_SECONDS)[0] or "") from None
                if time.monotonic() >= deadline:
                    raise
    except subprocess.TimeoutExpired:
        # The runner may have finished while something it started still holds the pipe open.
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
    return output or "", None if timed_out else proc.returncode


def _go_found_no_tests(output: str, code: int) -> bool:
    """``go test ./...`` ran no test: every package ``[no test files]``, or no package at all."""
    if "matched no packages" in output:
        return True
    return code == 0 and _GO_OK_LINE.search(output) is None


def run_preflight(
    service: str,
    service_dir: Path,
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    secrets: Iterable[str] = (),
    command: Sequence[str] = (),
    cancelled: threading.Event | None = None,
) -> PreflightResult:
    """Run the service's tests in ``service_dir`` with its runner (``choose_runner``; ``command``
    is ``preflight.command``); never raises for a failing, hanging, missing or test-less service.

    The output is redacted of ``secrets`` and every ``PODIUM_SECRET_*`` value before it is cut
    to its tail (so a secret cut in half at the tail's start cannot leak either).
    """
    started = time.monotonic()
    hidden = [*secrets, *known_secret_values()]
    runner: Runner = "none"
    argv: list[str] = []

    def result(reason: Reason, exit_code: int | None, output: str) -> PreflightResult:
        return PreflightResult(
            service=service,
            passed=reason == "passed",
            reason=reason,
            exit_code=exit_code,
            duration_s=round(time.monotonic() - started, 3),
            output_tail=_tail(redact(output, hidden)),
            runner=runner,
            command=tuple(argv),
        )

    service_dir = Path(service_dir)
    if not service_dir.is_dir():
        return result("missing_dir", None, f"preflight: service folder {service_dir} does not exist")

    child = preflight_env(env)
    runner = choose_runner(service_dir, command)
    if runner == "none":
        return result(
            "no_tests", None,
            f"preflight: no tests in {service_dir}: no go.mod, no Python files and no "
            f"deployment.preflight.command, so no test runner applies; reported as 'no tests' "
            f"(declare preflight.command to run this service's tests, or preflight.skip: true)\n",
        )
    if runner == "go":
        go = shutil.which("go", path=child.get("PATH", ""))
        argv = go_command(go or "go")
        if go is None:
            return result(
                "missing_tool", None,
                f"preflight: {service_dir} has a go.mod, so its tests run with `go test ./...`, but "
                f"there is no `go` on PATH ({child.get('PATH', '')}): {GO_INSTALL_HINT}, or set "
                f"deployment.preflight.command / preflight.skip for this service\n",
            )
    elif runner == "command":
        argv = list(command)
        refused = preflight_program_problem(argv[0])
        program = (service_dir / argv[0]).resolve()
        if refused is None and not program.is_relative_to(service_dir.resolve()):
            refused = f"{argv[0]!r} resolves to {program}, outside the service's folder"
        if refused:  # the architecture check refuses this too; a link may still point out
            return result("refused", None, f"preflight: preflight.command refused: {refused}\n")
        if not program.is_file():
            return result(
                "missing_tool", None,
                f"preflight: cannot run preflight.command {argv!r}: {argv[0]!r} is not a file in "
                f"{service_dir}; add it, or change deployment.preflight.command\n",
            )
        argv[0] = str(program)
    else:
        argv = preflight_command()

    try:
        output, code = _run_group(argv, service_dir, child, timeout, cancelled)
    except _Cancelled as stopped:
        return result("cancelled", None, stopped.output + "\npreflight: cancelled; process group killed\n")
    except FileNotFoundError as exc:
        return result("missing_tool", None, f"preflight: cannot run {argv[0]!r} in {service_dir}: {exc}\n")
    except OSError as exc:
        return result("failed", None, f"preflight: could not start {argv[0]!r}: {exc}\n")

    if code is None:
        note = f"\npreflight: timed out after {timeout:g} s; process group killed\n"
        return result("timeout", None, output + note)
    if runner == "pytest" and code == PYTEST_NO_TESTS_COLLECTED:
        note = (f"\npreflight: no tests were collected in {service_dir} (pytest exit code 5); "
                f"reported as 'no tests': {_SKIP_HINT}\n")
        return result("no_tests", code, output + note)
    if runner == "go" and _go_found_no_tests(output, code):
        note = (f"\npreflight: `go test ./...` found no test files in {service_dir}; "
                f"reported as 'no tests': {_SKIP_HINT}\n")
        return result("no_tests", code, output + note)
    if code == 0:
        return result("passed", code, output)
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


def _skipped(service: str, why: str) -> Outcome:
    note = f"preflight: skipped ({why})"
    data = {"result": "skipped", "reason": "skipped", "output_tail": note, "duration_s": 0.0}
    return Outcome("preflight.passed", service, data)


def preflight_effect(ctx: EffectContext) -> Sequence[Outcome]:
    """Effect kind ``preflight`` (one service): run its tests (or skip them), report the result.

    ``preflight.passed`` for ``passed``, ``no_tests`` and ``skipped``; ``preflight.failed``
    with the output's tail otherwise. ``data.result`` says which; ``data.reason`` the detail.
    """
    from handlers.configgen import contained_service_dir

    service, dataflow, spec = ctx.target()
    declared = spec.deployment.preflight if spec.deployment is not None else None
    if ctx.run.plan.get("skip_preflight"):
        log.info("preflight skipped", service=service, why="skip_preflight")
        return [_skipped(service, "the run was started with --skip-preflight")]
    if declared is not None and declared.skip:
        log.info("preflight skipped", service=service, why="preflight.skip")
        return [_skipped(service, "deployment.preflight.skip: true in the architecture")]
    folder = contained_service_dir(spec, ctx.source_root)  # never run a folder outside the root
    env: dict[str, str] = {}
    secrets: dict[str, str] = {}
    if spec.deployment is not None:
        project = ctx.architecture.project_id or ctx.settings.project
        env = service_env(spec.deployment, project=project, service=service, dataflow=dataflow)
        # Its own secrets only, where the daemon has them (gcp mode keeps them in Secret Manager).
        secrets = resolve_secrets(spec.deployment, Path(ctx.settings.state_dir), service, missing_ok=True)
    hidden = [*secrets.values(), *known_secret_values(Path(ctx.settings.state_dir))]
    timeout = float(ctx.settings.preflight_timeout_seconds)
    asked = declared.timeout_seconds if declared is not None else None
    if asked is not None:
        timeout = min(timeout, float(asked))
    result = run_preflight(
        service, folder, timeout=timeout, env={**env, **secrets}, secrets=hidden,
        command=declared.command if declared is not None else (), cancelled=ctx.cancelled,
    )
    data: dict[str, Any] = {
        "result": result.result,
        "reason": result.reason,
        "runner": result.runner,
        "output_tail": result.output_tail[-2000:],
        "duration_s": result.duration_s,
        "timeout_s": timeout,
    }
    capped = ""
    if asked is not None and asked > timeout:
        data["timeout_capped_from"] = asked
        capped = f" (its preflight.timeout_seconds {asked} is capped by PODIUM_PREFLIGHT_TIMEOUT_SECONDS)"
    if result.reason == "no_tests":
        log.warning("preflight: service has no tests", service=service, runner=result.runner)
    if not result.fails_run:
        return [Outcome("preflight.passed", service, data)]
    error = f"preflight of {service} {result.reason}{capped}: {result.output_tail[-1500:]}"
    return [Outcome("preflight.failed", service, {**data, "error": error})]
