"""The engine: turns one inbound message into one committed transition, then hands effects on.

Pull (``daemon/intake.py``) and push (``daemon/http.py``) deliver messages here alike; the
returned ``Verdict`` says whether to ack (done, or recorded as rejected) or nack (a transient
failure: Pub/Sub redelivers and finally dead-letters).
"""

from __future__ import annotations

import enum
import re
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import structlog

from daemon import rejected
from daemon.config import Settings
from daemon.outcome_batches import MESSAGE_ID as EAGER_MESSAGE_ID
from daemon.pubsub import topic_path
from daemon.store import Applied, RunStore
from daemon.store_targets import target_of
from devtools.faults import crash_point
from handlers.google_errors import is_transient
from handlers.source_archives import gs_source_problem
from machines.errors import InvalidArchitecture, InvalidMessage, PodiumError, clip
from machines.messages import (
    Event,
    StartCommand,
    is_valid_run_id,
    is_valid_trace_id,
    parse_command,
    parse_event,
)
from machines.start import PreparedArchitecture
from machines.start import prepare_architecture as prepare

log = structlog.get_logger("podium.engine")


class Verdict(enum.Enum):
    ACK = "ack"
    NACK = "nack"


@dataclass(frozen=True)
class Inbound:
    message_id: str
    data: bytes
    attributes: Mapping[str, str] = field(default_factory=dict)
    delivery_attempt: int | None = None
    source: str = "events"


EffectSink = Callable[[Applied], None]
Settled = Callable[[str, str], None]
Notifier = Callable[[Applied], None]


class Engine:
    def __init__(
        self,
        settings: Settings,
        store: RunStore,
        on_applied: EffectSink | None = None,
        notify: Notifier | None = None,
        settled: Settled | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.on_applied = on_applied or (lambda _a: None)
        self.notify = notify or (lambda _a: None)
        self.settled = settled or (lambda _r, _e: None)

    # ---- entry points ----------------------------------------------------------------
    def routes(self) -> dict[str, tuple[str, Callable[[Inbound], Verdict]]]:
        """Subscription name → (source label, entry point): the one route table that pull
        (``daemon/intake.py``) and push (``daemon/http.py``) delivery share."""
        s = self.settings
        routes: dict[str, tuple[str, Callable[[Inbound], Verdict]]] = {
            s.commands_subscription: ("commands", self.on_command),
            s.events_subscription: ("events", self.on_event),
            s.dead_letter_subscription: ("dead-letter", self.on_dead_letter),
        }
        if s.backend == "gcp":  # Cloud Build reports on its own topic only in gcp mode
            routes[s.cloud_builds_subscription] = ("cloud-builds", self.on_cloud_build)
        return routes

    # Each entry point names its topic for the record of a message it rejects (daemon/rejected.py).
    def on_command(self, msg: Inbound) -> Verdict:
        with rejected.origin_topic(topic_path(self.settings.project, self.settings.commands_topic)):
            return self._guard(msg, self._command)

    def on_event(self, msg: Inbound) -> Verdict:
        with rejected.origin_topic(topic_path(self.settings.project, self.settings.events_topic)):
            return self._guard(msg, self._event)

    def on_cloud_build(self, msg: Inbound) -> Verdict:
        """gcp mode: Cloud Build's own notifications, mapped to a run by the build's tags."""
        with rejected.origin_topic(topic_path(self.settings.project, self.settings.cloud_builds_topic)):
            return self._guard(msg, self._cloud_build)

    def on_dead_letter(self, msg: Inbound) -> Verdict:
        """A message Pub/Sub gave up on: record it so nothing is lost, then ack."""
        attempts = msg.attributes.get("CloudPubSubDeadLetterSourceDeliveryCount", "?")
        source = msg.attributes.get("CloudPubSubDeadLetterSourceSubscription", "?")
        with rejected.origin_topic(rejected.dead_letter_origin(self.settings, msg.attributes)):
            self.store.record_rejected(
                msg.message_id,
                msg.data,
                msg.attributes,
                "dead_lettered",
                f"delivery failed {attempts} times on {source}; see the daemon's logs for the errors",
                "dead-letter",
            )
        log.warning("dead letter recorded", message_id=msg.message_id, source=source)
        return Verdict.ACK

    def apply_outcome(self, event: Event, attributes: Mapping[str, str], apply: Callable[[Event], Applied]) -> bool:
        """Apply the outcome of an effect this replica ran, without Pub/Sub (daemon/outcome_delivery.py),
        by ``apply`` (with the run's other outcomes: daemon/outcome_batches.py).

        False if it could not be applied: the caller publishes it then, and the events path
        retries it or records why it is refused. Its audit record's message id is ``eager``."""
        with structlog.contextvars.bound_contextvars(
            run_id=event.run_id, message_id=EAGER_MESSAGE_ID, trace_id=trace_of(attributes)
        ):
            try:
                applied = apply(event)
            except Exception as exc:  # noqa: BLE001 - the published path takes over
                log.info("outcome not applied here, publishing it", error=_short(exc), type=event.type)
                return False
            self._committed(applied, event.type)
            return True

    def fire_timer(self, run_id: str, seq: int) -> Applied:
        event = Event(run_id=run_id, event_id=f"timer~{seq}", type="timer.fired", data={"seq": seq})
        applied = self.store.apply(event, message_id=f"timer~{seq}")
        self._after(applied)
        return applied

    # ---- internals -------------------------------------------------------------------
    def _guard(self, msg: Inbound, work: Callable[[Inbound], Applied]) -> Verdict:
        run_hint = msg.attributes.get("run_id", "-")
        with structlog.contextvars.bound_contextvars(
            run_id=run_hint, message_id=msg.message_id, trace_id=trace_of(msg.attributes)
        ):
            try:
                applied = work(msg)
            except Exception as exc:  # noqa: BLE001 - the boundary: never crash the subscriber
                return self._failed(msg, exc)
            self._committed(applied, msg.attributes.get("type", ""))
            return Verdict.ACK

    def _committed(self, applied: Applied, event_type: str) -> None:
        """After a commit, however the event arrived: hand its effects on, then the crash point."""
        try:
            self._after(applied)
        except Exception as exc:  # noqa: BLE001 - committed: the sweep re-drives its effects
            log.error("post-commit hand-off failed; the sweep will re-drive", error=repr(exc))
        crash_point("after_commit", event_type)

    def _failed(self, msg: Inbound, exc: Exception) -> Verdict:
        """Only a transient failure is nacked; one that would fail the same way every time is
        recorded and acked, so it neither loops for ``max_delivery_attempts`` nor stalls its run."""
        if is_transient(exc):
            log.warning("transient failure, nack", error=_short(exc), attempt=msg.delivery_attempt)
            return Verdict.NACK
        if isinstance(exc, PodiumError):
            return self.reject(msg, exc.reason, exc.message)
        # No exc_info: its text may be megabytes (rendering it would stall the log); where it
        # was raised is enough to find a bug.
        log.error("message cannot be applied, recording it", error=_short(exc), raised_at=_origin(exc))
        return self.reject(msg, "unprocessable", f"cannot be applied: {_short(exc)}")

    def reject(self, msg: Inbound, reason: str, message: str) -> Verdict:
        try:
            self.store.record_rejected(msg.message_id, msg.data, msg.attributes, reason, message, msg.source)
        except Exception as exc:  # noqa: BLE001 - Firestore down: let Pub/Sub keep it
            log.warning("could not record rejected message, nack", error=repr(exc))
            return Verdict.NACK
        log.warning("message rejected", reason=reason, detail=message[:300])
        return Verdict.ACK

    def _after(self, applied: Applied) -> None:
        structlog.contextvars.bind_contextvars(run_id=applied.run_id)
        log.info(
            "message processed",
            outcome=applied.outcome,
            from_state=applied.from_state,
            to_state=applied.to_state,
            effects=len(applied.effects),
            detail=applied.detail,
        )
        if applied.settled_effect:
            self.settled(applied.run_id, applied.settled_effect)
        if applied.effects:
            crash_point("before_effect", applied.effects[0].kind)
            self.on_applied(applied)
        if applied.decision is not None and applied.decision.applied:
            self.notify(applied)

    def _event(self, msg: Inbound) -> Applied:
        event = parse_event(msg.data)
        structlog.contextvars.bind_contextvars(run_id=event.run_id)
        return self.store.apply(event, msg.message_id)

    def _cloud_build(self, msg: Inbound) -> Applied:
        from machines.cloud_builds import event_from_cloud_build

        event = event_from_cloud_build(msg.data, msg.attributes)
        if event is None:  # not ours, or still running: nothing to record
            return Applied("ignored", msg.attributes.get("run_id", "-"), "not a finished podium build")
        structlog.contextvars.bind_contextvars(run_id=event.run_id)
        return self.store.apply(event, msg.message_id)

    def _command(self, msg: Inbound) -> Applied:
        command = parse_command(msg.data)
        # A replayed command (`podium replay`) keeps the identity of the message it replays: a
        # start without run_id names the same run, a cancel or retry is the same event (dedup).
        replayed = msg.attributes.get("podium_replay_of", "")
        origin = replayed if is_valid_run_id(replayed) else msg.message_id
        run_id = command.run_id or origin
        if not is_valid_run_id(run_id):
            raise InvalidMessage(f"run id {run_id!r} is not usable as a document id")
        structlog.contextvars.bind_contextvars(run_id=run_id)
        if isinstance(command, StartCommand):
            return self._start(run_id, command, msg)
        event = Event(run_id=run_id, event_id=f"cmd~{origin}", type=f"command.{command.command}")
        return self.store.apply(event, msg.message_id)

    def _start(self, run_id: str, command: StartCommand, msg: Inbound) -> Applied:
        source_root = command.source_root or str(self.settings.source_root)
        trace_id = command.trace_id or trace_of(msg.attributes)
        extra: dict[str, Any] = {"source_root": source_root, "trace_id": trace_id}
        try:
            prepared = prepare_architecture(command, default_project=self.settings.project, settings=self.settings)
        except InvalidArchitecture as exc:
            # The run exists, failed, with every problem listed: the user watching it sees why.
            return self.store.start(
                run_id, msg.message_id, plan=None, limits={}, extra=extra, invalid=(exc.reason, exc.message)
            )
        extra["architecture"] = prepared.architecture
        extra["architecture_name"] = prepared.name
        return self.store.start(run_id, msg.message_id, plan=prepared.plan, limits=self.limits(), extra=extra,
                                target=target_of(prepared.architecture) if self.settings.one_run_per_target else None,
                                if_busy=command.if_busy)

    def limits(self) -> dict[str, timedelta]:
        s = self.settings
        return {
            "iam_budget": timedelta(seconds=s.iam_budget_seconds),
            "director_budget": timedelta(seconds=s.director_ready_budget_seconds),
            "timeout_preflight": timedelta(seconds=s.preflight_timeout_seconds * 2 + 60),
        }


def _origin(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    return " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames[-3:]))


def _short(exc: BaseException) -> str:
    return clip(f"{type(exc).__name__}: {exc}", 1000)


def trace_of(attributes: Mapping[str, str]) -> str | None:
    """The trace id a message carries: our ``trace_id`` attribute or a W3C ``traceparent``.

    Anything that is not a plausible trace id is dropped: it ends up in every log line and
    in the run document, so an attacker's megabyte must not."""
    if is_valid_trace_id(attributes.get("trace_id", "")):
        return attributes["trace_id"]
    parts = attributes.get("traceparent", "").split("-")
    return parts[1] if len(parts) == 4 and re.fullmatch(r"[0-9a-f]{32}", parts[1]) else None


def _source_root_problem(root: str | None, settings: Settings) -> str | None:
    """Why a start command's ``source_root`` is refused (README "Commands"), or None: a local
    path must resolve to ``PODIUM_SOURCE_ROOT`` or a folder under it; ``gs://`` needs gcp."""
    if not root:
        return None
    if root.startswith("gs://"):
        why = gs_source_problem(root) or (None if settings.backend == "gcp" else "a gs:// source root needs PODIUM_BACKEND=gcp")
    else:
        base = Path(settings.source_root).resolve()
        try:
            inside = Path(root).resolve().is_relative_to(base)
        except (OSError, ValueError):  # e.g. a NUL byte, a symlink loop
            inside = False
        why = None if inside else f"it must be the daemon's PODIUM_SOURCE_ROOT ({base}) or a folder under it"
    return None if why is None else f"source_root: {root[:200]!r} is refused: {why}"


def prepare_architecture(
    command: StartCommand, default_project: str, settings: Settings | None = None
) -> PreparedArchitecture:
    """``machines.start.prepare_architecture`` plus, with ``settings``, the check of the
    command's ``source_root`` against the daemon's (it reads the filesystem, so it lives here)."""
    refused = _source_root_problem(command.source_root, settings) if settings is not None else None
    return prepare(command, default_project, refused=refused)
