"""machines/pipeline.py is the one definition of the pipeline: the machine, the event types and
the handlers' outcome tables all derive from it (issue 11 point 1)."""

from __future__ import annotations

from datetime import timedelta

from handlers.base import FAILURE_EVENT, SUCCESS_EVENTS
from machines import orchestration
from machines.messages import EVENT_TYPES
from machines.pipeline import (
    EFFECT_KINDS,
    FAILURE_SOURCES,
    FAN_IN,
    PHASES,
    PIPELINE_STATES,
    STATE_TIMEOUTS,
)


def edges() -> set[tuple[str, str, str | None]]:
    out = set()
    for edge in orchestration.transition_table():
        sources = edge["source"] if isinstance(edge["source"], list) else [edge["source"]]
        out |= {(edge["trigger"], s, edge["dest"]) for s in sources}
    return out


def test_the_machine_has_exactly_the_phases_in_pipeline_order() -> None:
    assert ("pending", "queued", *PIPELINE_STATES) == orchestration.ACTIVE_STATES
    assert orchestration.MACHINE.get_state("generating_config")  # type: ignore[no-untyped-call]
    assert ("command_start", "pending", PIPELINE_STATES[0]) in edges()


def test_every_move_join_failure_and_retry_of_the_table_is_an_edge() -> None:
    have = edges()
    for phase in PHASES:
        for event, dest in phase.moves:
            assert (orchestration.trigger_name(event), phase.state, dest) in have, (phase.state, event)
        if phase.fan_in:
            assert ("advance", phase.state, phase.then) in have
        for failure in phase.fails_on:
            assert (orchestration.trigger_name(failure), phase.state, "failed") in have
        assert ("command_retry", "failed", phase.state) in have
    # and nothing else fails a run than what the table says
    failing = {(t, s) for t, s, d in have if d == "failed" and t not in ("timer_fired",)}
    assert failing == {(orchestration.trigger_name(f), s) for f, states in FAILURE_SOURCES.items() for s in states}


def test_timeouts_and_joins_come_from_the_table() -> None:
    for state, seconds in STATE_TIMEOUTS.items():
        assert orchestration.DEFAULT_LIMITS[f"timeout_{state}"] == timedelta(seconds=seconds)
    assert set(FAN_IN) == {p.state for p in PHASES if p.fan_in}


def test_event_types_and_the_handlers_outcome_tables_derive_from_the_effect_kinds() -> None:
    assert set(FAILURE_EVENT) == set(SUCCESS_EVENTS) == set(EFFECT_KINDS)
    for name, kind in EFFECT_KINDS.items():
        assert FAILURE_EVENT[name] == kind.fails_with
        assert SUCCESS_EVENTS[name] == kind.succeeds_with
        assert kind.succeeds_with | {kind.fails_with} <= EVENT_TYPES
    assert {e for k in EFFECT_KINDS.values() for e in (*k.succeeds_with, k.fails_with)} == EVENT_TYPES


def test_a_state_fails_on_what_its_effects_report() -> None:
    for phase in PHASES:
        for kind in phase.effects:
            assert EFFECT_KINDS[kind].fails_with in phase.fails_on, (phase.state, kind)
