"""The embedded default (DESIGN.md §2): every effect kind's ``local`` handler."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from daemon.config import Settings
from handlers import standin
from handlers.base import EffectContext, Handler, Outcome
from machines.errors import HandlerError


def configgen(ctx: EffectContext) -> Sequence[Outcome]:
    from handlers.configgen import generate_configs

    try:
        files = generate_configs(ctx.architecture, ctx.source_root)
    except OSError as exc:
        raise HandlerError(f"cannot write generated configs under {ctx.source_root}: {exc}", retryable=False) from exc
    return [Outcome("config.generated", None, {"files": [str(f.path) for f in files]})]


def preflight(ctx: EffectContext) -> Sequence[Outcome]:
    from handlers.preflight import run_preflight
    from machines.hydration import all_services, service_dir

    service = ctx.item or ""
    services = all_services(ctx.architecture)
    if service not in services:
        raise HandlerError(f"service {service!r} is not in the architecture", retryable=False)
    _dataflow, spec = services[service]
    result = run_preflight(service, service_dir(spec, ctx.source_root), timeout=ctx.settings.preflight_timeout_seconds)
    data = {"reason": result.reason, "output_tail": result.output_tail[-2000:], "duration_s": result.duration_s}
    if result.passed:
        return [Outcome("preflight.passed", service, data)]
    return [Outcome("preflight.failed", service, {**data, "error": f"preflight {result.reason}: {result.output_tail[-1500:]}"})]


def handlers(settings: Settings) -> Mapping[str, Handler]:
    table: dict[str, Handler] = dict(standin.HANDLERS)
    table.update({"configgen": configgen, "preflight": preflight})
    return table
