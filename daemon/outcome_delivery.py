"""How the outcome of an effect this replica ran reaches its run.

Eager by default (issue 15): the outcome is applied here at once, through the engine, in its own
Firestore transaction, and the Pub/Sub round trip (publish, pull, decode, ack) is skipped. The
guarantees are those of the published path: the event keeps its id (dedup), it is recorded in
the audit log, and it settles the effect in the same commit. If this replica dies before the
commit, the effect's lease expires and the sweep runs it again, as when it died before
publishing. If the apply fails (a transient Firestore error, contention), the outcome is
published instead and takes the ordinary path, with its retries and its rejection records.
"""

from __future__ import annotations

from collections.abc import Mapping

import structlog

from daemon.effect_dispatch import Publish
from daemon.engine import Engine
from machines.messages import Event

log = structlog.get_logger("podium.effects")


class OutcomeDelivery:
    """The ``publish`` of the effect runner: apply at once when eager, else (or on failure) publish."""

    def __init__(self, engine: Engine, publish: Publish, *, eager: bool) -> None:
        self.engine = engine
        self.publish = publish
        self.eager = eager

    def __call__(self, event: Event, attributes: Mapping[str, str]) -> object:
        if self.eager and self.engine.apply_outcome(event, attributes):
            return None
        return self.publish(event, attributes)
