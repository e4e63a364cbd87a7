"""Fault injection against the real emulators: shared fixtures and helpers.

Every test here is seeded: the seed is printed (``seed=...``) and put in assertion messages;
``PODIUM_FAULT_SEED=<n>`` replays a test with another seed. Thread scheduling and the
emulators' timing still vary between runs, so a replay reproduces the injected faults
(which, when, how many), not every interleaving.

Each test ends with one line per category, ``FAULTS <category>: tried=N survived=N lost=N``,
printed (visible with ``-s``) and repeated in pytest's terminal summary.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from devtools.emulators import Emulators
from tests.integration.conftest import (  # noqa: F401 - fixtures re-exported for this folder
    daemon_factory,
    daemon_process,
    db,
    settings,
)

DEFAULT_SEEDS = {
    "kill_storm": 20240611,
    "emulator_outage": 424242,
    "duplicates_and_reordering": 1337,
    "poison": 9001,
    "bad_handlers": 7,
}

SUMMARY: list[str] = []


def seed_for(category: str) -> int:
    """The category's fixed seed, or ``PODIUM_FAULT_SEED`` to replay with another one."""
    raw = os.environ.get("PODIUM_FAULT_SEED")
    seed = int(raw) if raw else DEFAULT_SEEDS[category]
    print(f"\n[{category}] seed={seed} (replay: PODIUM_FAULT_SEED={seed})", flush=True)
    return seed


def summary(category: str, tried: int, survived: int, lost: int) -> str:
    line = f"FAULTS {category}: tried={tried} survived={survived} lost={lost}"
    SUMMARY.append(line)
    print(line, flush=True)
    return line


def pytest_terminal_summary(terminalreporter: Any) -> None:
    # pytest loads this file as a conftest module, the tests import it as tests.faults.conftest:
    # the lines are in the latter's list.
    from tests.faults import conftest as shared

    if shared.SUMMARY:
        terminalreporter.section("fault injection")
        for line in shared.SUMMARY:
            terminalreporter.write_line(line)


@pytest.fixture(autouse=True)
def quiet_daemon_logs() -> Iterator[None]:
    """In-process daemons log warnings and errors only (``-s`` shows the fault lines, not every
    transition); the previous structlog configuration is restored afterwards."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
                        cache_logger_on_first_use=False)
    yield
    structlog.configure(**saved)


# ---- processes --------------------------------------------------------------------------


def rss_kb(pid: int) -> int:
    """VmRSS of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def processes_under(folder: Path) -> dict[int, Path]:
    """Live (non-zombie) processes whose working directory is inside ``folder``: {pid: cwd}.

    The local deploy backend runs each service with cwd ``<state_dir>/deploy/<service>/<digest>``,
    so this finds every service process, registered or not (an orphan started by a daemon that
    was killed before it could record it would show up here and not in the registry).
    """
    root = str(folder.resolve())
    found: dict[int, Path] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state in ("Z", "X"):
            continue
        if cwd == root or cwd.startswith(root + os.sep):
            found[int(entry.name)] = Path(cwd)
    return found


def kill_processes_under(folder: Path) -> list[int]:
    """SIGKILL what :func:`processes_under` finds (teardown: only this test's own services)."""
    pids = list(processes_under(folder))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


def wait_log_line(log_path: Path, needle: str, timeout: float, alive: Any = None) -> float:
    """Wait until ``needle`` appears in the log; returns time.monotonic() when seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if needle in log_path.read_text(errors="replace"):
                return time.monotonic()
        if alive is not None and not alive():
            raise AssertionError(f"the process died before logging {needle!r}:\n{tail(log_path)}")
        time.sleep(0.02)
    raise AssertionError(f"{needle!r} not logged within {timeout:.0f} s:\n{tail(log_path)}")


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


def log_messages(path: Path, level: str | None = None) -> list[dict[str, Any]]:
    """The JSON lines of a daemon subprocess log (``PODIUM_LOG_FORMAT=json``)."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and (level is None or entry.get("severity") == level):
                out.append(entry)
    return out


# ---- emulators --------------------------------------------------------------------------


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                cols = row.split()
                local, state, inode = cols[1], cols[3], cols[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    inodes.add(inode)
    return inodes


def pid_listening_on(port: int) -> int | None:
    """The pid of the process with a listening TCP socket on ``port`` (via /proc)."""
    wanted = {f"socket:[{i}]" for i in _listening_inodes(port)}
    if not wanted:
        return None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in wanted:
                        return int(entry.name)
    return None


_MAIN_CLASS = {
    "firestore": "CloudFirestore",
    "pubsub": "pubsub",
}


def emulator_pid(emulators: Emulators, name: str) -> int:
    """The java PID of this session's ``pubsub`` or ``firestore`` emulator.

    A session that started its own pair knows the PIDs (``Emulators.pids``); under
    ``python -m devtools.emulators run -- pytest`` the pair is attached from the environment,
    so the PID is the process listening on the announced port.
    """
    pid = emulators.pids.get(name)
    if pid is None:
        host = emulators.firestore_host if name == "firestore" else emulators.pubsub_host
        port = int(host.rsplit(":", 1)[1])
        pid = pid_listening_on(port)
        assert pid is not None, f"no process listens on {host} ({name} emulator)"
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    assert "java" in cmdline and _MAIN_CLASS[name].lower() in cmdline.lower(), (name, pid, cmdline[:300])
    return pid


@contextlib.contextmanager
def frozen(pid: int) -> Iterator[None]:
    """SIGSTOP ``pid`` for the block; SIGCONT whatever happens (else every later test hangs)."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def port_answers(host: str, timeout: float = 1.0) -> bool:
    name, port = host.rsplit(":", 1)
    try:
        with socket.create_connection((name, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


@pytest.fixture
def emulator_guard(emulators: Emulators) -> Iterator[Emulators]:
    """Makes sure both emulators run (SIGCONT) after the test, even if it failed mid-outage."""
    yield emulators
    for name in ("firestore", "pubsub"):
        with contextlib.suppress(Exception):
            os.kill(emulator_pid(emulators, name), signal.SIGCONT)
