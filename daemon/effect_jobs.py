"""One effect this replica leases, as the effect runner tracks it (:class:`Job`), and how long
one attempt of each kind may run (:func:`deadline_for`). No I/O; shared by the
:class:`daemon.effect_dispatch.Dispatcher` and the :class:`daemon.effect_leases.Leaser`."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

from daemon.config import Settings
from daemon.store_leases import Key, LeasedEffect
from machines.messages import RunView

JobState = Literal["waiting", "ready", "running", "reporting", "reported"]


def deadline_for(settings: Settings, kind: str) -> float:
    """The start-to-close deadline of one attempt of an effect ``kind``, in seconds."""
    if kind in settings.effect_deadline_seconds:
        return float(settings.effect_deadline_seconds[kind])
    defaults = {
        "preflight": settings.preflight_timeout_seconds + 60.0,  # its own timeout, then reporting
        "build": 1800.0,
        "deploy": 900.0,
        "configgen": 120.0,
        "iam.provision": 120.0,
        "iam.verify": 60.0,
        "iam.bind": 120.0,
        "director.command": 60.0,  # one publish
    }
    return defaults.get(kind, 120.0)


@dataclass(eq=False)
class Job:
    """One effect this replica leases, from intake to its outcome being applied."""

    run: RunView
    leased: LeasedEffect
    state: JobState = "waiting"
    since: float = field(default_factory=time.monotonic)  # when it entered its state
    deadline: float = math.inf
    slot: bool = False  # holds one of its kind's slots
    abandoned: bool = False  # past its deadline: its thread is left to finish alone
    counted: bool = False  # in the dispatcher's count of its run's running effects
    # When its lease was granted (just before this job was made) or last renewed, monotonic.
    leased_at: float = field(default_factory=time.monotonic)
    # Set when the lease is lost (the run was cancelled, or another replica took the effect
    # over): a handler that watches ``EffectContext.cancelled`` stops its work.
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def key(self) -> Key:
        return self.leased.key

    @property
    def kind(self) -> str:
        return self.leased.spec.kind

    @property
    def claim(self) -> str:
        return self.leased.claim

    @property
    def attempts(self) -> int:
        return self.leased.attempts
