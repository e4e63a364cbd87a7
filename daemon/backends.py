"""Which handler runs each effect kind, by backend (DESIGN.md §3 ``PODIUM_BACKEND``)."""

from __future__ import annotations

from collections.abc import Mapping

from daemon.config import Settings
from handlers import standin
from handlers.base import Handler


def handlers_for(settings: Settings) -> Mapping[str, Handler]:
    if settings.backend == "standin":
        return standin.HANDLERS
    from handlers import local_backend

    if settings.backend == "local":
        return local_backend.handlers(settings)
    from handlers import gcp_backend

    return gcp_backend.handlers(settings)


def concurrency_for(settings: Settings) -> dict[str, int]:
    return {"preflight": settings.preflight_concurrency, "build": settings.build_concurrency}
