"""The ``gcp`` backend: every effect kind's handler against real Google Cloud APIs."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

from daemon.config import Settings
from handlers import director
from handlers.base import Handler
from handlers.configgen import configgen_effect
from handlers.preflight import preflight_effect


def handlers(settings: Settings) -> Mapping[str, Handler]:
    from handlers.build.gcp import build_gcp
    from handlers.deploy.gcp import deploy_gcp
    from handlers.iam import effects as iam
    from handlers.iam.gcp import GcpIam

    backend = GcpIam(project=settings.project)
    return {
        "configgen": configgen_effect,
        "preflight": preflight_effect,
        "iam.provision": partial(iam.provision, backend=backend),
        "iam.verify": partial(iam.verify, backend=backend),
        "iam.bind": partial(iam.bind, backend=backend),
        "build": build_gcp,
        "deploy": deploy_gcp,
        "director.command": director.send,
    }
