"""The ``local`` build: a real, content-addressed artifact per service.

``build_artifact(service, service_dir, out_dir)``:

1. lists the service folder (``sources.source_entries``: sorted; ``__pycache__``,
   ``.pytest_cache``, ``.git``, tool caches, virtualenvs, ``*.pyc``/``*.pyo`` and the artifact
   folder itself left out; symlinks kept as symlinks, never followed) and copies those files into
   a temporary folder (``sources.copy_entries``);
2. builds the copy: ``python -m compileall -q`` (so no ``.pyc`` is ever written into the source)
   and, when there is a ``requirements.txt``, checks that every requirement line is a PEP 508
   requirement (``packaging.requirements.Requirement``; pip options such as ``-r``/``--hash``
   are allowed);
3. writes the deterministic ``tar.gz`` of the copy (``sources.write_source_tarball``) atomically
   to ``<out_dir>/<service>-<sha256>.tar.gz``. An artifact that already exists is the same bytes
   (its name is its digest), so it is reused: building twice is harmless.

The tarball is streamed to disk while it is hashed; the source is never held in memory (the Go
anchor tarred the whole ``source_path`` in memory). Determinism: same file contents, names and
executable bits → same bytes, whatever the mtimes, owners or umask (see ``sources``).

A failing build raises ``HandlerError(retryable=False)`` naming the service, with the tail of the
compiler's (or the requirements check's) output.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from handlers.base import EffectContext, Outcome
from handlers.image_builds.sources import (
    SourceEntry,
    copy_entries,
    resolve_service,
    source_entries,
    write_source_tarball,
)
from machines.errors import HandlerError

__all__ = [
    "Artifact",
    "build_artifact",
    "build_local",
    "check_requirements",
    "local_image",
]

OUTPUT_TAIL_CHARS = 2000
COMPILE_TIMEOUT_SECONDS = 300.0


@dataclass(frozen=True)
class Artifact:
    service: str
    digest: str  # hex sha256 of the tar.gz bytes
    path: Path
    image: str  # local://<service>@sha256:<digest>
    size: int


def local_image(service: str, digest: str) -> str:
    return f"local://{service}@sha256:{digest}"


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
