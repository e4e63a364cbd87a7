"""Wire and storage schemas: commands (DESIGN.md §4), events (§6), the run document (§5), effects.

Everything that crosses a boundary is one of these models. They are strict: an unknown
command, a missing ``run_id`` on an event or a wrong type is a ``ValidationError`` whose
text says why, and the intake records it in ``rejected_messages``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from machines.errors import InvalidMessage
from machines.pipeline import OUTCOME_EVENT_TYPES

# Firestore document ids may not contain "/" and must not be "." or "..": keep run ids boring.
RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
RunId = Annotated[str, Field(pattern=RUN_ID_PATTERN)]
# Ids that become document ids (events, effects) or land in every log line (items, trace ids)
# are held to patterns, so input that passed validation cannot fail later in Firestore.
EVENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:~@+=-]{0,399}$"
EFFECT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:~@-]{0,299}$"
ITEM_PATTERN = r"^[A-Za-z0-9._:@-]{1,128}$"
TRACE_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
TraceId = Annotated[str, Field(pattern=TRACE_ID_PATTERN)]

# Size bounds, checked before anything is parsed: a command carries an architecture (itself
# capped at 1 MiB of YAML, JSON-escaping may grow it); an event carries a small report.
MAX_COMMAND_BYTES = 2 * 1024 * 1024
MAX_EVENT_BYTES = 64 * 1024
MAX_EVENT_DATA_BYTES = 32 * 1024
MAX_DATA_DEPTH = 16  # Firestore allows 20 levels of maps; the run document nests data in two
_INT64 = (-(2**63), 2**63 - 1)

# What effects and the ServiceDirector may report: every outcome of machines/pipeline.py's kinds.
EVENT_TYPES: frozenset[str] = OUTCOME_EVENT_TYPES
# Internal: fired by the daemon's own timer sweep, or made by the store from the target's lock
# (one active run per target), never accepted from a topic.
INTERNAL_EVENT_TYPES: frozenset[str] = frozenset({"timer.fired", "target.busy", "target.acquired"})

# Commands become events of these types inside the engine (they share one audit log).
COMMAND_EVENT_TYPES: frozenset[str] = frozenset(
    {"command.start", "command.cancel", "command.retry", "command.teardown"}
)

RunStatus = Literal["queued", "running", "succeeded", "failed", "cancelled", "torn_down"]
Outcome = Literal["applied", "duplicate", "ignored", "rejected"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StartCommand(_Strict):
    command: Literal["start"]
    run_id: RunId | None = None
    architecture: dict[str, Any] | None = None
    architecture_yaml: str | None = None
    source_root: str | None = Field(default=None, max_length=4096)
    trace_id: TraceId | None = None
    skip_preflight: bool = False  # every service's preflight is skipped (recorded as such)
    # Another run of the same target (project_id + architecture name) is active: wait for it
    # ("queue") or be refused ("fail"); either way recorded in the audit log.
    if_busy: Literal["queue", "fail"] = "queue"

    @model_validator(mode="after")
    def _one_architecture(self) -> StartCommand:
        if (self.architecture is None) == (self.architecture_yaml is None):
            raise ValueError("exactly one of 'architecture' or 'architecture_yaml' is required")
        return self


class CancelCommand(_Strict):
    command: Literal["cancel"]
    run_id: RunId
    trace_id: TraceId | None = None


class RetryCommand(_Strict):
    command: Literal["retry"]
    run_id: RunId
    trace_id: TraceId | None = None


class TeardownCommand(_Strict):
    """Remove what a finished run created (machines/pipeline.py, the ``removing_*`` phases)."""

    command: Literal["teardown"]
    run_id: RunId
    trace_id: TraceId | None = None


RunCommand = StartCommand | CancelCommand | RetryCommand | TeardownCommand
Command = Annotated[RunCommand, Field(discriminator="command")]
_COMMAND_ADAPTER: TypeAdapter[RunCommand] = TypeAdapter(Command)


class Event(_Strict):
    """An external happening that reached a run (DESIGN.md §6)."""

    run_id: RunId
    event_id: str = Field(pattern=EVENT_ID_PATTERN)
    type: str
    item: str | None = Field(default=None, pattern=ITEM_PATTERN)
    data: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_type(self) -> Event:
        if self.type not in EVENT_TYPES | COMMAND_EVENT_TYPES | INTERNAL_EVENT_TYPES:
            known = ", ".join(sorted(EVENT_TYPES))
            raise ValueError(f"unknown event type {self.type!r}; expected one of: {known}")
        return self

    @field_validator("data")
    @classmethod
    def _storable(cls, value: dict[str, Any]) -> dict[str, Any]:
        _check_storable(value, 1)
        size = len(json.dumps(value, separators=(",", ":"), default=str))
        if size > MAX_EVENT_DATA_BYTES:
            raise ValueError(f"data is {size} bytes of JSON; at most {MAX_EVENT_DATA_BYTES} are accepted")
        effect_id = value.get("effect_id")
        if effect_id is not None and not (isinstance(effect_id, str) and re.fullmatch(EFFECT_ID_PATTERN, effect_id)):
            raise ValueError(f"data.effect_id {str(effect_id)[:100]!r} is not an effect id")
        return value

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class EffectSpec(_Strict):
    """A side effect the machine asks for. ``effect_id`` is deterministic, so it is idempotent."""

    effect_id: str = Field(pattern=EFFECT_ID_PATTERN)
    kind: str
    item: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)


class RunError(_Strict):
    state: str
    reason: str
    message: str


class Timer(_Strict):
    """The one pending wake-up of a run: what it is for and how many times it fired."""

    purpose: str
    seq: int
    attempt: int = 0
    started_at: datetime


class _RunRecord(BaseModel):
    """The fields every view of a run document shares (frozen; unknown fields ignored)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    run_id: str
    status: RunStatus = "running"
    attempt: int = 0
    plan: Mapping[str, Any] = Field(default_factory=dict)
    outputs: Mapping[str, Any] = Field(default_factory=dict)
    created_at: datetime | None = None


class RunState(_RunRecord):
    """The machine's view of a run document (DESIGN.md §5 plus engine fields): a frozen record.

    ``decide`` changes a run through a private :class:`machines.draft.RunDraft` and returns a
    new ``RunState``; ``daemon.store`` is the one place that reads and writes it as a
    Firestore document (durations are stored as seconds there)."""

    state: str = "pending"
    version: int = 0
    error: RunError | None = None
    progress: Mapping[str, Mapping[str, str]] = Field(default_factory=dict)
    limits: Mapping[str, timedelta] = Field(default_factory=dict)
    failed_state: str | None = None
    wake_at: datetime | None = None
    timer: Timer | None = None
    timer_seq: int = 0
    updated_at: datetime | None = None


class RunView(_RunRecord):
    """What an effect's handler reads of its run: the document as it was when the effect was
    leased, typed once by the store (handlers never see a raw Firestore dict)."""

    trace_id: str | None = None
    source_root: str | None = None
    architecture: Mapping[str, Any] = Field(default_factory=dict)


def _check_storable(value: Any, depth: int) -> None:
    """Raise ValueError for what Firestore cannot store: integers beyond 64 bits, deep nesting."""
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int):
        if not _INT64[0] <= value <= _INT64[1]:
            raise ValueError("data holds an integer beyond 64 bits, which Firestore cannot store")
    elif isinstance(value, dict | list):
        if depth > MAX_DATA_DEPTH:
            raise ValueError(f"data is nested deeper than {MAX_DATA_DEPTH} levels")
        for child in value.values() if isinstance(value, dict) else value:
            _check_storable(child, depth + 1)


def _check_size(body: bytes, limit: int, what: str) -> None:
    if len(body) > limit:
        raise InvalidMessage(
            f"{what} body is {len(body)} bytes; at most {limit} are accepted", reason="message_too_large"
        )


def _not_json(name: str) -> Any:
    # Python's json accepts NaN and ±Infinity; JSON (and Firestore's JSON views) does not.
    raise InvalidMessage(f"body is not JSON: {name} is not a JSON value")


def _loads(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidMessage(f"body is not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    try:
        return json.loads(text, parse_constant=_not_json)
    except json.JSONDecodeError as exc:
        raise InvalidMessage(f"body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    except RecursionError as exc:
        raise InvalidMessage("body is not JSON we accept: nested too deeply") from exc
    except ValueError as exc:  # e.g. an integer beyond Python's 4300-digit limit
        raise InvalidMessage(f"body is not JSON we accept: {exc}") from exc


def _explain(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "<body>"
        parts.append(f"{where}: {err['msg']}")
    more = f" (+{exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
    return "; ".join(parts) + more


def parse_command(body: bytes) -> RunCommand:
    _check_size(body, MAX_COMMAND_BYTES, "command")
    data = _loads(body)
    if not isinstance(data, Mapping):
        raise InvalidMessage(f"command must be a JSON object, got {type(data).__name__}")
    command = data.get("command")
    if command not in ("start", "cancel", "retry", "teardown"):
        raise InvalidMessage(f"unknown command {command!r}; expected 'start', 'cancel', 'retry' or 'teardown'")
    try:
        return _COMMAND_ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise InvalidMessage(f"invalid {command} command: {_explain(exc)}") from exc


def parse_event(body: bytes) -> Event:
    _check_size(body, MAX_EVENT_BYTES, "event")
    data = _loads(body)
    if not isinstance(data, Mapping):
        raise InvalidMessage(f"event must be a JSON object, got {type(data).__name__}")
    kind = data.get("type")
    if kind in COMMAND_EVENT_TYPES or kind in INTERNAL_EVENT_TYPES:
        raise InvalidMessage(f"event type {kind!r} cannot be published; use the commands topic for commands")
    try:
        return Event.model_validate(data)
    except ValidationError as exc:
        raise InvalidMessage(f"invalid event: {_explain(exc)}") from exc


def is_valid_run_id(run_id: str) -> bool:
    return re.fullmatch(RUN_ID_PATTERN, run_id) is not None


def is_valid_trace_id(trace_id: str) -> bool:
    return re.fullmatch(TRACE_ID_PATTERN, trace_id) is not None
