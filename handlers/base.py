"""The seam between the engine and side effects.

A handler is a function ``(EffectContext) -> Sequence[Outcome]``. It does one idempotent
piece of work, keyed by the context's deterministic ids, and says what happened as outcome
events, which the effect runner publishes to the events topic. A handler that has nothing
to report yet (e.g. a Cloud Build whose completion arrives on ``cloud-builds``) returns ``[]``.
Failures are ``HandlerError``s: ``retryable=False`` fails the run with the message, anything
else is retried with backoff and then fails the run.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from handlers.settings import HandlerSettings
from machines.messages import RunView
from machines.pipeline import EFFECT_KINDS

if TYPE_CHECKING:
    from machines.architecture import Architecture, ServiceSpec


@dataclass(frozen=True)
class Outcome:
    type: str
    item: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EffectContext:
    run_id: str
    effect_id: str
    kind: str
    item: str | None
    params: Mapping[str, Any]
    attempt: int
    run: RunView  # the run as it was when the effect was leased
    settings: HandlerSettings
    # Set when this replica lost the effect's lease (its run was cancelled, or another replica
    # took it over): long handlers watch it and stop; their outcome would be dropped anyway.
    cancelled: threading.Event = field(default_factory=threading.Event, compare=False)

    @cached_property
    def architecture(self) -> Architecture:
        """The run's hydrated architecture, validated once per run, not once per effect: it is
        written at start and never changes, so (run id, created_at) names it."""
        return _ARCHITECTURES.get(self.run_id, self.run.created_at, self.run.architecture)

    @cached_property
    def source_root(self) -> Path:
        """The run's source tree on this machine: its folder, or for a ``gs://`` archive the tree
        unpacked under the state directory (downloaded by the first effect that asks; the run's
        generated configs are written into each replica's copy)."""
        root = self.run.source_root or ""
        if root.startswith("gs://"):
            from handlers.configgen import generate_configs
            from handlers.source_archives import local_tree

            return local_tree(root, self.settings, lambda tree: generate_configs(self.architecture, tree))
        return Path(root or self.settings.source_root)

    @property
    def outputs(self) -> Mapping[str, Any]:
        return self.run.outputs

    @property
    def trace_id(self) -> str | None:
        return self.run.trace_id

    def target(self) -> tuple[str, str, ServiceSpec]:
        """(service, its dataflow, its spec) named by ``item``; a non-retryable error if unknown."""
        from machines.errors import HandlerError
        from machines.hydration import all_services

        service = self.item or ""
        services = all_services(self.architecture)
        if service not in services:
            raise HandlerError(f"{self.kind}: service {service!r} is not in the architecture", retryable=False)
        dataflow, spec = services[service]
        return service, dataflow, spec


Handler = Callable[[EffectContext], Sequence[Outcome]]


class _ParsedArchitectures:
    """A small LRU of validated architectures (frozen models: safe to share across threads)."""

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._items: OrderedDict[tuple[str, str], Architecture] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, run_id: str, created_at: Any, raw: Mapping[str, Any]) -> Architecture:
        from machines.architecture import Architecture

        if created_at is None:  # a document without its creation time: nothing names it safely
            return Architecture.model_validate(raw)
        key = (run_id, str(created_at))
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        parsed = Architecture.model_validate(raw)
        with self._lock:
            self._items[key] = parsed
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return parsed


_ARCHITECTURES = _ParsedArchitectures()

# What each effect kind reports (machines/pipeline.py EFFECT_KINDS): the failure event when
# its handler gives up, and the success events. These are the only events that may settle
# (mark done) an effect of that kind.
FAILURE_EVENT: dict[str, str] = {name: kind.fails_with for name, kind in EFFECT_KINDS.items()}
SUCCESS_EVENTS: dict[str, frozenset[str]] = {name: kind.succeeds_with for name, kind in EFFECT_KINDS.items()}
# Success events whose item is not the effect's: accounts are created for every service at
# once (no item), and a ping's answer names the director, not the ping.
_ITEM_FREE_EVENTS = frozenset({"iam.accounts_created", "director.ready"})


def outcome_mismatch(kind: str, effect_item: str | None, event_type: str, event_item: str | None) -> str | None:
    """Why an event cannot be the outcome of an effect of ``kind`` on ``effect_item`` (None if it can)."""
    # director.failed: what the effect runner reports for a kind it has no handler for
    if event_type != FAILURE_EVENT.get(kind, "director.failed") and event_type not in SUCCESS_EVENTS.get(kind, ()):
        return f"{event_type} is not an outcome of a {kind!r} effect"
    if event_type not in _ITEM_FREE_EVENTS and event_item != effect_item:
        return f"{event_type} for {event_item!r} is not the outcome of the {kind!r} effect on {effect_item!r}"
    return None
