"""Google's Pub/Sub and Firestore emulators on loopback (DESIGN.md §2).

Finds the emulator jars of the Google Cloud SDK, starts both with ``java`` on free
loopback ports, waits until each answers, and stops them by PID::

    with start_emulators() as emu:
        emu.export()                 # PUBSUB_EMULATOR_HOST, FIRESTORE_EMULATOR_HOST
        ...
        emu.reset_firestore("podium-test")

The Pub/Sub emulator 0.8.20 bundles an old ``io.grpc.InternalStatus`` next to a newer
grpc-core, which breaks redelivery once any streaming pull is cancelled
(``NoSuchMethodError ... asRuntimeException(Status, Metadata, boolean)``). When the
installed jar has that class without that method, a small replacement class is compiled
once with ``javac`` into ``$XDG_CACHE_HOME/podium/pubsub-shim/<jar>/`` and put on the
classpath before the jar.

Command line: ``python -m devtools.emulators run -- CMD ARGS...`` starts both, exports the
two variables, runs CMD, stops the emulators whatever happens, and exits with CMD's
exit code (2 when the emulators could not be started). ``python -m devtools.emulators
check`` tells what was found.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO

from machines.errors import EmulatorError

__all__ = [
    "DEFAULT_SDK_ROOT",
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

DEFAULT_SDK_ROOT = Path("/usr/lib/google-cloud-sdk")
SDK_ROOT_ENV = "PODIUM_GCLOUD_SDK_ROOT"
"""If set, the only SDK root searched (no fallback): for tests and odd installs."""

PUBSUB_JAR_GLOB = "platform/pubsub-emulator/lib/cloud-pubsub-emulator-*-all.jar"
FIRESTORE_JAR = "platform/cloud-firestore-emulator/cloud-firestore-emulator.jar"
PUBSUB_MAIN = "com.google.cloud.pubsub.testing.v1.Main"
FIRESTORE_MAIN = "com.google.cloud.datastore.emulator.firestore.CloudFirestore"

JDK_HINT = "install a JDK with `apt-get install openjdk-17-jdk-headless`"
_INSTALL_HINTS = {
    "pubsub": ("pubsub-emulator", "google-cloud-cli-pubsub-emulator"),
    "firestore": ("cloud-firestore-emulator", "google-cloud-cli-firestore-emulator"),
}
_LABELS = {"pubsub": "Pub/Sub", "firestore": "Firestore"}

_SHIM_CLASS = "io/grpc/InternalStatus.class"
_SHIM_METHOD = (
    "asRuntimeException",
    "(Lio/grpc/Status;Lio/grpc/Metadata;Z)Lio/grpc/StatusRuntimeException;",
)
SHIM_SOURCE = """\
package io.grpc;

/** Shim for the gcloud Pub/Sub emulator 0.8.20 fat jar (old InternalStatus + newer grpc-core). */
public final class InternalStatus {
  private InternalStatus() {}
  public static final Metadata.Key<String> MESSAGE_KEY = Status.MESSAGE_KEY;
  public static final Metadata.Key<Status> CODE_KEY = Status.CODE_KEY;

  public static StatusRuntimeException asRuntimeExceptionWithoutStacktrace(Status status, Metadata trailers) {
    return new InternalStatusRuntimeException(status, trailers);
  }

  public static StatusRuntimeException asRuntimeException(Status status, Metadata trailers, boolean withStackTrace) {
    return withStackTrace ? new StatusRuntimeException(status, trailers)
                          : new InternalStatusRuntimeException(status, trailers);
  }
}
"""


# --------------------------------------------------------------------------- finding


@dataclass(frozen=True)
class EmulatorJars:
    """Where the two emulators are installed."""

    pubsub: Path
    firestore: Path


def _candidate_roots(sdk_root: str | os.PathLike[str] | None) -> Iterator[Path]:
    explicit = sdk_root if sdk_root is not None else os.environ.get(SDK_ROOT_ENV)
    if explicit:
        yield Path(explicit)
        return
    yield DEFAULT_SDK_ROOT
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        return
    yield Path(gcloud).resolve().parent.parent  # <root>/bin/gcloud
    try:
        out = subprocess.run(
            [gcloud, "info", "--format=value(installation.sdk_root)"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return
    if out:
        yield Path(out)


def _version_key(jar: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", jar.name))


def find_emulators(sdk_root: str | os.PathLike[str] | None = None) -> EmulatorJars:
    """Locate both emulator jars, or raise `EmulatorError` with one line saying what to install.

    Searches ``sdk_root`` alone if given (or ``$PODIUM_GCLOUD_SDK_ROOT``), else
    /usr/lib/google-cloud-sdk, then the SDK of the ``gcloud`` on PATH (``gcloud info``).
    """
    found: dict[str, Path] = {}
    searched: list[str] = []
    for root in _candidate_roots(sdk_root):
        if str(root) in searched:
            continue
        searched.append(str(root))
        if "pubsub" not in found:
            jars = sorted(root.glob(PUBSUB_JAR_GLOB), key=_version_key)
            if jars:
                found["pubsub"] = jars[-1]
        if "firestore" not in found and (root / FIRESTORE_JAR).is_file():
            found["firestore"] = root / FIRESTORE_JAR
        if len(found) == 2:
            return EmulatorJars(pubsub=found["pubsub"], firestore=found["firestore"])
    missing = [name for name in ("pubsub", "firestore") if name not in found]
    what = " and ".join(_LABELS[m] for m in missing)
    components = " ".join(_INSTALL_HINTS[m][0] for m in missing)
    packages = " ".join(_INSTALL_HINTS[m][1] for m in missing)
    plural = "s" if len(missing) > 1 else ""
    raise EmulatorError(
        f"{what} emulator{plural} not found (searched {', '.join(searched)}): install with "
        f"`gcloud components install {components}` or `apt-get install {packages}`"
    )


def find_java(path: str | None = None) -> str:
    """The ``java`` on ``path`` (default: $PATH), or `EmulatorError`."""
    java = shutil.which("java", path=path)
    if java is None:
        raise EmulatorError(f"java not found on PATH (the emulators need Java 11+): {JDK_HINT}")
    return java


def find_javac(path: str | None = None) -> str:
    """The ``javac`` on ``path`` (default: $PATH), or `EmulatorError`."""
    javac = shutil.which("javac", path=path)
    if javac is None:
        raise EmulatorError(
            "javac not found on PATH (needed once to compile the Pub/Sub emulator "
            f"classpath fix): {JDK_HINT}"
        )
    return javac


# --------------------------------------------------------------------------- the shim


def _class_methods(data: bytes) -> set[tuple[str, str]]:
    """(name, descriptor) of every method declared in a JVM class file."""
    pos = 10
    (cp_count,) = struct.unpack_from(">H", data, 8)
    utf8: dict[int, str] = {}
    index = 1
    while index < cp_count:
        tag = data[pos]
        pos += 1
        if tag == 1:  # Utf8
            (length,) = struct.unpack_from(">H", data, pos)
            utf8[index] = data[pos + 2 : pos + 2 + length].decode("utf-8", "replace")
            pos += 2 + length
        elif tag in (5, 6):  # Long, Double: two slots
            pos += 8
            index += 1
        elif tag in (7, 8, 16, 19, 20):
            pos += 2
        elif tag in (3, 4, 9, 10, 11, 12, 17, 18):
            pos += 4
        elif tag == 15:
            pos += 3
        else:
            raise ValueError(f"unknown constant pool tag {tag}")
        index += 1
    pos += 6  # access_flags, this_class, super_class
    (n_interfaces,) = struct.unpack_from(">H", data, pos)
    pos += 2 + 2 * n_interfaces

    def members() -> Iterator[tuple[int, int]]:
        nonlocal pos
        (count,) = struct.unpack_from(">H", data, pos)
        pos += 2
        for _ in range(count):
            _, name, desc, n_attrs = struct.unpack_from(">HHHH", data, pos)
            pos += 8
            for _ in range(n_attrs):
                (length,) = struct.unpack_from(">I", data, pos + 2)
                pos += 6 + length
            yield name, desc

    for _ in members():  # fields
        pass
    return {(utf8[name], utf8[desc]) for name, desc in members()}


@lru_cache(maxsize=8)
def _shim_needed_cached(jar: str, size: int, mtime_ns: int) -> bool:
    try:
        with zipfile.ZipFile(jar) as archive:
            try:
                data = archive.read(_SHIM_CLASS)
            except KeyError:
                return False  # grpc not bundled (or shaded): nothing to fix
        return _SHIM_METHOD not in _class_methods(data)
    except (OSError, zipfile.BadZipFile, ValueError, struct.error, KeyError) as exc:
        raise EmulatorError(f"cannot read {jar} as a jar: {exc}") from exc


def shim_needed(pubsub_jar: str | os.PathLike[str]) -> bool:
    """True if the jar bundles an ``io.grpc.InternalStatus`` without
    ``asRuntimeException(Status, Metadata, boolean)`` (the 0.8.20 classpath bug)."""
    jar = Path(pubsub_jar)
    st = jar.stat()
    return _shim_needed_cached(str(jar.resolve()), st.st_size, st.st_mtime_ns)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "podium" / "pubsub-shim"


def _compile_shim(pubsub_jar: Path, javac: str, build: Path) -> Path:
    src = build / "InternalStatus.java"
    src.write_text(SHIM_SOURCE, encoding="utf-8")
    classes = build / "classes"
    cmd = [
        javac,
        "--release",
        "11",
        "-nowarn",
        "-cp",
        str(pubsub_jar),
        "-d",
        str(classes),
        str(src),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0 or not (classes / _SHIM_CLASS).is_file():
        raise EmulatorError(
            f"javac could not compile the Pub/Sub emulator fix ({proc.returncode}): "
            + (proc.stderr.strip() or proc.stdout.strip())[-2000:]
        )
    return classes


def pubsub_shim_dir(
    pubsub_jar: str | os.PathLike[str],
    *,
    javac: str | None = None,
    path: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path | None:
    """The classpath folder that fixes the jar, compiled on first use; None if not needed.

    Cached per jar (name, size, mtime) under ``cache_dir`` (default
    ``$XDG_CACHE_HOME/podium/pubsub-shim``). Safe against concurrent first uses.
    """
    jar = Path(pubsub_jar)
    if not shim_needed(jar):
        return None
    st = jar.stat()
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache / f"{jar.stem}-{st.st_size}-{st.st_mtime_ns}"
    if (target / _SHIM_CLASS).is_file():
        return target
    javac = javac or find_javac(path)
    cache.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
    try:
        classes = _compile_shim(jar, javac, build)
        try:
            classes.rename(target)
        except OSError:
            if not (target / _SHIM_CLASS).is_file():  # lost a race: fine, else re-raise
                raise
        return target
    finally:
        shutil.rmtree(build, ignore_errors=True)


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
        raise EmulatorError(f"could not start the {_LABELS[spec.name]} emulator: {exc}") from exc
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
    label = _LABELS[proc.name]
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


@dataclass(frozen=True)
class Emulators:
    """A running (or attached) pair of emulators. Stop with `stop()` or a ``with`` block."""

    pubsub_host: str
    firestore_host: str
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
        return {
            "PUBSUB_EMULATOR_HOST": self.pubsub_host,
            "FIRESTORE_EMULATOR_HOST": self.firestore_host,
        }

    def export(self) -> None:
        """Set the two standard variables in ``os.environ``."""
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
    (both set), else None. `stop()` on the result does nothing."""
    env = os.environ if environ is None else environ
    pubsub, firestore = env.get("PUBSUB_EMULATOR_HOST"), env.get("FIRESTORE_EMULATOR_HOST")
    if pubsub and firestore:
        return Emulators(pubsub_host=pubsub, firestore_host=firestore)
    return None


def start_emulators(
    *,
    sdk_root: str | os.PathLike[str] | None = None,
    path: str | None = None,
    work_dir: str | os.PathLike[str] | None = None,
    host: str = "127.0.0.1",
    pubsub_port: int | None = None,
    firestore_port: int | None = None,
    timeout: float = 60.0,
    shim: bool | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Emulators:
    """Start both emulators and return once each answers.

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
    }
    fixed = {"pubsub": pubsub_port, "firestore": firestore_port}

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
                            f"{_LABELS[name]} emulator: port {host}:{procs[name].port} is in use"
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
        work_dir=wd,
        _procs=(procs["pubsub"], procs["firestore"]),
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
        description="Start Google's Pub/Sub and Firestore emulators on loopback.",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run", help="start both, run CMD with the emulator variables, stop both")
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
            f"emulators: pubsub {emulators.pubsub_host}, firestore {emulators.firestore_host} "
            f"(ready in {time.monotonic() - started:.1f} s)",
            file=sys.stderr,
            flush=True,
        )
        return _run_child(cmd)


if __name__ == "__main__":
    sys.exit(main())
