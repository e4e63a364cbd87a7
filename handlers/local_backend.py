"""The ``local`` backend, the embedded default (DESIGN.md §2): every effect kind's handler
acting on this machine and the emulators."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

from daemon.config import Settings
from handlers import director
from handlers.base import Handler
from handlers.configgen import configgen_effect
from handlers.preflight import preflight_effect


def handlers(settings: Settings) -> Mapping[str, Handler]:
    from handlers.build.local import build_local
    from handlers.deploy.local import deploy_local
    from handlers.iam import effects as iam
    from handlers.iam.local import LocalIam

    backend = LocalIam(settings)
    return {
        "configgen": configgen_effect,
        "preflight": preflight_effect,
        "iam.provision": partial(iam.provision, backend=backend),
        "iam.verify": partial(iam.verify, backend=backend),
        "iam.bind": partial(iam.bind, backend=backend),
        "build": build_local,
        "deploy": deploy_local,
        "director.command": director.send,
    }
