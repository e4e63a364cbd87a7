"""The ``deploy`` effect (``ctx.item`` = a service name; the director is deployed first, by the
same handler).

* ``local`` (:func:`handlers.deploy.local.deploy_local`): each service is a supervised process on
  this machine, started from the build's artifact, tracked in the Firestore registry
  ``podium_local_processes`` (:mod:`handlers.deploy.registry`) so that redoing a deploy or
  restarting the daemon adopts the running process instead of starting a second one, and
  health-checked on ``GET /healthz``. :func:`handlers.deploy.local.stop_all` is ``podium down``.
* ``gcp`` (:func:`handlers.deploy.gcp.deploy_gcp`): a Cloud Run service (Admin API v2), created
  or updated with a deterministic revision name; the long-running operation is never waited on
  (``NotReady`` until the revision is ready).

Both report ``deploy.succeeded`` with ``{"url": ...}``; failures are ``HandlerError``s (the
runner reports ``deploy.failed``). Nothing is imported eagerly: ``gcp`` needs the ``gcp`` extra.
"""

from __future__ import annotations

__all__: list[str] = []
