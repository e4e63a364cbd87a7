"""handlers.image_builds.local: a deterministic, content-addressed artifact per service (real files in tmp)."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from daemon.config import Settings
from handlers.base import EffectContext
from handlers.image_builds.local import build_artifact, build_local, check_requirements
from machines.architecture import load_architecture
from machines.errors import HandlerError
from machines.hydration import hydrate
from machines.messages import RunView

TESTDATA = Path(__file__).resolve().parents[2] / "testdata"


def make_service(root: Path, name: str = "svc", files: dict[str, str] | None = None) -> Path:
    folder = root / name
    (folder / "pkg").mkdir(parents=True)
    contents = {
        "main.py": "import pkg.util\nprint(pkg.util.VALUE)\n",
        "pkg/__init__.py": "",
        "pkg/util.py": "VALUE = 42\n",
        "requirements.txt": "# deps\nrequests>=2.31  # http\npyyaml==6.0.1; python_version >= '3.8'\n",
    }
    contents.update(files or {})
    for rel, text in contents.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``folder`` with its size and mtime (ns)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        st = path.lstat()
        out[str(path.relative_to(folder))] = (st.st_size, st.st_mtime_ns)
    return out


def members(artifact_path: Path) -> list[str]:
    with tarfile.open(artifact_path) as tar:
        return tar.getnames()


# ---- determinism ----------------------------------------------------------------------------


def test_same_source_gives_same_digest_and_identical_bytes(tmp_path: Path) -> None:
    first = make_service(tmp_path / "a")
    second = make_service(tmp_path / "b")  # same content, other path, other mtimes/inodes
    os.utime(second / "main.py", (1_000_000, 1_000_000))

    one = build_artifact("svc", first, tmp_path / "out1")
    two = build_artifact("svc", second, tmp_path / "out2")

    assert one.digest == two.digest
    assert one.path.read_bytes() == two.path.read_bytes()
    assert one.path == tmp_path / "out1" / f"svc-{one.digest}.tar.gz"
    assert one.image == f"local://svc@sha256:{one.digest}"
    assert one.size == one.path.stat().st_size
    assert hashlib.sha256(one.path.read_bytes()).hexdigest() == one.digest


def test_touched_mtime_does_not_change_the_digest(tmp_path: Path) -> None:
    folder = make_service(tmp_path)
    before = build_artifact("svc", folder, tmp_path / "out")
    for path in folder.rglob("*"):
        os.utime(path, (2_000_000_000, 2_000_000_000))

    after = build_artifact("svc", folder, tmp_path / "out")

    assert after.digest == before.digest


def test_permission_bits_other_than_exec_do_not_change_the_digest(tmp_path: Path) -> None:
    folder = make_service(tmp_path)
    before = build_artifact("svc", folder, tmp_path / "out")
    (folder / "main.py").chmod(0o600)
    (folder / "pkg").chmod(0o700)

    assert build_artifact("svc", folder, tmp_path / "out").digest == before.digest


def test_a_content_change_changes_the_digest(tmp_path: Path) -> None:
    folder = make_service(tmp_path)
    before = build_artifact("svc", folder, tmp_path / "out")
    (folder / "pkg" / "util.py").write_text("VALUE = 43\n")

    after = build_artifact("svc", folder, tmp_path / "out")

    assert after.digest != before.digest
    assert before.path.exists() and after.path.exists()  # content-addressed: both kept


def test_an_exec_bit_or_a_new_file_changes_the_digest(tmp_path: Path) -> None:
    folder = make_service(tmp_path)
    base = build_artifact("svc", folder, tmp_path / "out").digest
    (folder / "main.py").chmod(0o755)
    executable = build_artifact("svc", folder, tmp_path / "out").digest
    (folder / "README").write_text("hi\n")
    with_file = build_artifact("svc", folder, tmp_path / "out").digest

    assert len({base, executable, with_file}) == 3


def test_tar_metadata_is_normalised(tmp_path: Path) -> None:
    folder = make_service(tmp_path)
    (folder / "run.sh").write_text("#!/bin/sh\n")
    (folder / "run.sh").chmod(0o775)
    artifact = build_artifact("svc", folder, tmp_path / "out")

    data = artifact.path.read_bytes()
    assert data[:2] == b"\x1f\x8b"
    assert data[4:8] == b"\x00\x00\x00\x00"  # gzip header mtime 0
    assert data[3] & 0x08 == 0  # no file name stored in the gzip header
    with tarfile.open(artifact.path) as tar:
        infos = tar.getmembers()
    names = [i.name for i in infos]
    assert names == sorted(names)  # here depth-first per-folder order is also plain sorted order
    for info in infos:
        assert (info.mtime, info.uid, info.gid, info.uname, info.gname) == (0, 0, 0, "", "")
    modes = {i.name: i.mode for i in infos}
    assert modes["main.py"] == 0o644
    assert modes["run.sh"] == 0o755
    assert modes["pkg"] == 0o755
    with gzip.open(artifact.path) as gz:
        assert gz.read()  # a valid stream


def test_caches_vcs_and_virtualenvs_are_excluded(tmp_path: Path) -> None:
    clean = make_service(tmp_path / "clean")
    dirty = make_service(tmp_path / "dirty")
    (dirty / "__pycache__").mkdir()
    (dirty / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"\x00junk")
    (dirty / "pkg" / "__pycache__").mkdir()
    (dirty / "pkg" / "__pycache__" / "util.cpython-311.pyc").write_bytes(b"\x00junk")
    (dirty / "stray.pyc").write_bytes(b"\x00junk")
    (dirty / ".pytest_cache" / "v").mkdir(parents=True)
    (dirty / ".pytest_cache" / "v" / "lastfailed").write_text("{}")
    (dirty / ".git").mkdir()
    (dirty / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (dirty / ".venv" / "lib").mkdir(parents=True)
    (dirty / ".venv" / "lib" / "site.py").write_text("x = 1\n")
    (dirty / "myenv" / "bin").mkdir(parents=True)  # a virtualenv by its marker, whatever its name
    (dirty / "myenv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (dirty / "myenv" / "bin" / "python").write_text("")

    a = build_artifact("svc", clean, tmp_path / "out-a")
    b = build_artifact("svc", dirty, tmp_path / "out-b")

    names = members(b.path)
    assert not any(
        part in ("__pycache__", ".pytest_cache", ".git", ".venv", "myenv")
        for n in names
        for part in n.split("/")
    )
    assert not any(n.endswith(".pyc") for n in names)
    assert b.digest == a.digest


def test_an_artifact_store_inside_the_service_folder_is_not_packed(tmp_path: Path) -> None:
    folder = make_service(tmp_path)
    first = build_artifact("svc", folder, folder / "artifacts")
    second = build_artifact("svc", folder, folder / "artifacts")

    assert second.digest == first.digest
    assert not any(n.startswith("artifacts") for n in members(second.path))


def test_symlinks_are_stored_as_links(tmp_path: Path) -> None:
    folder = make_service(tmp_path)
    (folder / "link.py").symlink_to("main.py")
    artifact = build_artifact("svc", folder, tmp_path / "out")

    with tarfile.open(artifact.path) as tar:
        link = tar.getmember("link.py")
    assert link.issym() and link.linkname == "main.py"


# ---- idempotency and the source folder ------------------------------------------------------


def test_an_existing_artifact_is_reused(tmp_path: Path) -> None:
    folder = make_service(tmp_path)
    first = build_artifact("svc", folder, tmp_path / "out")
    stamp = first.path.stat()

    second = build_artifact("svc", folder, tmp_path / "out")

    assert second == first
    assert (
        second.path.stat().st_ino == stamp.st_ino
        and second.path.stat().st_mtime_ns == stamp.st_mtime_ns
    )
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [first.path.name]  # no leftovers


def test_the_source_folder_gets_no_new_files(tmp_path: Path) -> None:
    folder = make_service(tmp_path)
    before = snapshot(folder)

    build_artifact("svc", folder, tmp_path / "out")
    assert snapshot(folder) == before

    (folder / "broken.py").write_text("def broken(:\n")
    before = snapshot(folder)
    with pytest.raises(HandlerError):
        build_artifact("svc", folder, tmp_path / "out")
    assert snapshot(folder) == before
    assert not list(folder.rglob("__pycache__")) and not list(folder.rglob("*.pyc"))


# ---- failures ---------------------------------------------------------------------------------


def test_a_syntax_error_fails_with_the_service_name_and_compiler_output(tmp_path: Path) -> None:
    folder = make_service(tmp_path, "payments", {"pkg/bad.py": "def total(:\n    return 1\n"})

    with pytest.raises(HandlerError) as err:
        build_artifact("payments", folder, tmp_path / "out")

    message = err.value.message
    assert err.value.retryable is False
    assert "'payments'" in message
    assert "compileall" in message
    assert "bad.py" in message and "SyntaxError" in message
    assert str(folder) in message  # the source path, not the temporary copy's
    assert "podium-build-" not in message
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.tar.gz"))


def test_the_output_tail_is_bounded(tmp_path: Path) -> None:
    files = {f"pkg/bad{i:03}.py": "def f(:\n" for i in range(60)}
    folder = make_service(tmp_path, "noisy", files)

    with pytest.raises(HandlerError) as err:
        build_artifact("noisy", folder, tmp_path / "out")

    assert len(err.value.message) < 2300
    assert "bad059.py" in err.value.message  # the tail keeps the end


def test_a_bad_requirements_line_fails(tmp_path: Path) -> None:
    folder = make_service(tmp_path, "api", {"requirements.txt": "requests>=2\nflask==\n"})

    with pytest.raises(HandlerError) as err:
        build_artifact("api", folder, tmp_path / "out")

    assert err.value.retryable is False
    assert "'api'" in err.value.message
    assert "requirements.txt" in err.value.message
    assert "line 2" in err.value.message and "flask==" in err.value.message


def test_a_missing_folder_fails(tmp_path: Path) -> None:
    with pytest.raises(HandlerError) as err:
        build_artifact("ghost", tmp_path / "nope", tmp_path / "out")

    assert err.value.retryable is False
    assert "'ghost'" in err.value.message and "does not exist" in err.value.message


def test_check_requirements_accepts_pip_syntax() -> None:
    text = (
        "# comment\n"
        "\n"
        "-r base.txt\n"
        "--index-url https://example.org/simple\n"
        "requests[socks]>=2.31,<3 ; python_version >= '3.8'  # why\n"
        "pkg @ https://example.org/pkg-1.0.tar.gz#sha256=abc\n"
        "hashed==1.0 \\\n"
        "    --hash=sha256:0123456789abcdef\n"
    )
    assert check_requirements(text) == []
    (problem,) = check_requirements("ok==1\n\nnot a requirement!!\n")
    assert problem.startswith("line 3: 'not a requirement!!'")


# ---- the handler ------------------------------------------------------------------------------


def make_ctx(source_root: Path, state_dir: Path, item: str) -> EffectContext:
    arch = hydrate(load_architecture((source_root / "architecture.yaml").read_text()))
    return EffectContext(
        run_id="demo-1",
        effect_id=f"demo-1:a0:build:{item}",
        kind="build",
        item=item,
        params={},
        attempt=0,
        run=RunView.model_validate({"run_id": "demo-1", "architecture": arch.to_dict(), "source_root": str(source_root)}),
        settings=Settings(project="podium-test", state_dir=state_dir),
    )


def test_build_local_builds_testdata_publisher(tmp_path: Path) -> None:
    root = tmp_path / "src"
    shutil.copytree(TESTDATA, root, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    before = snapshot(root / "publisher")

    outcomes = build_local(make_ctx(root, tmp_path / "state", "publisher"))

    assert len(outcomes) == 1
    outcome = outcomes[0]
    assert (outcome.type, outcome.item) == ("build.succeeded", "publisher")
    digest = outcome.data["digest"].removeprefix("sha256:")
    assert outcome.data["image"] == f"local://publisher@sha256:{digest}"
    artifact = Path(outcome.data["artifact"])
    assert artifact == tmp_path / "state" / "artifacts" / f"publisher-{digest}.tar.gz"
    assert outcome.data["bytes"] == artifact.stat().st_size
    assert {"main.py", "requirements.txt", "tests/test_preflight.py"} <= set(members(artifact))
    assert snapshot(root / "publisher") == before
    # Again: same outcome (idempotent).
    assert build_local(make_ctx(root, tmp_path / "state", "publisher")) == outcomes


def test_build_local_builds_the_director_too(tmp_path: Path) -> None:
    root = tmp_path / "src"
    shutil.copytree(TESTDATA, root, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))

    (outcome,) = build_local(make_ctx(root, tmp_path / "state", "director"))

    assert outcome.item == "director" and outcome.data["image"].startswith(
        "local://director@sha256:"
    )


def test_build_local_unknown_service_is_not_retryable(tmp_path: Path) -> None:
    root = tmp_path / "src"
    shutil.copytree(TESTDATA, root, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))

    with pytest.raises(HandlerError) as err:
        build_local(make_ctx(root, tmp_path / "state", "nobody"))

    assert err.value.retryable is False and "'nobody'" in err.value.message
