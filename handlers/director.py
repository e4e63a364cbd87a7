"""The ServiceDirector client: effect kind ``director.command`` (DESIGN.md §6 protocol).

The daemon publishes one command on the architecture's command topic and returns at once;
the director's reply (``director.ready`` / ``director.dataflow_complete`` /
``director.dependent_complete`` / ``director.failed``) comes back on the events topic as an
ordinary event carrying the same ``command_id``. Waiting is the machine's business (a state
with a deadline), never this handler's. The same code serves the local and gcp backends:
Pub/Sub is Pub/Sub.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

import google.cloud.pubsub_v1 as pubsub_v1  # no py.typed: imported as a module, mypy reads it as Any
from google.api_core import exceptions as gexc

from handlers.base import EffectContext, Outcome
from handlers.google_errors import api_error
from machines.architecture import Architecture
from machines.errors import HandlerError

INSTRUCTIONS = ("ping", "dataflow-setup", "dependent-resource-setup", "teardown")


@cache
def _publisher() -> pubsub_v1.PublisherClient:
    return pubsub_v1.PublisherClient()


def build_command(ctx: EffectContext) -> dict[str, Any]:
    """The command message for this effect (pure; tested on its own)."""
    instruction = str(ctx.params.get("instruction"))
    if instruction not in INSTRUCTIONS:
        raise HandlerError(f"unknown director instruction {instruction!r}", retryable=False)
    arch = ctx.architecture
    dataflow = ctx.params.get("dataflow")
    payload: dict[str, Any] = {}
    if instruction in ("dataflow-setup", "teardown", "dependent-resource-setup"):
        if dataflow not in arch.dataflows:
            raise HandlerError(f"dataflow {dataflow!r} is not in the architecture", retryable=False)
        payload = {"dataflow_name": dataflow, "region": arch.region,
                   "resources": _resources(arch, str(dataflow), removable_only=instruction == "teardown")}
        if instruction == "dependent-resource-setup":
            payload["service_urls"] = dict(ctx.outputs.get("urls", {}))
    return {
        "instruction": instruction,
        "command_id": ctx.params.get("command_id") or ctx.effect_id,
        "run_id": ctx.run_id,
        "dataflow": dataflow,
        "reply_to": f"projects/{ctx.settings.project}/topics/{ctx.settings.events_topic}",
        "payload": payload,
    }


def _resources(arch: Architecture, dataflow: str, *, removable_only: bool = False) -> dict[str, Any]:
    data = arch.to_dict()["dataflows"][dataflow].get("resources", {})
    if removable_only:  # a teardown leaves what teardown_protection guards
        data = {k: [r for r in v if not (isinstance(r, dict) and r.get("teardown_protection"))]
                for k, v in data.items() if isinstance(v, list)}
    return {k: v for k, v in data.items() if v}


def command_topic(arch: Architecture) -> str:
    topic = arch.service_manager_spec.command_topic
    if topic is None or not topic.name:
        raise HandlerError("service_manager_spec.command_topic is not set", retryable=False)
    return f"projects/{arch.project_id}/topics/{topic.name}"


def send(ctx: EffectContext, publisher: pubsub_v1.PublisherClient | None = None) -> Sequence[Outcome]:
    client = publisher or _publisher()
    body = build_command(ctx)
    topic = command_topic(ctx.architecture)
    attrs: Mapping[str, str] = {"run_id": ctx.run_id, "command_id": str(body["command_id"])}
    if ctx.trace_id:
        attrs = {**attrs, "trace_id": ctx.trace_id}
    try:
        client.publish(topic, json.dumps(body).encode(), **attrs).result(timeout=30)
    except gexc.NotFound:
        # The director creates its command topic at start-up; a ping can race it. Create it
        # (idempotent) and let the runner retry the publish.
        with contextlib.suppress(gexc.AlreadyExists):
            client.create_topic(request={"name": topic})
        raise HandlerError(f"command topic {topic} did not exist yet; created it", retryable=True) from None
    except (gexc.GoogleAPICallError, gexc.RetryError, concurrent.futures.TimeoutError) as exc:
        raise api_error(exc, f"could not publish to {topic}") from exc
    return []
