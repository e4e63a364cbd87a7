"""A run's source tree from a ``gs://`` tarball: fetched once per replica, checked, unpacked.

The daemon on Cloud Run has no checkout of the services' code. A start command may name
``source_root: gs://BUCKET/OBJECT.tar.gz`` (optionally ``#sha256=<hex>``, which ``podium start
--upload`` adds): the first effect of the run on a replica downloads the object, checks it and
unpacks it under ``<state_dir>/sources/<digest of the URL>/tree``; every later effect of that
run on that replica reuses the tree. Every replica regenerates the run's ``resources.yaml`` /
``services.yaml`` in its copy, so a build on any replica packs the same files.

Checks, because whoever can publish a start command chooses the archive:
* the object's size is read first: at most ``MAX_ARCHIVE_BYTES``;
* ``#sha256=`` pins the content: a mismatch fails the run (non-retryable);
* unpacking uses ``tarfile``'s ``data`` filter (no absolute paths, no ``..``, no links leaving
  the tree, no devices) plus caps on members and unpacked bytes (a gzip bomb stops at the cap).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tarfile
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from handlers.gcp_clients import clients_for
from handlers.google_errors import api_error
from handlers.settings import HandlerSettings
from machines.errors import HandlerError

__all__ = [
    "MAX_ARCHIVE_BYTES",
    "MAX_MEMBERS",
    "MAX_UNPACKED_BYTES",
    "GsSource",
    "gs_source_problem",
    "local_tree",
    "parse_gs_source",
    "unpack",
]

MAX_ARCHIVE_BYTES = 512 * 2**20
MAX_UNPACKED_BYTES = 2 * 2**30
MAX_MEMBERS = 50_000
_URL = re.compile(
    r"^gs://(?P<bucket>[a-z0-9][a-z0-9._-]{1,220}[a-z0-9])/(?P<object>[^#\x00-\x1f]{1,1024}?)"
    r"(?:#sha256=(?P<sha256>[0-9a-f]{64}))?$"
)
_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


@dataclass(frozen=True)
class GsSource:
    bucket: str
    object: str
    sha256: str | None

    @property
    def url(self) -> str:
        return f"gs://{self.bucket}/{self.object}"


def parse_gs_source(url: str) -> GsSource:
    match = _URL.match(url)
    if match is None or not match["object"].endswith((".tar.gz", ".tgz", ".tar")):
        raise ValueError(
            f"{url[:200]!r} is not gs://BUCKET/OBJECT.tar.gz[#sha256=HEX] (a gzipped or plain tarball)"
        )
    return GsSource(match["bucket"], match["object"], match["sha256"])


def gs_source_problem(url: str) -> str | None:
    """Why a ``gs://`` source root is malformed (None if it is well formed)."""
    try:
        parse_gs_source(url)
    except ValueError as exc:
        return str(exc)
    return None


def local_tree(url: str, settings: HandlerSettings, prepare: Callable[[Path], Any]) -> Path:
    """The unpacked tree of a run's ``gs://`` source root on this replica (fetched on first use);
    ``prepare`` runs on a fresh tree before it is published (the run's generated configs)."""
    try:
        source = parse_gs_source(url)
    except ValueError as exc:
        raise HandlerError(f"source_root: {exc}", retryable=False) from exc
    home = Path(settings.state_dir) / "sources" / hashlib.sha256(url.encode()).hexdigest()[:24]
    tree = home / "tree"
    with _lock_for(str(home)):
        if (home / "complete").is_file():
            return tree
        home.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=home) as scratch:
            archive = Path(scratch) / "archive"
            _download(clients_for(settings).get("storage"), source, archive)
            staged = Path(scratch) / "tree"
            unpack(archive, staged)
            prepare(staged)
            shutil.rmtree(tree, ignore_errors=True)
            staged.rename(tree)
        (home / "complete").write_text(url + "\n")
    return tree


def _lock_for(key: str) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(key, threading.Lock())


def _download(storage: Any, source: GsSource, dest: Path) -> None:
    from google.api_core import exceptions as gexc

    what = f"fetching the source archive {source.url}"
    try:
        blob = storage.bucket(source.bucket).get_blob(source.object)
    except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
        raise api_error(exc, what) from exc
    if blob is None:
        raise HandlerError(f"{what}: no such object", retryable=False)
    if blob.size is not None and blob.size > MAX_ARCHIVE_BYTES:
        raise HandlerError(f"{what}: {blob.size} bytes; at most {MAX_ARCHIVE_BYTES} are accepted", retryable=False)
    try:
        with dest.open("wb") as fh:
            blob.download_to_file(fh)
    except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
        raise api_error(exc, what) from exc
    size = dest.stat().st_size
    if size > MAX_ARCHIVE_BYTES:
        raise HandlerError(f"{what}: {size} bytes; at most {MAX_ARCHIVE_BYTES} are accepted", retryable=False)
    if source.sha256 is not None:
        digest = hashlib.sha256()
        with dest.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        if digest.hexdigest() != source.sha256:
            raise HandlerError(
                f"{what}: its sha256 is {digest.hexdigest()}, not the {source.sha256} the start command pinned",
                retryable=False,
            )


def unpack(archive: Path, dest: Path) -> None:
    """Unpack a (gzipped) tarball into ``dest`` with the ``data`` filter and the caps above."""
    dest.mkdir(parents=True)
    total = 0
    try:
        with tarfile.open(archive, "r:*") as tar:
            for count, member in enumerate(tar, start=1):
                if count > MAX_MEMBERS:
                    raise HandlerError(f"source archive has more than {MAX_MEMBERS} entries", retryable=False)
                total += max(member.size, 0)
                if total > MAX_UNPACKED_BYTES:
                    raise HandlerError(
                        f"source archive unpacks to more than {MAX_UNPACKED_BYTES} bytes", retryable=False
                    )
                tar.extract(member, dest, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise HandlerError(f"source archive cannot be unpacked safely: {exc}", retryable=False) from exc

