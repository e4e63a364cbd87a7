"""The ``build`` effect (``ctx.item`` = a service name, the director included).

Two backends share one deterministic source tarball (``handlers.build.local.write_source_tarball``:
sorted entries, mtime 0, uid/gid 0, no owner names, normalised modes, gzip header mtime 0, caches
and virtualenvs left out), so the same source gives the same bytes and the same sha256:

* ``local`` (``handlers.build.local.build_local``): byte-compiles a temporary copy of the service
  folder and checks its ``requirements.txt``, then stores the tarball as a content-addressed
  artifact ``<state_dir>/artifacts/<service>-<sha256>.tar.gz`` and reports
  ``build.succeeded`` with ``image = local://<service>@sha256:<sha256>``.
* ``gcp`` (``handlers.build.gcp.build_gcp``): uploads the tarball to
  ``gs://<project>_cloudbuild/source/`` and starts a Cloud Build (Dockerfile or buildpacks), tagged
  with the run, service and effect so that it is found again instead of started twice. It does not
  wait: completion arrives on Cloud Build's ``cloud-builds`` topic, which
  ``handlers.build.cloud_builds.event_from_cloud_build`` maps to ``build.succeeded|failed``.

Nothing here is imported eagerly: ``local`` needs only the standard library and ``packaging``;
``gcp`` needs the ``gcp`` extra.
"""

from __future__ import annotations

__all__: list[str] = []
