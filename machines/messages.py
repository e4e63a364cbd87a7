"""Wire and storage schemas: commands (DESIGN.md §4), events (§6), the run document (§5), effects.

Everything that crosses a boundary is one of these models. They are strict: an unknown
command, a missing ``run_id`` on an event or a wrong type is a ``ValidationError`` whose
text says why, and the intake records it in ``rejected_messages``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime
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

# Firestore document ids may not contain "/" and must not be "." or "..": keep run ids boring.
RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
RunId = Annotated[str, Field(pattern=RUN_ID_PATTERN)]

EVENT_TYPES: frozenset[str] = frozenset(
    {
        "config.generated",
        "config.failed",
        "preflight.passed",
        "preflight.failed",
        "iam.accounts_created",
        "iam.bindings_applied",
        "iam.verified",
        "iam.failed",
        "build.succeeded",
        "build.failed",
        "deploy.succeeded",
        "deploy.failed",
        "director.ready",
        "director.dataflow_complete",
        "director.dependent_complete",
        "director.failed",
    }
)
# Internal: fired by the daemon's own timer sweep, never accepted from a topic.
INTERNAL_EVENT_TYPES: frozenset[str] = frozenset({"timer.fired"})

# Commands become events of these types inside the engine (they share one audit log).
COMMAND_EVENT_TYPES: frozenset[str] = frozenset({"command.start", "command.cancel", "command.retry"})

RunStatus = Literal["running", "succeeded", "failed", "cancelled"]
Outcome = Literal["applied", "duplicate", "ignored", "rejected"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StartCommand(_Strict):
    command: Literal["start"]
    run_id: RunId | None = None
    architecture: dict[str, Any] | None = None
    architecture_yaml: str | None = None
    source_root: str | None = None
    trace_id: str | None = None

    @model_validator(mode="after")
    def _one_architecture(self) -> StartCommand:
        if (self.architecture is None) == (self.architecture_yaml is None):
            raise ValueError("exactly one of 'architecture' or 'architecture_yaml' is required")
        return self


class CancelCommand(_Strict):
    command: Literal["cancel"]
    run_id: RunId
    trace_id: str | None = None


class RetryCommand(_Strict):
    command: Literal["retry"]
    run_id: RunId
    trace_id: str | None = None


Command = Annotated[StartCommand | CancelCommand | RetryCommand, Field(discriminator="command")]
_COMMAND_ADAPTER: TypeAdapter[StartCommand | CancelCommand | RetryCommand] = TypeAdapter(Command)


class Event(_Strict):
    """An external happening that reached a run (DESIGN.md §6)."""

    run_id: RunId
    event_id: str = Field(min_length=1, max_length=400, pattern=r"^[^/]+$")
    type: str
    item: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_type(self) -> Event:
        if self.type not in EVENT_TYPES | COMMAND_EVENT_TYPES | INTERNAL_EVENT_TYPES:
            known = ", ".join(sorted(EVENT_TYPES))
            raise ValueError(f"unknown event type {self.type!r}; expected one of: {known}")
        return self

    @field_validator("event_id")
    @classmethod
    def _usable_as_document_id(cls, value: str) -> str:
        # Firestore refuses ".", "..", "__x__" and ids over 1500 bytes; the store appends suffixes.
        if value in (".", "..") or re.fullmatch(r"__.*__", value):
            raise ValueError(f"event_id {value!r} is not usable as a Firestore document id")
        if len(value.encode()) > 400:
            raise ValueError("event_id is longer than 400 bytes")
        return value

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class EffectSpec(_Strict):
    """A side effect the machine asks for. ``effect_id`` is deterministic, so it is idempotent."""

    effect_id: str = Field(pattern=r"^[^/]+$")
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


class RunState(BaseModel):
    """The machine's view of a run document (DESIGN.md §5 plus engine fields)."""

    model_config = ConfigDict(extra="ignore")

    run_id: str
    state: str = "pending"
    status: RunStatus = "running"
    version: int = 0
    error: RunError | None = None
    progress: dict[str, dict[str, str]] = Field(default_factory=dict)
    outputs: dict[str, Any] = Field(default_factory=dict)
    plan: dict[str, Any] = Field(default_factory=dict)
    limits: dict[str, float] = Field(default_factory=dict)
    attempt: int = 0
    failed_state: str | None = None
    wake_at: datetime | None = None
    timer: Timer | None = None
    timer_seq: int = 0
    created_at: datetime | None = None
    updated_at: datetime | None = None


def _loads(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidMessage(f"body is not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    try:
        return json.loads(text)
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


def parse_command(body: bytes) -> StartCommand | CancelCommand | RetryCommand:
    data = _loads(body)
    if not isinstance(data, Mapping):
        raise InvalidMessage(f"command must be a JSON object, got {type(data).__name__}")
    command = data.get("command")
    if command not in ("start", "cancel", "retry"):
        raise InvalidMessage(f"unknown command {command!r}; expected 'start', 'cancel' or 'retry'")
    try:
        return _COMMAND_ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise InvalidMessage(f"invalid {command} command: {_explain(exc)}") from exc


def parse_event(body: bytes) -> Event:
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
