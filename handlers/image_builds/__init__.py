"""The ``build`` effect (``ctx.item`` = a service name, the director included): container image
builds of the services' sources.

``sources`` is what the two backends share: the source listing, the deterministic source
tarball (``handlers.image_builds.sources.write_source_tarball``: sorted entries, mtime 0,
uid/gid 0, no owner names, normalised modes, gzip header mtime 0, caches and virtualenvs left
out), so the same source gives the same bytes and the same sha256, and ``resolve_service`` (the
service, spec and build folder of a ``build`` effect). The backends:

* ``local`` (``handlers.image_builds.local.build_local``): byte-compiles a temporary copy of the
  service folder and checks its ``requirements.txt``, then stores the tarball as a
  content-addressed artifact ``<state_dir>/artifacts/<service>-<sha256>.tar.gz`` and reports
  ``build.succeeded`` with ``image = local://<service>@sha256:<sha256>``.
* ``gcp`` (``handlers.image_builds.gcp.build_gcp``): uploads the tarball to
  ``gs://<project>_cloudbuild/source/`` and starts a Cloud Build (Dockerfile or buildpacks), tagged
  with the run, service and effect so that it is found again instead of started twice. It does not
  wait: completion arrives on Cloud Build's ``cloud-builds`` topic, which
  ``machines.cloud_builds.event_from_cloud_build`` maps to ``build.succeeded|failed``.

Nothing here is imported eagerly: ``sources`` needs only the standard library, ``local`` also
``packaging``; ``gcp`` needs the ``gcp`` extra.
"""

from __future__ import annotations

__all__: list[str] = []
