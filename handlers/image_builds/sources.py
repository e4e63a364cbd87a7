"""What both ``build`` backends share: the service's source listing, its deterministic tarball,
and the ``build`` effect's target.

* ``source_entries(root)`` lists a service folder (sorted, depth first; ``__pycache__``,
  ``.pytest_cache``, ``.git``, tool caches, virtualenvs, ``*.pyc``/``*.pyo`` and any folder in
  ``exclude`` left out; symlinks kept as symlinks, never followed).
* ``write_source_tarball(root, entries, out)`` streams the ``tar.gz`` of those entries into
  ``out`` while hashing it, so the source is never held in memory (the Go anchor tarred the whole
  ``source_path`` in memory): sorted entries, mtime 0, uid/gid 0, no owner names, normalised
  modes, gzip header mtime 0.
* ``copy_entries(root, entries, dest)`` copies the folders and regular files into a scratch
  folder (the ``local`` backend builds the copy, never the source).
* ``resolve_service(ctx)`` is the service, spec and (contained) build folder of a ``build``
  effect.

Why deterministic: both backends name what they build by the tarball's sha256 (the ``local``
artifact ``<service>-<sha256>.tar.gz`` and its ``local://<service>@sha256:...`` image; the
``gcp`` source object ``gs://<project>_cloudbuild/source/<service>-<sha256>.tar.gz`` and its
image tag), so an unchanged service must give the same bytes: a rebuild then reuses the artifact
or the uploaded object instead of producing a new one. Same file contents, names and executable
bits → same bytes, whatever the mtimes, owners or umask. The gzip stream comes from the local
zlib, so "same bytes" holds for one zlib build (in practice: one machine or image).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Literal

from handlers.base import EffectContext
from machines.errors import HandlerError

if TYPE_CHECKING:
    from machines.architecture import ServiceSpec

__all__ = [
    "DIR_MODE",
    "EXCLUDED_DIRS",
    "EXCLUDED_SUFFIXES",
    "EXEC_MODE",
    "FILE_MODE",
    "LINK_MODE",
    "SourceEntry",
    "copy_entries",
    "resolve_service",
    "source_entries",
    "write_source_tarball",
]

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
class SourceEntry:
    path: PurePosixPath  # relative to the service folder
    kind: Literal["dir", "file", "symlink"]
    mode: int
    target: str = ""  # a symlink's target, as written


# ---------------------------------------------------------------------------------------------
# The source listing and the deterministic tarball.
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
# The build effect's target.
# ---------------------------------------------------------------------------------------------


def resolve_service(ctx: EffectContext) -> tuple[str, ServiceSpec, Path]:
    """(service, its spec, its build folder) for a ``build`` effect, or a non-retryable error."""
    from handlers.configgen import contained_service_dir

    service = ctx.item or ""
    service, _dataflow, spec = ctx.target()
    if spec.deployment is None:
        raise HandlerError(
            f"build of service {service!r}: it has no deployment, so there is nothing to build",
            retryable=False,
        )
    return service, spec, contained_service_dir(spec, ctx.source_root)  # never outside the root
