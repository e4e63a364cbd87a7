"""The emulator harness without emulators: finding, clear errors, shim detection, the CLI."""

from __future__ import annotations

import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from devtools import emulators as emu
from devtools.emulators import (
    DEFAULT_SDK_ROOT,
    FIRESTORE_JAR,
    SDK_ROOT_ENV,
    Emulators,
    attach_from_env,
    find_emulators,
    pubsub_shim_dir,
    shim_needed,
    start_emulators,
)
from machines.errors import EmulatorError

DESC_OLD = "(Lio/grpc/Status;Lio/grpc/Metadata;)Lio/grpc/StatusRuntimeException;"
DESC_NEW = "(Lio/grpc/Status;Lio/grpc/Metadata;Z)Lio/grpc/StatusRuntimeException;"
OLD_METHODS = [("asRuntimeExceptionWithoutStacktrace", DESC_OLD)]
NEW_METHODS = [*OLD_METHODS, ("asRuntimeException", DESC_NEW)]
REAL_PUBSUB_JARS = sorted(DEFAULT_SDK_ROOT.glob(emu.PUBSUB_JAR_GLOB))


def class_file(name: str, methods: list[tuple[str, str]]) -> bytes:
    """A minimal JVM class file: one field, native methods, a two-slot constant, attributes."""
    pool: list[bytes] = []

    def utf8(text: str) -> int:
        raw = text.encode()
        entry = b"\x01" + struct.pack(">H", len(raw)) + raw
        if entry in pool:
            return pool.index(entry) + 1
        pool.append(entry)
        return len(pool)

    def klass(text: str) -> int:
        pool.append(b"\x07" + struct.pack(">H", utf8(text)))
        return len(pool)

    this, parent = klass(name), klass("java/lang/Object")
    pool += [b"\x05" + bytes(8), b""]  # a long takes two slots
    attr = utf8("Custom")
    field = (utf8("MESSAGE_KEY"), utf8("Lio/grpc/Metadata$Key;"))
    refs = [(utf8(m), utf8(d)) for m, d in methods]

    out = b"\xca\xfe\xba\xbe" + struct.pack(">HHH", 0, 55, len(pool) + 1) + b"".join(pool)
    out += struct.pack(">HHHH", 0x31, this, parent, 0)
    out += struct.pack(">HHHHH", 1, 0x19, *field, 1) + struct.pack(">HI", attr, 3) + b"abc"
    out += struct.pack(">H", len(refs))
    for name_index, desc_index in refs:
        out += struct.pack(">HHHH", 0x109, name_index, desc_index, 1)
        out += struct.pack(">HI", attr, 2) + b"zz"
    return out


def make_jar(path: Path, methods: list[tuple[str, str]] | None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as jar:
        jar.writestr("com/google/Main.class", b"\xca\xfe\xba\xbe")
        if methods is not None:
            jar.writestr(
                "io/grpc/InternalStatus.class", class_file("io/grpc/InternalStatus", methods)
            )
    return path


def fake_sdk(root: Path, *, pubsub: bool = True, firestore: bool = True) -> Path:
    if pubsub:
        make_jar(root / "platform/pubsub-emulator/lib/cloud-pubsub-emulator-0.8.20-all.jar", None)
    if firestore:
        (root / FIRESTORE_JAR).parent.mkdir(parents=True, exist_ok=True)
        (root / FIRESTORE_JAR).write_bytes(b"")
    return root


def one_line(err: pytest.ExceptionInfo[EmulatorError]) -> str:
    message = str(err.value)
    assert "\n" not in message and message.strip() == message
    return message


# ---------------------------------------------------------------- finding the jars


def test_missing_sdk_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(EmulatorError) as err:
        find_emulators(tmp_path / "nowhere")
    message = one_line(err)
    assert message.startswith("Pub/Sub and Firestore emulators not found")
    assert str(tmp_path / "nowhere") in message
    assert "gcloud components install pubsub-emulator cloud-firestore-emulator" in message
    assert "google-cloud-cli-pubsub-emulator google-cloud-cli-firestore-emulator" in message
    assert err.value.reason == "emulator" and not err.value.retryable


def test_sdk_root_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SDK_ROOT_ENV, str(tmp_path / "env-root"))
    with pytest.raises(EmulatorError) as err:
        find_emulators()
    assert str(tmp_path / "env-root") in one_line(err)

    monkeypatch.setenv(SDK_ROOT_ENV, str(fake_sdk(tmp_path / "sdk")))
    assert find_emulators().firestore == tmp_path / "sdk" / FIRESTORE_JAR


@pytest.mark.parametrize(
    ("pubsub", "firestore", "named", "install"),
    [
        (True, False, "Firestore emulator not found", "cloud-firestore-emulator"),
        (False, True, "Pub/Sub emulator not found", "google-cloud-cli-pubsub-emulator"),
    ],
)
def test_one_missing_emulator_is_named(
    tmp_path: Path, pubsub: bool, firestore: bool, named: str, install: str
) -> None:
    with pytest.raises(EmulatorError) as err:
        find_emulators(fake_sdk(tmp_path, pubsub=pubsub, firestore=firestore))
    message = one_line(err)
    assert message.startswith(named) and install in message
    assert ("Pub/Sub" in message) != pubsub


def test_newest_pubsub_jar_wins(tmp_path: Path) -> None:
    root = fake_sdk(tmp_path)
    lib = root / "platform/pubsub-emulator/lib"
    make_jar(lib / "cloud-pubsub-emulator-0.8.9-all.jar", None)
    make_jar(lib / "cloud-pubsub-emulator-0.10.1-all.jar", None)
    assert find_emulators(root).pubsub == lib / "cloud-pubsub-emulator-0.10.1-all.jar"


# ---------------------------------------------------------------- java


def test_missing_java_is_one_clear_line(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    with pytest.raises(EmulatorError) as err:
        start_emulators(
            sdk_root=fake_sdk(tmp_path / "sdk"), path=str(empty), work_dir=tmp_path / "w"
        )
    message = one_line(err)
    assert message.startswith("java not found")
    assert "apt-get install openjdk-17-jdk-headless" in message
    assert not (tmp_path / "w").exists()  # failed before anything started


def test_missing_javac_when_the_fix_must_be_compiled(tmp_path: Path) -> None:
    jar = make_jar(tmp_path / "ps.jar", OLD_METHODS)
    empty = tmp_path / "bin"
    empty.mkdir()
    with pytest.raises(EmulatorError) as err:
        pubsub_shim_dir(jar, path=str(empty), cache_dir=tmp_path / "cache")
    message = one_line(err)
    assert message.startswith("javac not found") and "openjdk-17-jdk-headless" in message


# ---------------------------------------------------------------- the shim


@pytest.mark.parametrize(
    ("methods", "needed"),
    [(OLD_METHODS, True), (NEW_METHODS, False), (None, False)],
    ids=["old-internalstatus", "fixed-internalstatus", "no-bundled-grpc"],
)
def test_shim_needed_detection(
    tmp_path: Path, methods: list[tuple[str, str]] | None, needed: bool
) -> None:
    assert shim_needed(make_jar(tmp_path / "ps.jar", methods)) is needed


def test_shim_not_needed_means_no_classpath_folder(tmp_path: Path) -> None:
    jar = make_jar(tmp_path / "ps.jar", NEW_METHODS)
    assert pubsub_shim_dir(jar, path=str(tmp_path), cache_dir=tmp_path / "cache") is None
    assert not (tmp_path / "cache").exists()


def test_shim_is_compiled_once_then_cached(tmp_path: Path) -> None:
    """A fake javac records its calls and writes the class where -d says."""
    calls = tmp_path / "calls"
    javac = tmp_path / "bin" / "javac"
    javac.parent.mkdir()
    javac.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {calls}\n'
        'while [ "$1" != "-d" ]; do shift; done\n'
        'mkdir -p "$2/io/grpc" && touch "$2/io/grpc/InternalStatus.class"\n'
    )
    javac.chmod(0o755)
    jar = make_jar(tmp_path / "ps.jar", OLD_METHODS)
    cache = tmp_path / "cache"

    first = pubsub_shim_dir(jar, path=str(javac.parent), cache_dir=cache)
    assert first is not None and (first / "io/grpc/InternalStatus.class").is_file()
    assert first.parent == cache and "--release 11" in calls.read_text()
    assert f"-cp {jar}" in calls.read_text()

    empty = tmp_path / "empty"
    empty.mkdir()
    assert pubsub_shim_dir(jar, path=str(empty), cache_dir=cache) == first  # no javac needed
    assert len(calls.read_text().splitlines()) == 1
    assert [p.name for p in cache.iterdir()] == [first.name]  # no build leftovers


def test_not_a_jar_is_an_emulator_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jar"
    bad.write_bytes(b"not a zip")
    with pytest.raises(EmulatorError, match="cannot read"):
        shim_needed(bad)


@pytest.mark.skipif(not REAL_PUBSUB_JARS, reason="no Pub/Sub emulator installed")
def test_installed_0_8_20_jar_needs_the_shim() -> None:
    jar = REAL_PUBSUB_JARS[-1]
    if "0.8.20" not in jar.name:
        pytest.skip(f"installed jar is {jar.name}")
    assert shim_needed(jar)


# ---------------------------------------------------------------- the object and the CLI


def test_attach_from_env() -> None:
    both = {"PUBSUB_EMULATOR_HOST": "127.0.0.1:1", "FIRESTORE_EMULATOR_HOST": "127.0.0.1:2"}
    attached = attach_from_env(both)
    assert attached == Emulators(pubsub_host="127.0.0.1:1", firestore_host="127.0.0.1:2")
    assert attached.env() == both and not attached.owned
    attached.stop()  # no processes: nothing to do
    assert attach_from_env({"PUBSUB_EMULATOR_HOST": "127.0.0.1:1"}) is None
    # The Storage emulator, when announced, rides along (google-cloud-storage wants a URL).
    three = {**both, "STORAGE_EMULATOR_HOST": "http://127.0.0.1:3"}
    attached = attach_from_env(three)
    assert attached is not None and attached.storage_host == "127.0.0.1:3" and attached.env() == three


def test_reset_on_a_dead_host_is_an_emulator_error() -> None:
    dead = Emulators(pubsub_host="127.0.0.1:1", firestore_host=f"127.0.0.1:{emu.free_port()}")
    with pytest.raises(EmulatorError, match="Firestore reset failed"):
        dead.reset_firestore("p", timeout=2)


def test_run_cli_exits_2_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(SDK_ROOT_ENV, str(tmp_path / "none"))
    assert emu.main(["run", "--", "true"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        "error: Pub/Sub and Firestore emulators not found"
    )


def test_run_cli_process_exit_code(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", SDK_ROOT_ENV: str(tmp_path / "none")}
    proc = subprocess.run(
        [sys.executable, "-m", "devtools.emulators", "run", "--", "true"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "gcloud components install" in proc.stderr
    assert proc.stdout == ""


def test_run_cli_without_command_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exit_info:
        emu.main(["run", "--"])
    assert exit_info.value.code == 2
