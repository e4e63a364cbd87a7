"""A run being changed by one decision: the mutable working copy behind ``decide``.

``RunState`` is frozen so nothing outside ``decide`` can change a run by accident; the
callbacks of the machine mutate a ``RunDraft`` instead, and ``freeze`` makes the new
``RunState``. The plan and limits never change after start, so they are shared, not copied.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from machines.messages import RunError, RunState, RunStatus, Timer

__all__ = ["RunDraft"]


@dataclass
class RunDraft:
    run_id: str
    state: str
    status: RunStatus
    version: int
    error: RunError | None
    progress: dict[str, dict[str, str]]
    outputs: dict[str, Any]
    plan: Mapping[str, Any]
    limits: Mapping[str, timedelta]
    attempt: int
    failed_state: str | None
    wake_at: datetime | None
    timer: Timer | None
    timer_seq: int
    created_at: datetime | None
    updated_at: datetime | None

    @classmethod
    def of(cls, run: RunState) -> RunDraft:
        values = {f.name: getattr(run, f.name) for f in fields(cls)}
        values["progress"] = {phase: dict(items) for phase, items in run.progress.items()}
        values["outputs"] = copy.deepcopy(dict(run.outputs))
        return cls(**values)

    def freeze(self) -> RunState:
        # Every field came from a validated RunState or from decide's own typed code.
        return RunState.model_construct(**{f.name: getattr(self, f.name) for f in fields(self)})
