"""What an outcome event means for a run beyond its edge in the machine (pure): whether it is
stale (an earlier attempt's, an IAM check for the other phase, a failure of an item that
already succeeded), and what it records (outputs, failed items).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from machines.draft import RunDraft
from machines.messages import Event, RunState

__all__ = [
    "attempt_of", "record_item_failure", "record_outputs", "record_removed_resources", "record_resources", "stale_reason",
]

_IAM_ITEM = {"verifying_iam": "accounts", "verifying_dataflow_iam": "resources"}


def stale_reason(run: RunState, event: Event) -> str | None:
    """Why an event that the state admits must still be ignored (None if it may apply)."""
    if event.type == "iam.verified":
        wanted = _IAM_ITEM.get(run.state)
        if event.item != wanted:
            return f"iam.verified for {event.item!r}, but '{run.state}' waits for {wanted!r}"
        if wanted == "resources" and run.progress.get("iam", {}).get("bindings") != "succeeded":
            return "iam.verified before the resource bindings were applied"
    earlier = attempt_of(event)
    if earlier is not None and earlier != run.attempt:
        return f"outcome of attempt {earlier} arrived during attempt {run.attempt}"
    if event.type.endswith(".failed"):
        phase = _FAILURE_PHASE.get(event.type)
        if phase and run.progress.get(phase, {}).get(event.item or "") == "succeeded":
            return f"{event.item!r} already succeeded in phase '{phase}'"
    return None


# ``:a<N>`` closes the attempt segment of effect ids (``kind:item:aN[:suffix]``) and command ids
# (``run:instruction:target:aN[:suffix]``); item names come before it, so the last match counts.
_ATTEMPT = re.compile(r":a(\d+)(?=:|$)")


def attempt_of(event: Event) -> int | None:
    """The run attempt an outcome belongs to, read from its ``effect_id``, its ``command_id`` or
    the ids inside its ``event_id`` (``<effect_id>~type~item``, ``director~<command_id>~type``);
    None for commands, timers and outcomes that carry no attempt. The first id that names one wins."""
    if event.type.startswith(("command.", "timer.")):
        return None
    ids = [event.data.get("effect_id"), event.data.get("command_id"), *event.event_id.split("~")]
    for value in ids:
        found = _ATTEMPT.findall(value) if isinstance(value, str) else []
        if found:
            return int(found[-1])
    return None


def record_outputs(run: RunDraft, event: Event) -> None:
    data: Mapping[str, Any] = event.data
    if event.type == "build.succeeded" and "image" in data:
        run.outputs.setdefault("images", {})[event.item or ""] = data["image"]
    elif event.type == "deploy.succeeded" and "url" in data:
        if event.item == run.plan.get("director"):
            run.outputs.setdefault("director", {})["url"] = data["url"]
        run.outputs.setdefault("urls", {})[event.item or ""] = data["url"]
    elif event.type == "iam.accounts_created":
        run.outputs["service_accounts"] = dict(data.get("service_accounts", {}))
    elif event.type == "undeploy.succeeded" and event.item:
        (run.outputs.get("urls") or {}).pop(event.item, None)
        run.outputs["removed_services"] = sorted({*run.outputs.get("removed_services", []), event.item})
    elif event.type == "iam.accounts_removed":
        removed = [str(e) for e in data.get("removed", []) if isinstance(e, str)]
        run.outputs["removed_accounts"] = sorted(removed)
    if event.type in ("director.dataflow_complete", "director.dependent_complete"):
        if data.get("instruction") == "teardown":
            record_removed_resources(run, data.get("removed"))
        else:
            record_resources(run, data.get("resources"))


RESOURCE_FIELDS = ("kind", "name", "dataflow", "location")
MAX_RESOURCES = 500  # with the architecture (at most 800 KiB) the document stays under 1 MiB


def _entries(reported: Any) -> list[dict[str, str]]:
    """The well-formed ``{kind, name, dataflow, location}`` entries of a director's list.
    Malformed entries are left out: the reply is the director's, not ours to trust."""
    if not isinstance(reported, list):
        return []
    return [{f: str(item[f])[:256] for f in RESOURCE_FIELDS} for item in reported[:MAX_RESOURCES]
            if isinstance(item, Mapping) and all(isinstance(item.get(f), str) and item[f] for f in RESOURCE_FIELDS)]


def _key(entry: Mapping[str, str]) -> tuple[str, str, str]:
    return entry["kind"], entry["name"], entry["location"]


def _merged(current: list[dict[str, str]], added: list[dict[str, str]]) -> list[dict[str, str]]:
    known = {_key(r): r for r in [*current, *added]}
    ordered = sorted(known.values(), key=lambda r: (r["dataflow"], r["kind"], r["name"], r["location"]))
    return ordered[:MAX_RESOURCES]


def record_resources(run: RunDraft, reported: Any) -> None:
    """Merge what the director reports it created into ``outputs.resources`` (a list of
    ``{kind, name, dataflow, location}``, one per (kind, name, location), in a stable order)."""
    entries = _entries(reported)
    if entries or isinstance(reported, list):
        run.outputs["resources"] = _merged(run.outputs.get("resources", []), entries)


def record_removed_resources(run: RunDraft, reported: Any) -> None:
    """A teardown's ``removed`` entries move from ``outputs.resources`` to ``outputs.removed_resources``."""
    removed = _entries(reported)
    if not removed:
        return
    gone = {_key(r) for r in removed}
    run.outputs["resources"] = [r for r in run.outputs.get("resources", []) if _key(r) not in gone]
    run.outputs["removed_resources"] = _merged(run.outputs.get("removed_resources", []), removed)


_FAILURE_PHASE = {
    "preflight.failed": "preflight",
    "build.failed": "build",
    "deploy.failed": "deploy",
}


def record_item_failure(run: RunDraft, event: Event) -> None:
    phase = _FAILURE_PHASE.get(event.type)
    if event.type == "deploy.failed" and event.item == run.plan.get("director"):
        run.progress.setdefault("director", {})["deploy"] = "failed"
    elif phase and event.item in run.progress.get(phase, {}):
        run.progress[phase][event.item] = "failed"
