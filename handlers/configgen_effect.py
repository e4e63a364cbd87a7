"""Effect kind ``configgen``: write every service's ``resources.yaml`` and the director's
``services.yaml``, and copy every ``config_templates`` entry (``handlers.configgen``), in the run's
source tree."""

from __future__ import annotations

from collections.abc import Sequence

from handlers.base import EffectContext, Outcome
from handlers.configgen import generate_configs
from machines.errors import HandlerError

__all__ = ["configgen_effect"]


def configgen_effect(ctx: EffectContext) -> Sequence[Outcome]:
    """Effect kind ``configgen``: write every service's files, report ``config.generated``."""
    try:
        files = generate_configs(ctx.architecture, ctx.source_root)
    except OSError as exc:
        raise HandlerError(f"cannot write generated configs under {ctx.source_root}: {exc}", retryable=False) from exc
    changed = sum(1 for f in files if f.changed)
    return [Outcome("config.generated", None, {"files": [str(f.path) for f in files], "changed": changed})]
