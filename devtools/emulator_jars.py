"""Where Google's emulators are, and the Pub/Sub emulator's classpath shim (part of
``devtools.emulators``).

Finds the emulator jars of the Google Cloud SDK and a JDK. The Pub/Sub emulator 0.8.20 bundles
an old ``io.grpc.InternalStatus`` next to a newer grpc-core, which breaks redelivery once any
streaming pull is cancelled (``NoSuchMethodError ... asRuntimeException(Status, Metadata,
boolean)``). When the installed jar has that class without that method, a small replacement
class is compiled once with ``javac`` into ``$XDG_CACHE_HOME/podium/pubsub-shim/<jar>/`` and
put on the classpath before the jar.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from machines.errors import EmulatorError

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
LABELS = {"pubsub": "Pub/Sub", "firestore": "Firestore", "storage": "Cloud Storage"}

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
    what = " and ".join(LABELS[m] for m in missing)
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


