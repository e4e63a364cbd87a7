"""Emulator processes: launch on a loopback port, wait until ready, stop by process group
(part of ``devtools.emulators``)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from devtools.emulator_jars import LABELS
from machines.errors import EmulatorError

# --------------------------------------------------------------------------- processes


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


_PR_SET_PDEATHSIG = 1


def _die_with_parent_fn() -> Callable[[], None] | None:
    """A preexec_fn that makes the child get SIGTERM when we die (even by SIGKILL).

    Linux only, and only when forking from the main thread: PDEATHSIG fires when the
    forking *thread* exits, which for a worker thread would be too early.
    """
    if (
        not sys.platform.startswith("linux")
        or threading.current_thread() is not threading.main_thread()
    ):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # parent already gone
            os._exit(1)

    return preexec


@dataclass
class _Proc:
    name: str
    port: int
    log_path: Path
    popen: subprocess.Popen[bytes]
    log: IO[bytes]

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self, timeout: float) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.popen.kill()
                self.popen.wait()
        self.log.close()


@dataclass(frozen=True)
class _Spec:
    name: str
    argv: Callable[[int], list[str]]
    ready_line: Callable[[int], str]


def _launch(spec: _Spec, host: str, port: int, work_dir: Path) -> _Proc:
    log_path = work_dir / f"{spec.name}.log"
    log = log_path.open("wb")
    try:
        popen = subprocess.Popen(
            spec.argv(port),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=work_dir,
            start_new_session=True,  # Ctrl-C goes to the command, not to us
            preexec_fn=_die_with_parent_fn(),
        )
    except OSError as exc:
        log.close()
        raise EmulatorError(f"could not start the {LABELS[spec.name]} emulator: {exc}") from exc
    return _Proc(spec.name, port, log_path, popen, log)


class _PortTaken(Exception):
    pass


def _http_ok(host: str, port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/", timeout=1.0) as resp:
            return int(resp.status) == 200
    except (OSError, urllib.error.URLError):
        return False


def _wait_ready(proc: _Proc, spec: _Spec, host: str, deadline: float) -> None:
    label = LABELS[proc.name]
    while True:
        text = proc.log_text()
        if "BindException" in text or "Address already in use" in text:
            raise _PortTaken
        if proc.popen.poll() is not None:
            raise EmulatorError(
                f"{label} emulator exited with code {proc.popen.returncode} before it was ready; "
                f"end of {proc.log_path}:\n{proc.tail()}"
            )
        if spec.ready_line(proc.port) in text and _http_ok(host, proc.port):
            return
        if time.monotonic() > deadline:
            raise EmulatorError(
                f"{label} emulator did not answer on {host}:{proc.port} in time; "
                f"end of {proc.log_path}:\n{proc.tail()}"
            )
        time.sleep(0.05)


