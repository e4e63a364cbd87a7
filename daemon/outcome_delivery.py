"""How the outcome of an effect this replica ran reaches its run.

Eager by default (issue 15): the outcome is applied here at once, through the engine, in a
Firestore transaction of this replica (with the run's other outcomes arriving at the same moment:
:mod:`daemon.outcome_batches`), and the Pub/Sub round trip (publish, pull, decode, ack) is
skipped. The guarantees are those of the published path: the event keeps its id (dedup), it is
recorded in the audit log, and it settles the effect in the same commit. If this replica dies
before the commit, the effect's lease expires and the sweep runs it again, as when it died
before publishing. If the apply fails (a transient Firestore error, contention), the outcome is
published instead and takes the ordinary path, with its retries and its rejection records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import structlog

from daemon.effect_dispatch import Publish
from daemon.engine import Engine
from daemon.outcome_batches import OutcomeBatches, Running
from daemon.store import Applied
from machines.messages import Event

log = structlog.get_logger("podium.effects")


class OutcomeDelivery:
    """The ``publish`` of the effect runner: apply at once when eager, else (or on failure) publish."""

    def __init__(self, engine: Engine, publish: Publish, *, eager: bool, running: Running | None = None,
                 batch_wait: float = 0.0) -> None:
        self.engine = engine
        self.publish = publish
        self.eager = eager
        self.batches = OutcomeBatches(self._apply_many, running or (lambda _run_id: 0), batch_wait)

    def _apply_many(self, run_id: str, items: Sequence[tuple[Event, str]]) -> list[Applied]:
        return self.engine.store.apply_many(run_id, items)  # looked up per call, as the engine's own calls

    def __call__(self, event: Event, attributes: Mapping[str, str]) -> object:
        if self.eager and self.engine.apply_outcome(event, attributes, self.batches.apply):
            return None
        return self.publish(event, attributes)
