"""Stand-in handlers: every effect succeeds at once, touching nothing.

Used by engine tests and benchmarks (``PODIUM_BACKEND=standin``) to measure and test the
engine alone, and as the director's stand-in when no ServiceDirector is deployed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import cache, wraps
from typing import Any

from handlers.base import EffectContext, Handler, Outcome


@cache
def _ledger() -> Any:
    from google.cloud import firestore

    return firestore.Client(project=os.environ.get("PODIUM_PROJECT", "podium-local")).collection("standin_ledger")


def _recorded(handler: Handler) -> Handler:
    """With PODIUM_STANDIN_LEDGER=1, count each execution in Firestore (crash tests read it)."""

    @wraps(handler)
    def run(ctx: EffectContext) -> Sequence[Outcome]:
        if os.environ.get("PODIUM_STANDIN_LEDGER") == "1":
            from google.cloud import firestore

            _ledger().document(f"{ctx.run_id}~{ctx.effect_id}").set(
                {"run_id": ctx.run_id, "effect_id": ctx.effect_id, "executions": firestore.Increment(1)}, merge=True
            )
        return handler(ctx)

    return run


def _configgen(ctx: EffectContext) -> Sequence[Outcome]:
    return [Outcome("config.generated")]


def _preflight(ctx: EffectContext) -> Sequence[Outcome]:
    return [Outcome("preflight.passed", ctx.item, {"output_tail": "stand-in"})]


def _iam_provision(ctx: EffectContext) -> Sequence[Outcome]:
    services = ctx.run.plan.get("all_services", [])
    accounts = {s: f"{s}@standin.iam" for s in services}
    return [Outcome("iam.accounts_created", None, {"service_accounts": accounts})]


def _iam_verify(ctx: EffectContext) -> Sequence[Outcome]:
    return [Outcome("iam.verified", ctx.item)]


def _iam_bind(ctx: EffectContext) -> Sequence[Outcome]:
    return [Outcome("iam.bindings_applied", ctx.item)]


def _build(ctx: EffectContext) -> Sequence[Outcome]:
    return [Outcome("build.succeeded", ctx.item, {"image": f"standin://{ctx.item}@sha256:0"})]


def _deploy(ctx: EffectContext) -> Sequence[Outcome]:
    return [Outcome("deploy.succeeded", ctx.item, {"url": f"http://standin/{ctx.item}"})]


def director_reply(ctx: EffectContext) -> Sequence[Outcome]:
    """Answer a director command the way a healthy ServiceDirector would."""
    instruction = ctx.params.get("instruction")
    data = {"command_id": ctx.params.get("command_id")}
    if instruction == "ping":
        return [Outcome("director.ready", "director", data)]
    if instruction == "dataflow-setup":
        return [Outcome("director.dataflow_complete", ctx.params.get("dataflow"), data)]
    if instruction == "dependent-resource-setup":
        return [Outcome("director.dependent_complete", ctx.params.get("dataflow"), data)]
    if instruction == "teardown":
        return [Outcome("director.dataflow_complete", ctx.params.get("dataflow"), data)]
    return [Outcome("director.failed", ctx.item, {**data, "error": f"unknown instruction {instruction!r}"})]


_TABLE: dict[str, Callable[[EffectContext], Sequence[Outcome]]] = {
    "configgen": _configgen,
    "preflight": _preflight,
    "iam.provision": _iam_provision,
    "iam.verify": _iam_verify,
    "iam.bind": _iam_bind,
    "build": _build,
    "deploy": _deploy,
    "director.command": director_reply,
    "undeploy": lambda ctx: [Outcome("undeploy.succeeded", ctx.item)],
    "stop": lambda ctx: [Outcome("stop.succeeded", ctx.item)],
    "iam.remove": lambda ctx: [Outcome("iam.accounts_removed", ctx.item, {"removed": []})],
}
HANDLERS: dict[str, Handler] = {kind: _recorded(fn) for kind, fn in _TABLE.items()}
