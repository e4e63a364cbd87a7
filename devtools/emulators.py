"""Google's Pub/Sub and Firestore emulators, and a Cloud Storage one, on loopback (DESIGN.md §2).

Finds the emulator jars of the Google Cloud SDK, starts both with ``java`` on free
loopback ports, starts ``gcp-storage-emulator`` (PyPI; the GCS JSON API, in memory) beside them
with this Python, waits until each answers, and stops them by PID::

    with start_emulators() as emu:
        emu.export()                 # PUBSUB_, FIRESTORE_ and STORAGE_EMULATOR_HOST
        ...
        emu.reset_firestore("podium-test")

Its parts: ``devtools/emulator_jars.py`` finds the jars and a JDK and builds the Pub/Sub
emulator's classpath shim (0.8.20 cannot redeliver after a cancelled stream without it);
``devtools/emulator_processes.py`` launches a process on a loopback port, waits until it
answers and stops its process group. This module holds the running pair and the command line.

Command line: ``python -m devtools.emulators run -- CMD ARGS...`` starts all three, exports
the variables, runs CMD, stops the emulators whatever happens, and exits with CMD's
exit code (2 when the emulators could not be started). ``python -m devtools.emulators
check`` tells what was found.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType

from devtools.emulator_jars import (
    DEFAULT_SDK_ROOT,
    FIRESTORE_JAR,
    FIRESTORE_MAIN,
    LABELS,
    PUBSUB_JAR_GLOB,
    PUBSUB_MAIN,
    SDK_ROOT_ENV,
    EmulatorJars,
    find_emulators,
    find_java,
    find_javac,
    pubsub_shim_dir,
    shim_needed,
)
from devtools.emulator_processes import (
    _die_with_parent_fn,
    _launch,
    _PortTaken,
    _Proc,
    _Spec,
    _wait_ready,
    free_port,
)
from machines.errors import EmulatorError

__all__ = [  # the harness's public names, wherever they live (emulator_jars, emulator_processes)
    "DEFAULT_SDK_ROOT",
    "FIRESTORE_JAR",
    "PUBSUB_JAR_GLOB",
    "SDK_ROOT_ENV",
    "EmulatorJars",
    "Emulators",
    "attach_from_env",
    "find_emulators",
    "find_java",
    "find_javac",
    "free_port",
    "main",
    "pubsub_shim_dir",
    "shim_needed",
    "start_emulators",
]


@dataclass(frozen=True)
class Emulators:
    """A running (or attached) pair of emulators. Stop with `stop()` or a ``with`` block."""

    pubsub_host: str
    firestore_host: str
    storage_host: str = ""  # empty when attached to emulators started elsewhere without one
    work_dir: Path | None = None
    _procs: tuple[_Proc, ...] = field(default=(), repr=False, compare=False)
    _owns_work_dir: bool = field(default=False, repr=False, compare=False)

    @property
    def owned(self) -> bool:
        """True if this object started the processes (and `stop()` ends them)."""
        return bool(self._procs)

    @property
    def pids(self) -> dict[str, int]:
        return {p.name: p.popen.pid for p in self._procs}

    def env(self) -> dict[str, str]:
        env = {
            "PUBSUB_EMULATOR_HOST": self.pubsub_host,
            "FIRESTORE_EMULATOR_HOST": self.firestore_host,
        }
        if self.storage_host:  # google-cloud-storage wants a URL here, not host:port
            env["STORAGE_EMULATOR_HOST"] = f"http://{self.storage_host}"
        return env

    def export(self) -> None:
        """Set the standard variables in ``os.environ``."""
        os.environ.update(self.env())

    def log_tail(self, name: str, lines: int = 40) -> str:
        """Last lines of the ``pubsub`` or ``firestore`` log ('' if not owned)."""
        for proc in self._procs:
            if proc.name == name:
                return proc.tail(lines)
        return ""

    def reset_firestore(self, project: str, timeout: float = 10.0) -> None:
        """Delete every document of ``project``'s default database."""
        url = (
            f"http://{self.firestore_host}/emulator/v1/projects/"
            f"{urllib.parse.quote(project, safe='')}/databases/(default)/documents"
        )
        request = urllib.request.Request(url, method="DELETE")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                status = int(resp.status)
        except (OSError, urllib.error.URLError) as exc:
            raise EmulatorError(f"Firestore reset failed ({url}): {exc}") from exc
        if status != 200:
            raise EmulatorError(f"Firestore reset failed ({url}): HTTP {status}")

    def stop(self, timeout: float = 10.0) -> None:
        """End the processes this object started (SIGTERM, then SIGKILL). Idempotent."""
        for proc in self._procs:
            proc.stop(timeout)
        if self._owns_work_dir and self.work_dir is not None:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> Emulators:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def attach_from_env(environ: Mapping[str, str] | None = None) -> Emulators | None:
    """Emulators already announced by PUBSUB_EMULATOR_HOST and FIRESTORE_EMULATOR_HOST
    (both set; STORAGE_EMULATOR_HOST too if set), else None. `stop()` on the result does nothing."""
    env = os.environ if environ is None else environ
    pubsub, firestore = env.get("PUBSUB_EMULATOR_HOST"), env.get("FIRESTORE_EMULATOR_HOST")
    storage = env.get("STORAGE_EMULATOR_HOST", "").removeprefix("http://")
    if pubsub and firestore:
        return Emulators(pubsub_host=pubsub, firestore_host=firestore, storage_host=storage)
    return None


def start_emulators(
    *,
    sdk_root: str | os.PathLike[str] | None = None,
    path: str | None = None,
    work_dir: str | os.PathLike[str] | None = None,
    host: str = "127.0.0.1",
    pubsub_port: int | None = None,
    firestore_port: int | None = None,
    storage_port: int | None = None,
    timeout: float = 60.0,
    shim: bool | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Emulators:
    """Start the three emulators and return once each answers.

    ``path`` is the PATH searched for java/javac (default: $PATH). ``work_dir`` holds
    the logs (default: a temporary folder, removed by `stop()`). ``shim``: None applies
    the Pub/Sub fix only when the jar needs it; False never (to reproduce the bug).
    Raises `EmulatorError` (one line when something is missing).
    """
    jars = find_emulators(sdk_root)
    java = find_java(path)
    shim_dir: Path | None = None
    if shim is not False:
        shim_dir = pubsub_shim_dir(jars.pubsub, path=path, cache_dir=cache_dir)
    pubsub_cp = f"{shim_dir}{os.pathsep}{jars.pubsub}" if shim_dir else str(jars.pubsub)

    specs = {
        "pubsub": _Spec(
            "pubsub",
            lambda port: [java, "-cp", pubsub_cp, PUBSUB_MAIN, f"--host={host}", f"--port={port}"],
            lambda port: f"Server started, listening on {port}",
        ),
        "firestore": _Spec(
            "firestore",
            lambda port: [
                java,
                "-Duser.language=en",
                "-cp",
                str(jars.firestore),
                FIRESTORE_MAIN,
                "start",
                f"--host={host}",
                f"--port={port}",
            ],
            lambda port: "Dev App Server is now running",
        ),
        # A Python emulator of the GCS JSON API (buckets and objects), kept in memory.
        "storage": _Spec(
            "storage",
            lambda port: [sys.executable, "-m", "gcp_storage_emulator", "start",
                          f"--host={host}", f"--port={port}", "--in-memory"],
            lambda port: "All services started",
        ),
    }
    fixed = {"pubsub": pubsub_port, "firestore": firestore_port, "storage": storage_port}

    owns = work_dir is None
    wd = Path(tempfile.mkdtemp(prefix="podium-emulators-")) if work_dir is None else Path(work_dir)
    wd.mkdir(parents=True, exist_ok=True)
    procs: dict[str, _Proc] = {}
    try:
        for name, spec in specs.items():
            procs[name] = _launch(spec, host, fixed[name] or free_port(host), wd)
        deadline = time.monotonic() + timeout
        for name, spec in specs.items():
            for attempt in range(4):
                try:
                    _wait_ready(procs[name], spec, host, deadline)
                    break
                except _PortTaken:
                    procs[name].stop(5.0)
                    if fixed[name] or attempt == 3:
                        raise EmulatorError(
                            f"{LABELS[name]} emulator: port {host}:{procs[name].port} is in use"
                        ) from None
                    procs[name] = _launch(spec, host, free_port(host), wd)
    except BaseException:
        for proc in procs.values():
            proc.stop(5.0)
        if owns:
            shutil.rmtree(wd, ignore_errors=True)
        raise
    return Emulators(
        pubsub_host=f"{host}:{procs['pubsub'].port}",
        firestore_host=f"{host}:{procs['firestore'].port}",
        storage_host=f"{host}:{procs['storage'].port}",
        work_dir=wd,
        _procs=(procs["pubsub"], procs["firestore"], procs["storage"]),
        _owns_work_dir=owns,
    )


# --------------------------------------------------------------------------- command line


def _foreground_of_tty() -> bool:
    """True if a terminal's Ctrl-C reaches our whole process group (and so the child)."""
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (OSError, ValueError, AttributeError):
        return False


def _run_child(cmd: Sequence[str]) -> int:
    """Run ``cmd`` in our process group; forward signals; return a shell-style exit code."""
    try:
        child = subprocess.Popen(list(cmd), preexec_fn=_die_with_parent_fn())
    except OSError as exc:
        print(f"error: cannot run {cmd[0]}: {exc.strerror or exc}", file=sys.stderr)
        return 127 if isinstance(exc, FileNotFoundError) else 126
    interrupts = 0
    tty = _foreground_of_tty()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal interrupts
        if child.poll() is not None:
            return
        if signum != signal.SIGINT:
            child.send_signal(signum)
            return
        interrupts += 1
        if interrupts == 1:
            if not tty:  # a terminal already delivered it to the child
                child.send_signal(signal.SIGINT)
        elif interrupts == 2:
            child.terminate()
        else:
            child.kill()

    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, on_signal) for sig in handled}
    try:
        code = child.wait()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.emulators",
        description="Start the Pub/Sub, Firestore and Cloud Storage emulators on loopback.",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run", help="start the emulators, run CMD with their variables, stop them")
    run.add_argument("--work-dir", type=Path, help="keep the emulator logs here")
    run.add_argument("--timeout", type=float, default=60.0, help="start-up timeout (s)")
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    sub.add_parser("check", help="tell what was found (jars, java, the Pub/Sub fix)")
    args = parser.parse_args(argv)

    if args.action == "check":
        try:
            jars = find_emulators()
            java = find_java()
            shim = pubsub_shim_dir(jars.pubsub)
        except EmulatorError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"java:      {java}\npubsub:    {jars.pubsub}\nfirestore: {jars.firestore}")
        print(f"pubsub fix: {shim if shim else 'not needed'}")
        return 0

    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("run: missing command after --")
    started = time.monotonic()
    try:
        emulators = start_emulators(work_dir=args.work_dir, timeout=args.timeout)
    except EmulatorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with emulators:
        emulators.export()
        print(
            f"emulators: pubsub {emulators.pubsub_host}, firestore {emulators.firestore_host}, "
            f"storage {emulators.storage_host} "
            f"(ready in {time.monotonic() - started:.1f} s)",
            file=sys.stderr,
            flush=True,
        )
        return _run_child(cmd)


if __name__ == "__main__":
    sys.exit(main())
