"""The orchestration state machine (DESIGN.md §7). Pure: no I/O, the clock is passed in.

``decide(run, event, now)`` is the one seam: a run snapshot and an event go in, a
``Decision`` (the new snapshot with its version bumped, the effects to schedule, the outcome
for the audit log) comes out; a run's first decision is ``start_run`` (or ``rejected_start``). It never raises for a bad or late event: those come back as ``ignored``.

One ``transitions.Machine`` (``machines/machine.py``, built from ``machines/pipeline.py``) is
shared by every run. A lightweight ``_RunModel`` is attached
for one decision and detached right after, under a lock, so the callback threads of the
Pub/Sub client can call ``decide`` concurrently.

The parallel part (IAM ∥ builds) is modelled as data, not as parallel states, so ``state``
stays one string: builds are scheduled together with IAM, their items live in
``progress.build``, and the string state names the branch that still holds the run back
(``provisioning_iam``/``verifying_iam`` while IAM is pending, ``building`` once only builds are).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from transitions import MachineError

from machines.draft import RunDraft
from machines.errors import clip
from machines.machine import (
    ACTIVE_STATES,
    MACHINE,
    STATES,
    STATUS_OF_TERMINAL,
    TERMINAL_STATES,
    admits,
    transition_table,
    trigger_name,
)
from machines.messages import EffectSpec, Event, RunError, RunState, Timer
from machines.outcomes import record_item_failure, record_outputs, stale_reason
from machines.pipeline import (
    FAN_IN,
    ITEM_PROGRESS,
    PIPELINE_STATES,
    STATE_TIMEOUTS,
)
from machines.teardown import TeardownSteps

__all__ = [  # the machine's names too: callers see one module
    "ACTIVE_STATES",
    "DEFAULT_LIMITS",
    "MACHINE",
    "STATES",
    "STATUS_OF_TERMINAL",
    "TERMINAL_STATES",
    "Decision",
    "admits",
    "decide",
    "failed_run",
    "queued_start",
    "rejected_start",
    "start_run",
    "transition_table",
    "trigger_name",
]

DEFAULT_LIMITS: Mapping[str, timedelta] = {
    "state_timeout": timedelta(minutes=30),  # any state without a more specific budget
    **{f"timeout_{state}": timedelta(seconds=seconds) for state, seconds in STATE_TIMEOUTS.items()},
    "iam_budget": timedelta(minutes=10),  # IAM may take 2-7 minutes to propagate
    # IAM checks: at once, an early look, then at 1, 3, 7, 15, 31 s … (doubling, capped) after
    # the first, as if the early look had not been: a change that shows within a quarter second
    # is seen then, and none is seen later than without it (one check more per phase).
    "iam_poll_early": timedelta(seconds=0.25),
    "iam_poll_initial": timedelta(seconds=1),
    "iam_poll_max": timedelta(seconds=30),
    "director_budget": timedelta(minutes=1),
    "director_ping_interval": timedelta(seconds=2),
}
TARGET_POLL = timedelta(seconds=30)  # a queued run re-checks its target this often


@dataclass(frozen=True)
class Decision:
    """What one event does to one run: the new snapshot and the effects to schedule."""

    outcome: str  # applied | ignored
    from_state: str
    to_state: str
    run: RunState
    effects: tuple[EffectSpec, ...] = ()
    detail: str = ""

    @property
    def applied(self) -> bool:
        return self.outcome == "applied"


class _RunModel(TeardownSteps):
    """The object ``transitions`` drives for one decision. Holds the run's private draft."""

    def __init__(self, run: RunDraft, event: Event, now: datetime) -> None:
        self.reset(run, event, now)

    def reset(self, run: RunDraft, event: Event, now: datetime) -> None:
        """Take the next decision's run, event and time (the one model is reused: see ``decide``)."""
        self.state = run.state
        self.run = run
        self.event = event
        self.now = now
        self.effects: list[EffectSpec] = []
        self._source_state = run.state

    # ---- helpers used by callbacks -------------------------------------------------
    def limit(self, key: str) -> timedelta:
        for table in (self.run.limits, DEFAULT_LIMITS):
            if key in table:
                return table[key]
        return self.run.limits.get("state_timeout", DEFAULT_LIMITS["state_timeout"])

    def effect(self, kind: str, item: str | None = None, suffix: str = "", **params: Any) -> None:
        effect_id = f"{kind}:{item or '-'}:a{self.run.attempt}{suffix}"
        self.effects.append(EffectSpec(effect_id=effect_id, kind=kind, item=item, params=params))

    def set_timer(self, purpose: str, delay: timedelta, attempt: int = 0, started_at: datetime | None = None) -> None:
        self.run.timer_seq += 1
        self.run.timer = Timer(
            purpose=purpose, seq=self.run.timer_seq, attempt=attempt, started_at=started_at or self.now
        )
        self.run.wake_at = self.now + delay

    def clear_timer(self) -> None:
        self.run.timer = None
        self.run.wake_at = None

    def items(self, phase: str) -> dict[str, str]:
        return self.run.progress.setdefault(phase, {})

    def open_phase(self, phase: str, names: list[str]) -> dict[str, str]:
        """Create the phase's item map, keeping what already succeeded (a retry redrives the rest)."""
        items = self.items(phase)
        for name in names:
            if items.get(name) != "succeeded":
                items[name] = "pending"
        return items

    def pending(self, phase: str) -> list[str]:
        return sorted(k for k, v in self.items(phase).items() if v != "succeeded")

    def command_id(self, instruction: str, target: str, suffix: str = "") -> str:
        return f"{self.run.run_id}:{instruction}:{target}:a{self.run.attempt}{suffix}"

    # ---- conditions ---------------------------------------------------------------
    def phase_complete(self, _event: Any = None) -> bool:
        phase = FAN_IN.get(self.state)
        return phase is not None and not self.pending(phase)

    def timer_exhausted(self, _event: Any = None) -> bool:
        timer = self.run.timer
        if timer is None:
            return False
        if timer.purpose == "timeout":
            return True
        if timer.purpose == "target":  # a queued run waits as long as the run ahead of it
            return False
        budget = self.limit("iam_budget" if timer.purpose.startswith("iam") else "director_budget")
        return self.now - timer.started_at >= budget

    def __getattr__(self, name: str) -> Any:
        # Conditions of the retry edges: ``failed_in_<state>`` (one per state, named in the graph).
        if name.startswith("failed_in_"):
            target = name.removeprefix("failed_in_")
            return lambda _event=None: self.run.failed_state == target
        raise AttributeError(name)

    # ---- state entry: schedule the state's effects and its deadline --------------
    def on_enter_state(self, _event: Any = None) -> None:
        seq_before = self.run.timer_seq
        handler = getattr(self, f"_enter_{self.state}", None)
        if handler is not None:
            handler()
        if self.state in TERMINAL_STATES:
            self.clear_timer()
            self.run.status = STATUS_OF_TERMINAL[self.state]
        elif self.run.status == "queued" and self.state != "queued":
            self.run.status = "running"
        elif self.run.timer_seq == seq_before:  # no poll timer was set: guard the state with a deadline
            self.set_timer("timeout", self.limit(f"timeout_{self.state}"))

    def _enter_queued(self) -> None:
        # The store wakes the run (wake_at = now) when the run ahead of it ends; the poll is
        # the safety net should that wake-up find the target still held.
        self.run.status = "queued"
        self.set_timer("target", TARGET_POLL)

    def _enter_generating_config(self) -> None:
        self.effect("configgen")

    def _enter_preflight(self) -> None:
        self.open_phase("preflight", self.run.plan.get("all_services", []))
        for name in self.pending("preflight"):
            self.effect("preflight", name)

    def _schedule_builds(self) -> None:
        self.open_phase("build", self.run.plan.get("all_services", []))
        for name in self.pending("build"):
            self.effect("build", name)

    def _enter_provisioning_iam(self) -> None:
        iam = self.items("iam")
        iam.setdefault("accounts", "pending")
        iam.setdefault("accounts_verified", "pending")
        if iam["accounts"] != "succeeded":
            self.effect("iam.provision", "accounts")
        self._schedule_builds()

    def _enter_verifying_iam(self) -> None:
        self.items("iam")["accounts"] = "succeeded"
        self._poll_iam("accounts", attempt=0, started_at=self.now)
        if self.event.type != "iam.accounts_created":  # a retry re-enters here: redrive builds too
            self._schedule_builds()

    def _poll_iam(self, phase: str, attempt: int, started_at: datetime) -> None:
        self.effect("iam.verify", phase, suffix=f":p{attempt}")
        delay = self._iam_poll_delay(attempt)
        self.set_timer(f"iam.{phase}", delay, attempt=attempt, started_at=started_at)

    def _iam_poll_delay(self, attempt: int) -> timedelta:
        """From check ``attempt`` to the next one (see ``iam_poll_early`` in DEFAULT_LIMITS)."""
        early, first = self.limit("iam_poll_early"), self.limit("iam_poll_initial")
        if early < first:  # the early look, then the schedule it would have had without it
            if attempt <= 1:
                return early if attempt == 0 else first - early
            attempt -= 1
        return min(first * (1 << attempt), self.limit("iam_poll_max"))

    def _enter_building(self) -> None:
        self.items("iam")["accounts_verified"] = "succeeded"
        for name in self.pending("build"):
            if self.event.type == "command.retry" or self.items("build")[name] == "failed":
                self.items("build")[name] = "pending"
                self.effect("build", name)

    def _enter_deploying_director(self) -> None:
        director = self.run.plan["director"]
        items = self.items("director")
        items.setdefault("deploy", "pending")
        items.setdefault("ready", "pending")
        self.effect("deploy", director)

    def _enter_awaiting_director(self) -> None:
        self.items("director")["deploy"] = "succeeded"
        self._ping_director(attempt=0, started_at=self.now)

    def _ping_director(self, attempt: int, started_at: datetime) -> None:
        command_id = self.command_id("ping", self.run.plan["director"], f":p{attempt}")
        self.effect("director.command", "ping", suffix=f":p{attempt}", instruction="ping", command_id=command_id)
        self.set_timer("director.ready", self.limit("director_ping_interval"), attempt, started_at)

    def _enter_provisioning_dataflows(self) -> None:
        self.items("director")["ready"] = "succeeded"
        self.open_phase("dataflows", self.run.plan.get("dataflows", []))
        for name in self.pending("dataflows"):
            self.effect(
                "director.command",
                name,
                instruction="dataflow-setup",
                dataflow=name,
                command_id=self.command_id("dataflow-setup", name),
            )

    def _enter_verifying_dataflow_iam(self) -> None:
        iam = self.items("iam")
        iam["bindings"] = "pending"
        iam["bindings_verified"] = "pending"
        self.effect("iam.bind", "resources")

    def _enter_deploying_services(self) -> None:
        self.items("iam")["bindings_verified"] = "succeeded"
        self.open_phase("deploy", self.run.plan.get("services", []))
        for name in self.pending("deploy"):
            self.effect("deploy", name)

    def _enter_dependent_setup(self) -> None:
        self.open_phase("dependent", self.run.plan.get("app_dataflows", []))
        for name in self.pending("dependent"):
            self.effect(
                "director.command",
                name,
                suffix=":dependent",
                instruction="dependent-resource-setup",
                dataflow=name,
                command_id=self.command_id("dependent-resource-setup", name),
            )

    # ---- internal transitions' actions --------------------------------------------
    def on_bindings_applied(self, _event: Any = None) -> None:
        self.items("iam")["bindings"] = "succeeded"
        self._poll_iam("resources", attempt=0, started_at=self.now)

    def on_timer(self, _event: Any = None) -> None:
        timer = self.run.timer
        assert timer is not None  # guarded by decide()
        if timer.purpose == "target":
            self.set_timer("target", TARGET_POLL)
        elif timer.purpose == "iam.accounts":
            self._poll_iam("accounts", timer.attempt + 1, timer.started_at)
        elif timer.purpose == "iam.resources":
            self._poll_iam("resources", timer.attempt + 1, timer.started_at)
        elif timer.purpose == "director.ready":
            self._ping_director(timer.attempt + 1, timer.started_at)

    def on_fail(self, event: Any = None) -> None:
        failed_in = event.transition.source if event is not None else self.state
        self._source_state = failed_in
        self.run.failed_state = failed_in
        self.run.error = RunError(state=failed_in, reason=self._failure_reason(), message=clip(self._failure_message()))

    def on_cancel(self, event: Any = None) -> None:
        # Where it stopped, so a retry resumes there (as after a failure); and the cleanup of
        # what is still running: its effects are cancelled by the store, ``stop`` ends the rest.
        stopped_in = event.transition.source if event is not None else self.state
        self.run.error = None
        self.run.failed_state = stopped_in if stopped_in in PIPELINE_STATES else None
        if stopped_in not in ("pending", "queued"):
            self.effect("stop", "run", cancelled_at=self.now.isoformat())

    def on_retry(self, _event: Any = None) -> None:
        self.run.attempt += 1
        self.run.error = None
        self.run.status = "running"
        for phase in self.run.progress.values():
            for name, status in phase.items():
                if status == "failed":
                    phase[name] = "pending"

    _source_state = ""

    def _failure_reason(self) -> str:
        if self.event.type == "timer.fired":
            return "timeout"
        return self.event.type.replace(".", "_")

    def _failure_message(self) -> str:
        event = self.event
        if event.type == "timer.fired":
            timer = self.run.timer
            waited = (self.now - timer.started_at).total_seconds() if timer else 0.0
            if timer and timer.purpose.startswith("iam"):
                return (
                    f"IAM changes were not visible after {waited:.0f} s ({timer.attempt + 1} checks); "
                    "IAM can take up to 7 minutes: raise the budget or retry"
                )
            if timer and timer.purpose == "director.ready":
                return f"the ServiceDirector did not answer ping within {waited:.0f} s ({timer.attempt + 1} pings)"
            return f"state '{self._source_state}' timed out after {waited:.0f} s"
        what = event.data.get("error") or event.data.get("message") or "no detail given"
        who = f" ({event.item})" if event.item else ""
        return f"{event.type}{who}: {what}"


# One model stays attached to the shared MACHINE and is reset for each decision, under _LOCK:
# attaching a model per decision (``add_model`` binds every trigger and state check to it) cost
# about 70 % of ``decide`` (issue 15.2d).
_LOCK = threading.Lock()
_MODEL = _RunModel(RunDraft.of(RunState(run_id="none")), Event(run_id="none", event_id="none", type="command.start"),
                   datetime.min)
MACHINE.add_model(_MODEL, initial="pending")


def _ignored(run: RunState, event: Event, why: str) -> Decision:
    return Decision("ignored", run.state, run.state, run, (), why)


def decide(run: RunState, event: Event, now: datetime) -> Decision:
    """Apply one event to a run snapshot. Pure; never raises for bad or late events."""
    state = run.state
    trig = trigger_name(event.type)
    if not admits(state, event.type):
        return _ignored(run, event, f"{event.type} is not expected in state '{state}'")

    if event.type == "timer.fired" and (run.timer is None or event.data.get("seq") != run.timer.seq):
        return _ignored(run, event, "stale timer")

    stale = stale_reason(run, event)
    if stale:
        return _ignored(run, event, stale)

    draft = RunDraft.of(run)
    phase = ITEM_PROGRESS.get((event.type, state))
    if phase is not None:
        items = draft.progress.get(phase, {})
        key = event.item
        if phase == "director":
            if event.item != run.plan.get("director"):
                return _ignored(run, event, f"deploy of {event.item!r} is not the director")
            key = "deploy"
        if key not in items:
            return _ignored(run, event, f"{event.item!r} is not an item of phase '{phase}'")
        if items[key] == "succeeded":
            return _ignored(run, event, f"{event.item!r} already succeeded in phase '{phase}'")
        items[key] = "succeeded"
        record_outputs(draft, event)
    elif event.type.endswith(".failed"):
        record_item_failure(draft, event)
    elif event.type == "iam.accounts_created":
        if not isinstance(event.data.get("service_accounts", {}), Mapping):  # dict() below would raise
            return _ignored(run, event, "iam.accounts_created whose service_accounts is not a map")
        record_outputs(draft, event)
    elif event.type == "iam.accounts_removed":
        record_outputs(draft, event)

    with _LOCK:
        model = _MODEL
        model.reset(draft, event, now)
        try:
            fired = model.trigger(trig)
            while fired and model.state in FAN_IN:
                model._source_state = model.state
                if not model.may_advance():
                    break
                model.advance()
        except MachineError as exc:  # a guard refused every edge: nothing changes
            return _ignored(run, event, str(exc.value))
        to_state, effects = model.state, tuple(model.effects)
    if not fired:
        return _ignored(run, event, f"{event.type} changed nothing in state '{state}'")
    draft.state = to_state
    draft.version += 1  # one applied transition, one version: the audit log's sequence
    draft.updated_at = now
    detail = f"{state} -> {to_state}" if to_state != state else f"recorded in '{state}'"
    return Decision("applied", state, to_state, draft.freeze(), effects, detail)


def start_run(run_id: str, plan: Mapping[str, Any], limits: Mapping[str, timedelta], now: datetime) -> Decision:
    """The first decision of a run: ``pending`` -> ``generating_config``."""
    run = RunState(run_id=run_id, plan=dict(plan), limits=dict(limits), created_at=now, updated_at=now)
    event = Event(run_id=run_id, event_id="start", type="command.start")
    return decide(run, event, now)


def queued_start(
    run_id: str, plan: Mapping[str, Any], limits: Mapping[str, timedelta], now: datetime, holder: str
) -> Decision:
    """The first decision of a run whose target is busy with ``holder``: ``pending`` -> ``queued``."""
    run = RunState(run_id=run_id, plan=dict(plan), limits=dict(limits), created_at=now, updated_at=now)
    event = Event(run_id=run_id, event_id="start", type="target.busy", data={"holder": holder})
    return decide(run, event, now)


def rejected_start(run_id: str, reason: str, message: str, now: datetime) -> Decision:
    """The first decision of a run that cannot start (e.g. an invalid architecture)."""
    return Decision("applied", "pending", "failed", failed_run(run_id, reason, message, now), (),
                    f"rejected at start: {reason}")


def failed_run(run_id: str, reason: str, message: str, now: datetime) -> RunState:
    """A run that could not start (e.g. an invalid architecture): recorded, never dropped."""
    return RunState(
        run_id=run_id,
        state="failed",
        status="failed",
        version=1,
        error=RunError(state="pending", reason=reason, message=clip(message)),
        failed_state=None,
        created_at=now,
        updated_at=now,
    )
