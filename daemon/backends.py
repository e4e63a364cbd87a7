"""Which handler runs each effect kind, by backend (DESIGN.md §3 ``PODIUM_BACKEND``).

Config generation, preflight and director commands are the same everywhere (files, local
subprocesses, Pub/Sub); IAM, builds and deploys have a ``local`` and a ``gcp`` backend.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

from daemon.config import Settings
from handlers import director, standin
from handlers.base import Handler
from handlers.configgen_effect import configgen_effect
from handlers.iam import effects as iam
from handlers.iam.base import IamBackend
from handlers.preflight import preflight_effect


def _table(
    iam_backend: IamBackend, build: Handler, deploy: Handler, undeploy: Handler, stop: Handler
) -> dict[str, Handler]:
    return {
        "configgen": configgen_effect,
        "preflight": preflight_effect,
        "iam.provision": partial(iam.provision, backend=iam_backend),
        "iam.verify": partial(iam.verify, backend=iam_backend),
        "iam.bind": partial(iam.bind, backend=iam_backend),
        "build": build,
        "deploy": partial(iam.deploy_then_grant_invokers, backend=iam_backend, deploy=deploy),
        "director.command": director.send,
        "undeploy": undeploy,
        "iam.remove": partial(iam.remove, backend=iam_backend),
        "stop": stop,
    }


def handlers_for(settings: Settings) -> Mapping[str, Handler]:
    if settings.backend == "standin":
        return standin.HANDLERS
    if settings.backend == "local":
        from handlers.deploy.local import deploy_local, stop_run_local, undeploy_local
        from handlers.iam.local import LocalIam
        from handlers.image_builds.local import build_local

        return _table(LocalIam(settings), build_local, deploy_local, undeploy_local, stop_run_local)
    from handlers.deploy.gcp import deploy_gcp, undeploy_gcp
    from handlers.gcp_clients import clients_for
    from handlers.iam.gcp import GcpIam
    from handlers.image_builds.gcp import build_gcp, stop_builds_gcp

    iam_backend = GcpIam(settings.project, clients=clients_for(settings), deployer=settings.service_account)
    return _table(iam_backend, build_gcp, deploy_gcp, undeploy_gcp, stop_builds_gcp)


def concurrency_for(settings: Settings) -> dict[str, int]:
    return {"preflight": settings.preflight_concurrency, "build": settings.build_concurrency}
