"""``podium start --upload gs://BUCKET/OBJECT.tar.gz``: ship the source folder with the command.

The daemon on Cloud Run has no checkout of the services' code. ``--upload`` packs the folder
holding the architecture file into the same deterministic tarball the builds use (caches,
virtualenvs and VCS folders left out), uploads it, and names it in the start command with its
sha256, which the daemon checks before unpacking (``handlers/source_archives.py``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from handlers.gcp_clients import clients_for
from handlers.image_builds.sources import source_entries, write_source_tarball
from handlers.settings import HandlerSettings
from handlers.source_archives import parse_gs_source

__all__ = ["upload_source"]


def upload_source(folder: Path, url: str, settings: HandlerSettings) -> str:
    """Upload ``folder`` as a tarball to ``url``; returns ``url#sha256=<hex>`` for the command.

    Raises ValueError for a malformed URL; Google errors pass through (the caller prints them)."""
    source = parse_gs_source(url)
    if source.sha256 is not None:
        raise ValueError("--upload takes gs://BUCKET/OBJECT.tar.gz without #sha256 (it is computed)")
    storage = clients_for(settings).get("storage")
    with tempfile.TemporaryFile(prefix="podium-upload-") as fh:
        digest, _size = write_source_tarball(folder, source_entries(folder), fh)
        fh.seek(0)
        storage.bucket(source.bucket).blob(source.object).upload_from_file(fh, content_type="application/gzip")
    return f"{source.url}#sha256={digest}"
