"""The one ``transitions.Machine`` every run shares, built from machines/pipeline.py.

Its states are the pipeline's phases between ``pending`` and the terminal states; its edges
are the phases' moves, the fan-in joins, the deadlines, cancel, the failure edges and the retry
edges back to the state that failed. The callbacks it names (``on_enter_state``, ``on_fail``,
``phase_complete``, ...) are methods of the model ``machines.orchestration`` attaches for one
decision; they are referenced here by name only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transitions import Machine

from machines.messages import RunStatus
from machines.pipeline import (
    FAILURE_SOURCES,
    PHASES,
    PIPELINE_STATES,
    TEARDOWN_START,
    TERMINAL_STATES,
)

__all__ = [
    "ACTIVE_STATES",
    "MACHINE",
    "STATES",
    "STATUS_OF_TERMINAL",
    "TERMINAL_STATES",
    "admits",
    "transition_table",
    "trigger_name",
]

# The phases, their edges, items, joins, failures and timeouts come from machines/pipeline.py.
# ``queued``: started while another run of the same target was active; it waits for the target.
ACTIVE_STATES: tuple[str, ...] = ("pending", "queued", *PIPELINE_STATES)
STATES: tuple[str, ...] = ACTIVE_STATES + TERMINAL_STATES
STATUS_OF_TERMINAL: Mapping[str, RunStatus] = {
    "succeeded": "succeeded", "failed": "failed", "cancelled": "cancelled", "torn_down": "torn_down",
}


def trigger_name(event_type: str) -> str:
    return event_type.replace(".", "_")


# Edges that run an action of their own besides entering a state.
_AFTER: dict[tuple[str, str], str] = {("verifying_dataflow_iam", "iam.bindings_applied"): "on_bindings_applied"}


def transition_table() -> list[dict[str, Any]]:
    """The machine's edges, derived from ``machines.pipeline.PHASES``; shared by ``MACHINE``
    and ``podium graph``."""
    active = list(ACTIVE_STATES)
    t: list[dict[str, Any]] = [
        {"trigger": "command_start", "source": "pending", "dest": PIPELINE_STATES[0]},
        # One active run per target: the store sees the target's lock and says which.
        {"trigger": "target_busy", "source": "pending", "dest": "queued"},
        {"trigger": "target_acquired", "source": "queued", "dest": PIPELINE_STATES[0]},
        # Teardown: from any end but a finished teardown (a second one finds nothing to do there).
        {"trigger": "command_teardown", "source": ["succeeded", "failed", "cancelled"], "dest": TEARDOWN_START,
         "before": "on_teardown"},
    ]
    # Each phase's own edges; one edge (several sources) per (event, destination, action).
    grouped: dict[tuple[str, str | None, str | None], list[str]] = {}
    for phase in PHASES:
        for event, dest in phase.moves:
            grouped.setdefault((event, dest, _AFTER.get((phase.state, event))), []).append(phase.state)
    for (event, dest, after), sources in grouped.items():
        edge: dict[str, Any] = {"trigger": trigger_name(event),
                                "source": sources[0] if len(sources) == 1 else sources, "dest": dest}
        if after:
            edge["after"] = after
        t.append(edge)
    # Fan-in joins: tried after every applied event; pass when the phase's last item reported.
    t += [{"trigger": "advance", "source": p.state, "dest": p.then, "conditions": "phase_complete"}
          for p in PHASES if p.fan_in]
    t += [
        # Deadlines: a poll budget or a state timeout that ran out fails the run; else poll again.
        {"trigger": "timer_fired", "source": active, "dest": "failed", "conditions": "timer_exhausted"},
        {"trigger": "timer_fired", "source": active, "dest": None, "after": "on_timer"},
        {"trigger": "command_cancel", "source": active, "dest": "cancelled", "before": "on_cancel"},
        # The cancel's cleanup reports back: recorded in the audit log, the run stays cancelled.
        {"trigger": "stop_succeeded", "source": "cancelled", "dest": None},
        {"trigger": "stop_failed", "source": "cancelled", "dest": None},
    ]
    t += [{"trigger": trigger_name(f), "source": list(sources), "dest": "failed"}
          for f, sources in FAILURE_SOURCES.items()]
    # Redrive: back to the state that failed (one edge per state keeps the graph honest).
    t += [
        {
            "trigger": "command_retry",
            "source": ["failed", "cancelled"],  # a cancelled run resumes where it was stopped
            "dest": state,
            "conditions": f"failed_in_{state}",
            "before": "on_retry",
        }
        for state in PIPELINE_STATES
    ]
    return t


def _build_machine() -> Machine:
    machine = Machine(
        model=[],
        states=[{"name": s, "on_enter": "on_enter_state"} for s in STATES],
        transitions=transition_table(),
        initial="pending",
        auto_transitions=False,
        ignore_invalid_triggers=False,
        send_event=True,
    )
    # Failure edges record the error before the state changes.
    for trig in (*(trigger_name(f) for f in FAILURE_SOURCES), "timer_fired"):
        for transition_list in machine.events[trig].transitions.values():
            for tr in transition_list:
                if tr.dest == "failed":
                    tr.before.append("on_fail")
    return machine


MACHINE: Machine = _build_machine()


def admits(state: str, event_type: str) -> bool:
    event = MACHINE.events.get(trigger_name(event_type))
    return event is not None and state in event.transitions
