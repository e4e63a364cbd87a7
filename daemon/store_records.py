"""What the run store writes and returns: the run document's machine fields, the audit record
of one event, and :class:`Applied`, the result of one message. Shared by the store's
transactions (:mod:`daemon.store`, :mod:`daemon.store_apply`); no I/O here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from handlers.base import outcome_mismatch
from machines.messages import EffectSpec, Event, RunState, RunView
from machines.orchestration import Decision

EFFECTS = "effects"
EVENTS = "events"

# Fields of the run document the machine owns; everything else (architecture, source_root)
# is written once at start.
_MACHINE_FIELDS = (
    "state",
    "status",
    "version",
    "error",
    "progress",
    "outputs",
    "attempt",
    "failed_state",
    "wake_at",
    "timer",
    "timer_seq",
    "updated_at",
)


@dataclass(frozen=True)
class Applied:
    """The result of one message: its outcome and, if it changed the run, what to do next."""

    outcome: str
    run_id: str
    detail: str = ""
    decision: Decision | None = None
    effects: tuple[EffectSpec, ...] = ()
    run: RunView | None = None  # the run after this message, as its effects' handlers see it
    settled_effect: str | None = None  # the effect whose outcome this message was (now done)
    claims: Mapping[str, str] = field(default_factory=dict)  # effect_id -> claim: effects leased to this replica

    @property
    def from_state(self) -> str | None:
        return self.decision.from_state if self.decision else None

    @property
    def to_state(self) -> str | None:
        return self.decision.to_state if self.decision else None


# What ``apply`` reads of the run and, in the same request, of the effect an outcome settles:
# everything but the run's architecture (daemon/architectures.py).
READ_IN_APPLY = sorted(
    (set(RunState.model_fields) | set(RunView.model_fields) | {"target", "architecture_name"}) - {"architecture"}
    | {"effect_id", "kind", "item", "claim", "status"}
)


def run_fields(run: RunState) -> dict[str, Any]:
    """The machine's fields of a run as Firestore stores them."""
    return run.model_dump(mode="python", include=set(_MACHINE_FIELDS))


def stored_limits(limits: Mapping[str, timedelta]) -> dict[str, float]:
    return {key: duration.total_seconds() for key, duration in limits.items()}


def run_state(doc: Mapping[str, Any]) -> RunState:
    """A run document as the machine's record (limits are stored as seconds; pydantic reads them back)."""
    return RunState.model_validate(doc)


def run_view(doc: Mapping[str, Any]) -> RunView:
    return RunView.model_validate(doc)


def audit_record(
    event_id: str,
    type_: str,
    item: str | None,
    message_id: str,
    now: datetime,
    from_state: str | None,
    to_state: str | None,
    outcome: str,
    detail: str,
    version: int | None = None,
) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "type": type_,
        "item": item,
        "message_id": message_id,
        "received_at": now,
        "from_state": from_state,
        "to_state": to_state,
        "outcome": outcome,
        "detail": detail[:500],
        "version": version,
    }


def not_its_outcome(event: Event, effect: Mapping[str, Any] | None) -> str | None:
    """Why an event naming an effect must not settle it nor move the run (None if it may).

    An event stamped with an effect it cannot be the outcome of (another kind or item) is a bug
    or a forgery; one from a claim the effect no longer has comes from a replica that lost the
    lease while another ran the effect again. Both are recorded ``ignored``, not applied. Events
    without a claim (Cloud Build's notifications) are checked for kind and item only.
    """
    if effect is None:
        return None
    mismatch = outcome_mismatch(str(effect.get("kind")), effect.get("item"), event.type, event.item)
    if mismatch:
        return f"not an outcome of effect {effect.get('effect_id')!r}: {mismatch}"
    claim = event.data.get("claim")
    if claim is not None and claim != effect.get("claim"):
        return f"superseded claim: effect {effect.get('effect_id')!r} is held by claim {effect.get('claim')!r}, not {claim!r}"
    return None
