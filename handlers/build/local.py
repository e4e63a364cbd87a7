"""The ``local`` build: a real, content-addressed artifact per service.

``build_artifact(service, service_dir, out_dir)``:

1. lists the service folder (sorted; ``__pycache__``, ``.pytest_cache``, ``.git``, tool caches,
   virtualenvs, ``*.pyc``/``*.pyo`` and the artifact folder itself left out; symlinks kept as
   symlinks, never followed) and copies those files into a temporary folder;
2. builds the copy: ``python -m compileall -q`` (so no ``.pyc`` is ever written into the source)
   and, when there is a ``requirements.txt``, checks that every requirement line is a PEP 508
   requirement (``packaging.requirements.Requirement``; pip options such as ``-r``/``--hash``
   are allowed);
3. writes the deterministic ``tar.gz`` of the copy (``write_source_tarball``) atomically to
   ``<out_dir>/<service>-<sha256>.tar.gz``. An artifact that already exists is the same bytes
   (its name is its digest), so it is reused: building twice is harmless.

The tarball is streamed to disk while it is hashed; the source is never held in memory (the Go
anchor tarred the whole ``source_path`` in memory). Determinism: same file contents, names and
executable bits → same bytes, whatever the mtimes, owners or umask. The gzip stream comes from
the local zlib, so "same bytes" holds for one zlib build (in practice: one machine or image).

A failing build raises ``HandlerError(retryable=False)`` naming the service, with the tail of the
compiler's (or the requirements check's) output.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Literal

from handlers.base import EffectContext, Outcome
from machines.errors import HandlerError

if TYPE_CHECKING:
    from machines.architecture import ServiceSpec

__all__ = [
    "Artifact",
    "SourceEntry",
    "build_artifact",
    "build_local",
    "check_requirements",
    "local_image",
    "resolve_service",
    "source_entries",
    "write_source_tarball",
]

OUTPUT_TAIL_CHARS = 2000
COMPILE_TIMEOUT_SECONDS = 300.0

EXCLUDED_DIRS = frozenset(
    {
        "__pycache__",
        ".pytest_cache",
        ".mypy_cache",
        ".ruff_cache",
        ".git",
        ".hg",
        ".svn",
        ".venv",
        "venv",
        ".tox",
        ".nox",
        ".podium",
    }
)
EXCLUDED_SUFFIXES = (".pyc", ".pyo")
FILE_MODE, EXEC_MODE, DIR_MODE, LINK_MODE = 0o644, 0o755, 0o755, 0o777


@dataclass(frozen=True)
class Artifact:
    service: str
    digest: str  # hex sha256 of the tar.gz bytes
    path: Path
    image: str  # local://<service>@sha256:<digest>
    size: int


@dataclass(frozen=True)
class SourceEntry:
    path: PurePosixPath  # relative to the service folder
    kind: Literal["dir", "file", "symlink"]
    mode: int
    target: str = ""  # a symlink's target, as written


def local_image(service: str, digest: str) -> str:
    return f"local://{service}@sha256:{digest}"


# ---------------------------------------------------------------------------------------------
# The deterministic tarball (shared with the gcp backend).
# ---------------------------------------------------------------------------------------------


def _is_virtualenv(path: Path) -> bool:
    return (path / "pyvenv.cfg").is_file()


def source_entries(root: Path, *, exclude: Iterable[Path] = ()) -> list[SourceEntry]:
    """Everything under ``root`` that belongs in a build, depth first, each folder sorted by name.

    Left out: caches, VCS folders, virtualenvs (by name or by their ``pyvenv.cfg``), ``*.pyc``,
    sockets/FIFOs, and any folder in ``exclude`` (e.g. the artifact store, if it lives inside)."""
    root = Path(root)
    excluded = {Path(p).resolve() for p in exclude}
    out: list[SourceEntry] = []

    def visit(folder: Path, rel: PurePosixPath) -> None:
        with os.scandir(folder) as it:
            children = sorted(it, key=lambda e: e.name)
        for child in children:
            path, name = Path(child.path), rel / child.name
            if child.is_symlink():
                out.append(SourceEntry(name, "symlink", LINK_MODE, os.readlink(path)))
            elif child.is_dir(follow_symlinks=False):
                if (
                    child.name in EXCLUDED_DIRS
                    or _is_virtualenv(path)
                    or path.resolve() in excluded
                ):
                    continue
                out.append(SourceEntry(name, "dir", DIR_MODE))
                visit(path, name)
            elif child.is_file(follow_symlinks=False):
                if child.name.endswith(EXCLUDED_SUFFIXES):
                    continue
                executable = child.stat(follow_symlinks=False).st_mode & 0o111
                out.append(SourceEntry(name, "file", EXEC_MODE if executable else FILE_MODE))

    visit(root, PurePosixPath())
    return out


class _HashingWriter:
    """Writes through to ``raw`` while hashing and counting the bytes (all ``GzipFile`` needs)."""

    def __init__(self, raw: IO[bytes]):
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        self.raw.write(view)
        self.sha256.update(view)
        self.size += len(view)
        return len(view)

    def flush(self) -> None:
        self.raw.flush()


def _tarinfo(name: str, kind: str, mode: int, size: int = 0, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = {"dir": tarfile.DIRTYPE, "file": tarfile.REGTYPE, "symlink": tarfile.SYMTYPE}[kind]
    info.mode, info.size, info.linkname = mode, size, target
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    return info


def write_source_tarball(
    root: Path,
    entries: Sequence[SourceEntry],
    out: IO[bytes],
    *,
    prefix: str = "",
) -> tuple[str, int]:
    """Stream the deterministic ``tar.gz`` of ``entries`` (read from ``root``) into ``out``.

    ``prefix`` (a relative POSIX path) puts every entry under that folder in the archive.
    Returns (hex sha256 of the bytes written, their count)."""
    sink = _HashingWriter(out)
    prefix_path = PurePosixPath(prefix) if prefix not in ("", ".") else PurePosixPath()
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=sink, mtime=0, compresslevel=9) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for depth in range(1, len(prefix_path.parts) + 1):
            folder = PurePosixPath(*prefix_path.parts[:depth])
            tar.addfile(_tarinfo(str(folder), "dir", DIR_MODE))
        for entry in entries:
            name = str(prefix_path / entry.path)
            if entry.kind == "file":
                source = Path(root, entry.path)
                with source.open("rb") as fh:
                    size = os.fstat(fh.fileno()).st_size
                    tar.addfile(_tarinfo(name, "file", entry.mode, size), fh)
            else:
                tar.addfile(_tarinfo(name, entry.kind, entry.mode, target=entry.target))
    return sink.sha256.hexdigest(), sink.size


def copy_entries(root: Path, entries: Sequence[SourceEntry], dest: Path) -> None:
    """Copy the folders and regular files of ``entries`` into ``dest`` (symlinks are not
    recreated, so nothing run in the copy can reach back into the source)."""
    dest.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        target = dest.joinpath(entry.path)
        if entry.kind == "dir":
            target.mkdir(exist_ok=True)
        elif entry.kind == "file":
            shutil.copyfile(Path(root, entry.path), target)


# ---------------------------------------------------------------------------------------------
# The build step.
# ---------------------------------------------------------------------------------------------

_COMMENT = re.compile(r"(^|\s)#.*$")
_OPTION_TAIL = re.compile(r"\s+--?[A-Za-z].*$")  # per-requirement options, e.g. --hash=...


def check_requirements(text: str) -> list[str]:
    """Problems in a ``requirements.txt`` (empty when every requirement line is PEP 508).

    Comments, blank lines and pip option lines (``-r``, ``-c``, ``-e``, ``--index-url`` ...) are
    skipped; ``\\`` continuations are joined; trailing per-requirement options are ignored."""
    from packaging.requirements import InvalidRequirement, Requirement

    logical: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append((start, pending + line))
        pending = ""
    if pending:
        logical.append((start, pending))

    problems: list[str] = []
    for number, raw in logical:
        line = _COMMENT.sub("", raw).strip()
        if not line or line.startswith("-"):
            continue
        try:
            Requirement(_OPTION_TAIL.sub("", line))
        except InvalidRequirement as exc:
            problems.append(f"line {number}: {raw.strip()!r} is not a PEP 508 requirement: {exc}")
    return problems


def _tail(text: str) -> str:
    return text[-OUTPUT_TAIL_CHARS:]


def _fail(service: str, what: str, output: str) -> HandlerError:
    return HandlerError(
        f"build of service {service!r} failed: {what}\n{_tail(output)}", retryable=False
    )


def _compile(service: str, work: Path, shown_as: Path, timeout: float) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPYCACHEPREFIX", "PYTHONPATH")}
    command = [sys.executable, "-m", "compileall", "-q", str(work)]
    try:
        proc = subprocess.run(
            command,
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise HandlerError(
            f"build of service {service!r} failed: compileall did not finish in {timeout:.0f}s",
            retryable=False,
        ) from exc
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr).replace(str(work), str(shown_as))
        raise _fail(service, f"python -m compileall found errors in {shown_as}:", output)


def _check_requirements_file(service: str, work: Path, shown_as: Path) -> None:
    path = work / "requirements.txt"
    if not path.is_file():
        return
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(service, f"{shown_as / 'requirements.txt'} is not UTF-8: {exc}", "") from exc
    problems = check_requirements(text)
    if problems:
        raise _fail(service, f"{shown_as / 'requirements.txt'} is not valid:", "\n".join(problems))


def build_artifact(
    service: str,
    service_dir: Path,
    out_dir: Path,
    *,
    timeout: float = COMPILE_TIMEOUT_SECONDS,
) -> Artifact:
    """Build ``service_dir`` into ``<out_dir>/<service>-<sha256>.tar.gz`` (see the module doc)."""
    service_dir, out_dir = Path(service_dir), Path(out_dir)
    if not service_dir.is_dir():
        raise HandlerError(
            f"build of service {service!r} failed: source folder {service_dir} does not exist",
            retryable=False,
        )
    try:
        entries = source_entries(service_dir, exclude=[out_dir])
        with tempfile.TemporaryDirectory(prefix=f"podium-build-{service}-") as tmp:
            work = Path(tmp) / "src"
            copy_entries(service_dir, entries, work)
            _compile(service, work, service_dir, timeout)
            _check_requirements_file(service, work, service_dir)
            return _store(service, work, entries, out_dir)
    except OSError as exc:
        raise HandlerError(
            f"build of service {service!r}: I/O error: {exc}", retryable=True
        ) from exc


def _store(service: str, work: Path, entries: Sequence[SourceEntry], out_dir: Path) -> Artifact:
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, part_name = tempfile.mkstemp(dir=out_dir, prefix=f".{service}-", suffix=".tar.gz.part")
    part = Path(part_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            digest, size = write_source_tarball(work, entries, fh)
            fh.flush()
            os.fsync(fh.fileno())
        final = out_dir / f"{service}-{digest}.tar.gz"
        if final.is_file() and final.stat().st_size == size:
            part.unlink()  # same name = same bytes: reuse it
        else:
            os.chmod(part, 0o644)
            os.replace(part, final)
    except BaseException:
        with contextlib.suppress(OSError):
            part.unlink()
        raise
    return Artifact(service, digest, final, local_image(service, digest), size)


# ---------------------------------------------------------------------------------------------
# The handler.
# ---------------------------------------------------------------------------------------------


def resolve_service(ctx: EffectContext) -> tuple[str, ServiceSpec, Path]:
    """(service, its spec, its build folder) for a ``build`` effect, or a non-retryable error."""
    from handlers.configgen import contained_service_dir

    service = ctx.item or ""
    root = str(ctx.run.get("source_root") or "")
    if root.startswith("gs://"):
        raise HandlerError(
            f"build of service {service!r}: a gs:// source_root ({root}) is not supported by the build handler",
            retryable=False,
        )
    service, _dataflow, spec = ctx.target()
    if spec.deployment is None:
        raise HandlerError(
            f"build of service {service!r}: it has no deployment, so there is nothing to build",
            retryable=False,
        )
    return service, spec, contained_service_dir(spec, ctx.source_root)  # never outside the root


def build_local(ctx: EffectContext) -> Sequence[Outcome]:
    service, _spec, folder = resolve_service(ctx)
    artifact = build_artifact(service, folder, Path(ctx.settings.state_dir) / "artifacts")
    return [
        Outcome(
            "build.succeeded",
            service,
            {
                "image": artifact.image,
                "digest": f"sha256:{artifact.digest}",
                "artifact": str(artifact.path),
                "bytes": artifact.size,
            },
        )
    ]
