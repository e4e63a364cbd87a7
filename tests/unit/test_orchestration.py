"""machines.orchestration: the pure FSM (DESIGN.md §7). No I/O: a run and an event go in,
a Decision comes out. The clock is the fixed ``NOW`` unless a test moves it."""

from __future__ import annotations

import itertools
import sys
import threading
from dataclasses import FrozenInstanceError
from datetime import UTC, datetime, timedelta
from itertools import accumulate
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from machines import orchestration
from machines.messages import (
    COMMAND_EVENT_TYPES,
    EVENT_TYPES,
    EffectSpec,
    Event,
    RunError,
    RunState,
)
from machines.orchestration import (
    ACTIVE_STATES,
    DEFAULT_LIMITS,
    MACHINE,
    STATES,
    TERMINAL_STATES,
    Decision,
    admits,
    decide,
    failed_run,
    queued_start,
    rejected_start,
    start_run,
)
from machines.outcomes import attempt_of

NOW = datetime(2026, 1, 1, tzinfo=UTC)

PLAN: dict[str, Any] = {
    "director": "director",
    "services": ["publisher", "subscriber"],
    "all_services": ["director", "publisher", "subscriber"],
    "dataflows": ["director-infra", "tracer"],
    "app_dataflows": ["tracer"],
    "ephemeral_dataflows": ["tracer"],
}

# Three or four items in every fan-in phase: 6 or 24 orders each.
WIDE_PLAN: dict[str, Any] = {
    "director": "director",
    "services": ["orders", "billing", "audit"],
    "all_services": ["director", "orders", "billing", "audit"],
    "dataflows": ["director-infra", "sales", "ledger", "trail"],
    "app_dataflows": ["sales", "ledger", "trail", "alerts"],
}

ALL_EVENT_TYPES = sorted(EVENT_TYPES | COMMAND_EVENT_TYPES)


# ---- helpers -------------------------------------------------------------------------

_event_ids = itertools.count()


def ev(type_: str, item: str | None = None, *, run_id: str = "r1", **data: Any) -> Event:
    """An event with a fresh, unique event_id."""
    return Event(run_id=run_id, event_id=f"ev-{next(_event_ids)}", type=type_, item=item, data=data)


def new_run(
    plan: dict[str, Any] = PLAN, limits: dict[str, float] | None = None, run_id: str = "r1"
) -> RunState:
    return start_run(run_id, plan, limits or {}, NOW).run


def drive(run: RunState, *events: Event, now: datetime = NOW) -> tuple[RunState, list[Decision]]:
    """Apply ``events`` in order, feeding each decision's run to the next. Asserts nothing."""
    decisions = []
    for event in events:
        decision = decide(run, event, now)
        decisions.append(decision)
        run = decision.run
    return run, decisions


def apply(run: RunState, event: Event, now: datetime = NOW) -> Decision:
    """Decide one event that must be applied."""
    decision = decide(run, event, now)
    assert decision.outcome == "applied", decision.detail
    return decision


def fire(run: RunState, now: datetime = NOW, seq: int | None = None) -> Decision:
    """The timer sweep firing the run's current timer (or ``seq``)."""
    assert run.timer is not None
    return decide(
        run, ev("timer.fired", run_id=run.run_id, seq=run.timer.seq if seq is None else seq), now
    )


def ids(decision: Decision) -> list[str]:
    return [e.effect_id for e in decision.effects]


def fx(effect_id: str, kind: str, item: str | None = None, **params: Any) -> EffectSpec:
    return EffectSpec(effect_id=effect_id, kind=kind, item=item, params=params)


def delay_of(run: RunState, now: datetime = NOW) -> float:
    assert run.wake_at is not None
    return (run.wake_at - now).total_seconds()


def first_pending(run: RunState, phase: str) -> str:
    return next(name for name, status in run.progress[phase].items() if status != "succeeded")


def next_happy_event(run: RunState) -> Event:
    """The event that moves ``run`` one step along the happy path."""
    plan, rid = run.plan, run.run_id
    match run.state:
        case "generating_config":
            return ev("config.generated", run_id=rid)
        case "preflight":
            return ev("preflight.passed", first_pending(run, "preflight"), run_id=rid)
        case "provisioning_iam":
            return ev(
                "iam.accounts_created", run_id=rid, service_accounts={"publisher": "sa-pub@x"}
            )
        case "verifying_iam":
            return ev("iam.verified", "accounts", run_id=rid)
        case "building":
            name = first_pending(run, "build")
            return ev("build.succeeded", name, run_id=rid, image=f"local://{name}@sha256:1")
        case "deploying_director":
            return ev("deploy.succeeded", plan["director"], run_id=rid, url="http://director")
        case "awaiting_director":
            return ev("director.ready", "director", run_id=rid)
        case "provisioning_dataflows":
            return ev("director.dataflow_complete", first_pending(run, "dataflows"), run_id=rid)
        case "verifying_dataflow_iam":
            if run.progress["iam"]["bindings"] != "succeeded":
                return ev("iam.bindings_applied", "resources", run_id=rid)
            return ev("iam.verified", "resources", run_id=rid)
        case "deploying_services":
            name = first_pending(run, "deploy")
            return ev("deploy.succeeded", name, run_id=rid, url=f"http://{name}")
        case "dependent_setup":
            return ev("director.dependent_complete", first_pending(run, "dependent"), run_id=rid)
        case "succeeded":  # run_at of a teardown state: tear the finished run down
            return ev("command.teardown", run_id=rid)
        case "removing_services":
            return ev("undeploy.succeeded", first_pending(run, "undeploy"), run_id=rid)
        case "removing_dataflows":
            return ev("director.dataflow_complete", first_pending(run, "teardown"), run_id=rid)
        case "removing_director":
            return ev("undeploy.succeeded", plan["director"], run_id=rid)
        case "removing_accounts":
            return ev("iam.accounts_removed", "accounts", run_id=rid, removed=[])
    raise AssertionError(f"no happy step from {run.state}")


def run_at(
    state: str,
    plan: dict[str, Any] = PLAN,
    limits: dict[str, float] | None = None,
    run_id: str = "r1",
) -> RunState:
    """A run driven along the happy path until it first enters ``state``."""
    if state == "pending":
        return RunState(run_id=run_id, plan=dict(plan), limits=dict(limits or {}))
    if state == "queued":  # started while another run held the target
        return queued_start(run_id, plan, limits or {}, NOW, "r0").run
    run = new_run(plan, limits, run_id)
    for _ in range(100):
        if run.state == state:
            return run
        run = apply(run, next_happy_event(run)).run
    raise AssertionError(f"never reached {state}; stuck in {run.state}")


def run_to_end(run: RunState) -> RunState:
    for _ in range(100):
        if run.state in TERMINAL_STATES:
            return run
        run = apply(run, next_happy_event(run)).run
    raise AssertionError(f"stuck in {run.state}")


def expect_move(
    decision: Decision,
    from_state: str,
    to_state: str,
    effects: list[EffectSpec],
    timer: tuple[str, float] | None,
) -> None:
    """An applied decision that changed state, scheduled ``effects`` and set ``timer`` (purpose, delay)."""
    assert decision.outcome == "applied", decision.detail
    assert (decision.from_state, decision.to_state, decision.run.state) == (
        from_state,
        to_state,
        to_state,
    )
    assert list(decision.effects) == effects
    if timer is None:
        assert decision.run.timer is None
        assert decision.run.wake_at is None
    else:
        purpose, delay = timer
        assert decision.run.timer is not None
        assert decision.run.timer.purpose == purpose
        assert delay_of(decision.run) == delay


def expect_recorded(decision: Decision, before: RunState) -> None:
    """An applied decision that only recorded progress: same state, no effects, same timer."""
    assert decision.outcome == "applied", decision.detail
    assert decision.from_state == decision.to_state == decision.run.state == before.state
    assert decision.effects == ()
    assert decision.run.timer == before.timer
    assert decision.run.wake_at == before.wake_at
    assert decision.detail == f"recorded in '{before.state}'"


def expect_ignored(decision: Decision, before: RunState, why: str) -> None:
    assert decision.outcome == "ignored"
    assert decision.from_state == decision.to_state == before.state
    assert decision.effects == ()
    assert why in decision.detail, decision.detail
    assert decision.run == before


# ---- the happy path ------------------------------------------------------------------


def test_happy_path_every_transition_with_its_effects_and_timer() -> None:
    d = start_run("r1", PLAN, {}, NOW)
    expect_move(
        d, "pending", "generating_config", [fx("configgen:-:a0", "configgen")], ("timeout", 300)
    )
    assert d.run.status == "running"
    assert d.run.created_at == NOW

    d = apply(d.run, ev("config.generated"))
    expect_move(
        d,
        "generating_config",
        "preflight",
        [fx(f"preflight:{s}:a0", "preflight", s) for s in ("director", "publisher", "subscriber")],
        ("timeout", 900),
    )
    assert d.run.progress["preflight"] == dict.fromkeys(PLAN["all_services"], "pending")

    for name in ("director", "publisher"):
        before = d.run
        d = apply(before, ev("preflight.passed", name))
        expect_recorded(d, before)
        assert d.run.progress["preflight"][name] == "succeeded"

    d = apply(d.run, ev("preflight.passed", "subscriber"))
    expect_move(
        d,
        "preflight",
        "provisioning_iam",
        [fx("iam.provision:accounts:a0", "iam.provision", "accounts")]
        + [fx(f"build:{s}:a0", "build", s) for s in ("director", "publisher", "subscriber")],
        ("timeout", DEFAULT_LIMITS["state_timeout"].total_seconds()),
    )
    assert d.run.progress["iam"] == {"accounts": "pending", "accounts_verified": "pending"}
    assert d.run.progress["build"] == dict.fromkeys(PLAN["all_services"], "pending")

    d = apply(
        d.run, ev("iam.accounts_created", "accounts", service_accounts={"publisher": "sa-pub@x"})
    )
    expect_move(
        d,
        "provisioning_iam",
        "verifying_iam",
        [fx("iam.verify:accounts:a0:p0", "iam.verify", "accounts")],
        ("iam.accounts", 0.25),
    )
    assert d.run.outputs["service_accounts"] == {"publisher": "sa-pub@x"}
    assert d.run.progress["iam"]["accounts"] == "succeeded"

    d = apply(d.run, ev("iam.verified", "accounts"))
    expect_move(d, "verifying_iam", "building", [], ("timeout", DEFAULT_LIMITS["state_timeout"].total_seconds()))
    assert d.run.progress["iam"]["accounts_verified"] == "succeeded"

    for name in ("director", "publisher"):
        before = d.run
        d = apply(before, ev("build.succeeded", name, image=f"img-{name}"))
        expect_recorded(d, before)

    d = apply(d.run, ev("build.succeeded", "subscriber", image="img-subscriber"))
    expect_move(
        d,
        "building",
        "deploying_director",
        [fx("deploy:director:a0", "deploy", "director")],
        ("timeout", 600),
    )
    assert d.run.outputs["images"] == {s: f"img-{s}" for s in PLAN["all_services"]}
    assert d.run.progress["director"] == {"deploy": "pending", "ready": "pending"}

    d = apply(d.run, ev("deploy.succeeded", "director", url="http://director"))
    expect_move(
        d,
        "deploying_director",
        "awaiting_director",
        [
            fx(
                "director.command:ping:a0:p0",
                "director.command",
                "ping",
                instruction="ping",
                command_id="r1:ping:director:a0:p0",
            )
        ],
        ("director.ready", 2),
    )
    assert d.run.outputs["director"] == {"url": "http://director"}
    assert d.run.progress["director"]["deploy"] == "succeeded"

    d = apply(d.run, ev("director.ready", "director"))
    expect_move(
        d,
        "awaiting_director",
        "provisioning_dataflows",
        [
            fx(
                f"director.command:{df}:a0",
                "director.command",
                df,
                instruction="dataflow-setup",
                dataflow=df,
                command_id=f"r1:dataflow-setup:{df}:a0",
            )
            for df in ("director-infra", "tracer")
        ],
        ("timeout", 900),
    )
    assert d.run.progress["director"]["ready"] == "succeeded"

    before = d.run
    d = apply(before, ev("director.dataflow_complete", "director-infra"))
    expect_recorded(d, before)

    d = apply(d.run, ev("director.dataflow_complete", "tracer"))
    expect_move(
        d,
        "provisioning_dataflows",
        "verifying_dataflow_iam",
        [fx("iam.bind:resources:a0", "iam.bind", "resources")],
        ("timeout", DEFAULT_LIMITS["state_timeout"].total_seconds()),
    )

    # bindings_applied is internal: same state, but it starts the IAM poll (effect + timer).
    d = apply(d.run, ev("iam.bindings_applied", "resources"))
    expect_move(
        d,
        "verifying_dataflow_iam",
        "verifying_dataflow_iam",
        [fx("iam.verify:resources:a0:p0", "iam.verify", "resources")],
        ("iam.resources", 0.25),
    )
    assert d.run.progress["iam"]["bindings"] == "succeeded"

    d = apply(d.run, ev("iam.verified", "resources"))
    expect_move(
        d,
        "verifying_dataflow_iam",
        "deploying_services",
        [fx(f"deploy:{s}:a0", "deploy", s) for s in ("publisher", "subscriber")],
        ("timeout", 900),
    )
    assert d.run.progress["iam"]["bindings_verified"] == "succeeded"

    before = d.run
    d = apply(before, ev("deploy.succeeded", "publisher", url="http://publisher"))
    expect_recorded(d, before)

    d = apply(d.run, ev("deploy.succeeded", "subscriber", url="http://subscriber"))
    expect_move(
        d,
        "deploying_services",
        "dependent_setup",
        [
            fx(
                "director.command:tracer:a0:dependent",
                "director.command",
                "tracer",
                instruction="dependent-resource-setup",
                dataflow="tracer",
                command_id="r1:dependent-resource-setup:tracer:a0",
            )
        ],
        ("timeout", 600),
    )

    d = apply(d.run, ev("director.dependent_complete", "tracer"))
    expect_move(d, "dependent_setup", "succeeded", [], None)
    run = d.run
    assert run.status == "succeeded"
    assert run.error is None
    assert run.failed_state is None
    assert run.attempt == 0
    assert run.outputs["urls"] == {
        "director": "http://director",
        "publisher": "http://publisher",
        "subscriber": "http://subscriber",
    }
    assert all(
        status == "succeeded" for phase in run.progress.values() for status in phase.values()
    )


def test_every_new_timer_gets_a_higher_seq() -> None:
    run = new_run()
    seqs = [run.timer.seq]
    while run.state not in TERMINAL_STATES:
        run = apply(run, next_happy_event(run)).run
        if run.timer is not None:
            seqs.append(run.timer.seq)
    assert seqs == sorted(seqs)
    assert run.timer_seq >= len(set(seqs))


def test_detail_names_the_transition() -> None:
    d = apply(new_run(), ev("config.generated"))
    assert d.detail == "generating_config -> preflight"
    assert d.applied


# ---- fan-in guards -------------------------------------------------------------------

FAN_INS = [
    # state, per-item event, plan key of the items, the state after the last item
    ("preflight", "preflight.passed", "all_services", "provisioning_iam"),
    ("building", "build.succeeded", "all_services", "deploying_director"),
    ("provisioning_dataflows", "director.dataflow_complete", "dataflows", "verifying_dataflow_iam"),
    ("deploying_services", "deploy.succeeded", "services", "dependent_setup"),
    ("dependent_setup", "director.dependent_complete", "app_dataflows", "succeeded"),
]


@pytest.mark.parametrize(
    ("state", "event_type", "plan_key", "next_state"), FAN_INS, ids=[f[0] for f in FAN_INS]
)
def test_fan_in_advances_only_on_the_last_item_in_any_order(
    state: str, event_type: str, plan_key: str, next_state: str
) -> None:
    start = run_at(state, WIDE_PLAN)
    items = WIDE_PLAN[plan_key]
    assert len(items) >= 3
    for order in itertools.permutations(items):
        run = start
        for i, item in enumerate(order):
            d = apply(run, ev(event_type, item))
            if i < len(order) - 1:
                expect_recorded(d, run)
                # a duplicate report of an item already in is ignored, never counted twice
                expect_ignored(decide(d.run, ev(event_type, item), NOW), d.run, "already succeeded")
            else:
                assert (d.from_state, d.to_state) == (state, next_state), order
            run = d.run
        assert run.state == next_state


def test_items_of_one_phase_do_not_count_for_another() -> None:
    run = run_at("deploying_services", WIDE_PLAN)
    # the director and the dataflows are not items of the deploy phase
    expect_ignored(
        decide(run, ev("deploy.succeeded", "director"), NOW), run, "not an item of phase 'deploy'"
    )
    d = decide(run, ev("director.dataflow_complete", "sales"), NOW)
    expect_ignored(d, run, "not expected in state 'deploying_services'")


# ---- the IAM ∥ builds join -----------------------------------------------------------


def test_join_builds_all_done_before_iam_verified_goes_straight_to_deploying_director() -> None:
    run = run_at("provisioning_iam")
    run, _ = drive(run, ev("build.succeeded", "director"), ev("build.succeeded", "publisher"))
    assert run.state == "provisioning_iam"
    run = apply(run, ev("iam.accounts_created")).run
    run = apply(run, ev("build.succeeded", "subscriber")).run
    assert run.state == "verifying_iam"  # builds done, IAM still holds the run back

    d = apply(run, ev("iam.verified", "accounts"))
    expect_move(
        d,
        "verifying_iam",
        "deploying_director",
        [fx("deploy:director:a0", "deploy", "director")],
        ("timeout", 600),
    )
    assert d.run.progress["iam"]["accounts_verified"] == "succeeded"


def test_join_iam_verified_first_waits_in_building_for_the_last_build() -> None:
    run = run_at("provisioning_iam")
    run, _ = drive(run, ev("iam.accounts_created"), ev("build.succeeded", "publisher"))
    d = apply(run, ev("iam.verified", "accounts"))
    expect_move(d, "verifying_iam", "building", [], ("timeout", DEFAULT_LIMITS["state_timeout"].total_seconds()))

    d = apply(d.run, ev("build.succeeded", "director"))
    assert d.to_state == "building"
    d = apply(d.run, ev("build.succeeded", "subscriber"))
    expect_move(
        d,
        "building",
        "deploying_director",
        [fx("deploy:director:a0", "deploy", "director")],
        ("timeout", 600),
    )


def _interleavings(a: list[Event], b: list[Event]) -> list[list[Event]]:
    """Every merge of ``a`` and ``b`` that keeps each one's own order."""
    out = []
    n = len(a) + len(b)
    for positions in itertools.combinations(range(n), len(a)):
        ai, bi, merged = iter(a), iter(b), []
        for i in range(n):
            merged.append(next(ai) if i in positions else next(bi))
        out.append(merged)
    return out


def test_join_every_interleaving_of_the_two_branches() -> None:
    start = run_at("provisioning_iam")
    count = 0
    for build_order in itertools.permutations(PLAN["all_services"]):
        builds = [ev("build.succeeded", name) for name in build_order]
        iam = [ev("iam.accounts_created"), ev("iam.verified", "accounts")]
        for events in _interleavings(iam, builds):
            run, decisions = drive(start, *events)
            count += 1
            assert all(d.outcome == "applied" for d in decisions), [d.detail for d in decisions]
            # the run moves to deploying_director on the very last event, and only then
            assert [d.to_state == "deploying_director" for d in decisions] == [False] * 4 + [True]
            assert run.state == "deploying_director"
            deploys = [e for d in decisions for e in d.effects if e.kind == "deploy"]
            assert [e.effect_id for e in deploys] == ["deploy:director:a0"]
            # along the way, the string state names the branch still holding the run back
            for d in decisions[:-1]:
                iam_done = d.run.progress["iam"]["accounts_verified"] == "succeeded"
                accounts = d.run.progress["iam"]["accounts"] == "succeeded"
                expected = (
                    "building" if iam_done else "verifying_iam" if accounts else "provisioning_iam"
                )
                assert d.to_state == expected
    assert count == 6 * 10


def test_build_reported_during_iam_is_kept() -> None:
    run = run_at("provisioning_iam")
    run, _ = drive(run, ev("build.succeeded", "publisher", image="img"), ev("iam.accounts_created"))
    assert run.progress["build"]["publisher"] == "succeeded"
    assert run.outputs["images"] == {"publisher": "img"}
    d = decide(run, ev("build.succeeded", "publisher"), NOW)
    expect_ignored(d, run, "already succeeded in phase 'build'")


# ---- failure: by event and by timeout --------------------------------------------------

FAILURES = [
    # state, the failure event that belongs to it, its item
    ("generating_config", "config.failed", None),
    ("preflight", "preflight.failed", "publisher"),
    ("provisioning_iam", "iam.failed", "accounts"),
    ("provisioning_iam", "build.failed", "publisher"),
    ("verifying_iam", "iam.failed", "accounts"),
    ("verifying_iam", "build.failed", "publisher"),
    ("building", "build.failed", "publisher"),
    ("deploying_director", "deploy.failed", "director"),
    ("awaiting_director", "director.failed", "director"),
    ("provisioning_dataflows", "director.failed", "tracer"),
    ("verifying_dataflow_iam", "iam.failed", "resources"),
    ("deploying_services", "deploy.failed", "subscriber"),
    ("dependent_setup", "director.failed", "tracer"),
]


@pytest.mark.parametrize(
    ("state", "event_type", "item"), FAILURES, ids=[f"{s}-{e}" for s, e, _ in FAILURES]
)
def test_failure_event_fails_the_run_with_a_clear_error(
    state: str, event_type: str, item: str | None
) -> None:
    run = run_at(state)
    d = apply(run, ev(event_type, item, error="it broke"))
    expect_move(d, state, "failed", [], None)
    failed = d.run
    assert failed.status == "failed"
    assert failed.failed_state == state
    who = f" ({item})" if item else ""
    assert failed.error == RunError(
        state=state, reason=event_type.replace(".", "_"), message=f"{event_type}{who}: it broke"
    )


def test_failure_message_without_detail_says_so() -> None:
    d = apply(run_at("preflight"), ev("preflight.failed", "director"))
    assert d.run.error is not None
    assert d.run.error.message == "preflight.failed (director): no detail given"
    d = apply(run_at("preflight"), ev("preflight.failed", "director", message="tests failed"))
    assert d.run.error.message == "preflight.failed (director): tests failed"


@pytest.mark.parametrize(
    ("state", "event_type", "item", "phase", "key"),
    [
        ("preflight", "preflight.failed", "publisher", "preflight", "publisher"),
        ("building", "build.failed", "subscriber", "build", "subscriber"),
        ("deploying_director", "deploy.failed", "director", "director", "deploy"),
        ("deploying_services", "deploy.failed", "publisher", "deploy", "publisher"),
    ],
)
def test_item_failure_is_recorded_in_progress(
    state: str, event_type: str, item: str, phase: str, key: str
) -> None:
    d = apply(run_at(state), ev(event_type, item))
    assert d.run.progress[phase][key] == "failed"


TIMEOUT_STATES = [
    # states guarded by a plain deadline, with their default limit
    ("generating_config", 300),
    ("preflight", 900),
    ("provisioning_iam", 1800),
    ("building", 1800),
    ("deploying_director", 600),
    ("provisioning_dataflows", 900),
    ("verifying_dataflow_iam", 1800),
    ("deploying_services", 900),
    ("dependent_setup", 600),
]


@pytest.mark.parametrize(("state", "limit"), TIMEOUT_STATES, ids=[s for s, _ in TIMEOUT_STATES])
def test_state_timeout_fails_the_run(state: str, limit: float) -> None:
    run = run_at(state)
    assert run.timer is not None
    assert run.timer.purpose == "timeout"
    assert delay_of(run) == limit
    later = NOW + timedelta(seconds=limit)
    d = fire(run, later)
    expect_move(d, state, "failed", [], None)
    assert d.run.status == "failed"
    assert d.run.failed_state == state
    assert d.run.error == RunError(
        state=state, reason="timeout", message=f"state '{state}' timed out after {limit} s"
    )


def test_state_timeouts_come_from_run_limits() -> None:
    run = run_at("preflight", limits={"timeout_preflight": 42, "state_timeout": 7})
    assert delay_of(run) == 42
    run = run_at("building", limits={"timeout_building": 11})
    assert delay_of(run) == 11


def test_run_state_timeout_applies_to_states_without_their_own() -> None:
    run = run_at("building", limits={"state_timeout": 7})
    assert delay_of(run) == 7


def test_a_queued_run_waits_for_its_target_and_starts_when_it_gets_it() -> None:
    """``queued`` has no deadline: its poll re-arms for as long as the run ahead of it runs."""
    run = run_at("queued")
    assert (run.state, run.status, run.timer.purpose if run.timer else None) == ("queued", "queued", "target")
    for _ in range(3):
        d = fire(run, run.wake_at or NOW)
        assert (d.outcome, d.to_state, d.effects) == ("applied", "queued", ())
        run = d.run
    d = apply(run, ev("target.acquired"))
    assert (d.to_state, d.run.status, [e.kind for e in d.effects]) == ("generating_config", "running", ["configgen"])
    assert decide(run_at("preflight"), ev("target.acquired"), NOW).outcome == "ignored"


@pytest.mark.parametrize("state", [s for s in ACTIVE_STATES if s not in ("pending", "queued")])
def test_every_non_terminal_state_fails_when_its_timers_run_out(state: str) -> None:
    """Firing whatever timer the state holds, on time, always ends in ``failed`` (never loops)."""
    run = run_at(state, limits={"iam_budget": 30, "director_budget": 30})
    now = NOW
    for _ in range(100):
        assert run.state == state
        assert run.wake_at is not None
        now = run.wake_at
        d = fire(run, now)
        assert d.outcome == "applied", d.detail
        run = d.run
        if run.state == "failed":
            break
    assert run.state == "failed"
    assert run.failed_state == state
    assert run.error is not None
    assert run.error.state == state
    assert run.error.reason == "timeout"
    assert run.timer is None and run.wake_at is None


# ---- IAM polling and the director handshake --------------------------------------------


def test_iam_poll_backs_off_exponentially_up_to_the_cap_then_fails_on_budget() -> None:
    run = run_at(
        "verifying_iam",
        limits={"iam_budget": 20, "iam_poll_early": 1, "iam_poll_initial": 1, "iam_poll_max": 4},
    )  # no early look (iam_poll_early not below iam_poll_initial): the plain doubling
    started = run.timer.started_at
    delays = [delay_of(run)]
    effect_ids = ["iam.verify:accounts:a0:p0"]
    now = NOW
    while True:
        now = run.wake_at
        d = fire(run, now)
        assert d.outcome == "applied"
        run = d.run
        if run.state == "failed":
            assert d.effects == ()
            break
        assert run.state == "verifying_iam"
        assert run.timer.purpose == "iam.accounts"
        assert run.timer.started_at == started  # the budget counts from the first check
        assert run.timer.attempt == len(delays)
        delays.append(delay_of(run, now))
        effect_ids += ids(d)
    assert delays == [1, 2, 4, 4, 4, 4, 4]
    assert effect_ids == [f"iam.verify:accounts:a0:p{i}" for i in range(7)]
    assert (now - NOW).total_seconds() == 23  # the first fire at or past the 20 s budget
    assert run.failed_state == "verifying_iam"
    assert run.error.reason == "timeout"
    assert "IAM" in run.error.message
    assert "23 s" in run.error.message and "7 checks" in run.error.message


def test_iam_poll_default_delays() -> None:
    run = run_at("verifying_iam")
    delays = [delay_of(run)]
    for _ in range(9):
        now = run.wake_at
        run = fire(run, now).run
        delays.append(delay_of(run, now))
    # an early look at 0.25 s, then checks 1, 3, 7, 15, 31, 61 s after the first, as without it
    assert delays == [0.25, 0.75, 2, 4, 8, 16, 30, 30, 30, 30]
    assert list(accumulate(delays))[1:7] == [1, 3, 7, 15, 31, 61]


def test_iam_verified_during_polling_ends_the_poll() -> None:
    run = run_at("verifying_iam")
    polled = fire(run, run.wake_at).run
    d = apply(polled, ev("iam.verified", "accounts"))
    assert d.to_state == "building"
    assert d.run.timer.purpose == "timeout"
    # the poll timer that was pending is now stale
    expect_ignored(fire(d.run, seq=polled.timer.seq), d.run, "stale timer")


def test_dataflow_iam_poll_uses_the_iam_budget() -> None:
    limits = {"iam_budget": 5, "iam_poll_initial": 1, "iam_poll_max": 2}
    run = run_at("verifying_dataflow_iam", limits=limits)
    d = apply(run, ev("iam.bindings_applied", "resources"))
    run = d.run
    assert run.timer.purpose == "iam.resources"
    effect_ids = ids(d)
    while run.state == "verifying_dataflow_iam":
        d = fire(run, run.wake_at)
        effect_ids += ids(d)
        run = d.run
    # checks at 0, 0.25 (the early look), 1 and 3 s; the fire at 5 s finds the 5 s budget spent
    assert effect_ids == [f"iam.verify:resources:a0:p{i}" for i in range(4)]
    assert run.state == "failed"
    assert run.failed_state == "verifying_dataflow_iam"
    assert "IAM" in run.error.message


def test_director_is_pinged_until_its_budget_then_the_run_fails() -> None:
    run = run_at("awaiting_director", limits={"director_budget": 10, "director_ping_interval": 2})
    started = run.timer.started_at
    effect_ids = ["director.command:ping:a0:p0"]
    now = NOW
    while True:
        assert run.timer.purpose == "director.ready"
        assert run.timer.started_at == started
        assert delay_of(run, now) == 2  # a steady interval, no backoff
        now = run.wake_at
        d = fire(run, now)
        run = d.run
        if run.state != "awaiting_director":
            assert d.effects == ()
            break
        n = run.timer.attempt
        assert list(d.effects) == [
            fx(
                f"director.command:ping:a0:p{n}",
                "director.command",
                "ping",
                instruction="ping",
                command_id=f"r1:ping:director:a0:p{n}",
            )
        ]
        effect_ids += ids(d)
    assert effect_ids == [f"director.command:ping:a0:p{i}" for i in range(5)]
    assert (now - NOW).total_seconds() == 10
    assert run.state == "failed"
    assert run.failed_state == "awaiting_director"
    assert run.error.reason == "timeout"
    assert "ServiceDirector" in run.error.message
    assert "10 s" in run.error.message and "5 pings" in run.error.message


def test_director_ready_during_pinging_moves_on() -> None:
    run = run_at("awaiting_director")
    run = fire(run, run.wake_at).run
    d = apply(run, ev("director.ready", "director"))
    assert d.to_state == "provisioning_dataflows"
    # later answers to the other pings are ignored, not errors
    expect_ignored(decide(d.run, ev("director.ready", "director"), NOW), d.run, "not expected")


# ---- stale timers --------------------------------------------------------------------


def test_stale_timers_are_ignored() -> None:
    run = run_at("preflight")
    seq = run.timer.seq
    for wrong in (seq - 1, seq + 1, 0, None, "x"):
        d = decide(run, ev("timer.fired", seq=wrong), NOW)
        expect_ignored(d, run, "stale timer")
    d = decide(run, ev("timer.fired"), NOW)  # no seq at all
    expect_ignored(d, run, "stale timer")


def test_timer_of_a_previous_state_is_stale() -> None:
    old = run_at("generating_config")
    run = apply(old, ev("config.generated")).run
    expect_ignored(fire(run, seq=old.timer.seq), run, "stale timer")


def test_timer_fired_on_a_run_without_timer_is_ignored() -> None:
    run = run_at("pending")
    expect_ignored(decide(run, ev("timer.fired", seq=0), NOW), run, "stale timer")


# ---- cancel ------------------------------------------------------------------------------


def _stop(run: RunState) -> list[EffectSpec]:
    return [EffectSpec(effect_id=f"stop:run:a{run.attempt}", kind="stop", item="run",
                       params={"cancelled_at": NOW.isoformat()})]


@pytest.mark.parametrize("state", ACTIVE_STATES)
def test_cancel_from_every_active_state(state: str) -> None:
    """Cancel ends the run at once; what still runs is stopped by a ``stop`` effect (nothing to
    stop before the pipeline began), and the state it stopped in is kept for a retry."""
    run = run_at(state)
    d = apply(run, ev("command.cancel"))
    started = state not in ("pending", "queued")
    expect_move(d, state, "cancelled", _stop(run) if started else [], None)
    assert d.run.status == "cancelled"
    assert d.run.error is None
    assert d.run.failed_state == (state if started else None)


def test_cancel_while_polling_clears_the_poll_timer() -> None:
    run = apply(run_at("verifying_dataflow_iam"), ev("iam.bindings_applied", "resources")).run
    d = apply(run, ev("command.cancel"))
    expect_move(d, "verifying_dataflow_iam", "cancelled", _stop(run), None)


def test_a_cancelled_run_records_its_cleanup_and_a_retry_resumes_where_it_stopped() -> None:
    run = apply(run_at("building"), ev("build.succeeded", "director")).run
    cancelled = apply(run, ev("command.cancel")).run
    d = apply(cancelled, ev("stop.succeeded", "run", stopped=["publisher"]))
    assert (d.to_state, d.run.status) == ("cancelled", "cancelled")  # recorded, still cancelled
    assert decide(d.run, ev("command.cancel"), NOW).outcome == "ignored"  # a second cancel changes nothing
    d = apply(d.run, ev("command.retry"))
    assert (d.from_state, d.to_state, d.run.status, d.run.attempt) == ("cancelled", "building", "running", 1)
    # The director's build had succeeded: only the others are built again.
    assert sorted(e.item for e in d.effects if e.kind == "build") == ["publisher", "subscriber"]


def _terminal_runs() -> dict[str, RunState]:
    return {
        "succeeded": run_to_end(new_run()),
        "failed": apply(run_at("preflight"), ev("preflight.failed", "director")).run,
        "cancelled": apply(run_at("building"), ev("command.cancel")).run,
        "torn_down": _torn_down(run_to_end(new_run())),
    }


def _torn_down(run: RunState) -> RunState:
    d = apply(run, ev("command.teardown"))
    for service in ("publisher", "subscriber"):
        d = apply(d.run, ev("undeploy.succeeded", service))
    d = apply(d.run, ev("director.dataflow_complete", "tracer"))
    d = apply(d.run, ev("undeploy.succeeded", "director"))
    return apply(d.run, ev("iam.accounts_removed", "accounts", removed=["publisher-sa@p.iam"])).run


@pytest.mark.parametrize("terminal", TERMINAL_STATES)
def test_events_on_terminal_runs_are_ignored(terminal: str) -> None:
    run = _terminal_runs()[terminal]
    assert run.state == terminal
    for type_ in ALL_EVENT_TYPES:
        if (terminal in ("failed", "cancelled") and type_ == "command.retry") or (
            terminal != "torn_down" and type_ == "command.teardown"
        ) or (terminal == "cancelled" and type_.startswith("stop.")):
            continue
        for item in (None, "director", "publisher", "tracer"):
            d = decide(run, ev(type_, item, seq=run.timer_seq), NOW)
            expect_ignored(d, run, f"{type_} is not expected in state '{terminal}'")


# ---- retry -------------------------------------------------------------------------------

RETRIES = [
    # state, events reported before the failure, the failure, effects scheduled by the retry
    ("generating_config", [], ev("config.failed"), [fx("configgen:-:a1", "configgen")]),
    (
        "preflight",
        [ev("preflight.passed", "director")],
        ev("preflight.failed", "publisher"),
        [
            fx("preflight:publisher:a1", "preflight", "publisher"),
            fx("preflight:subscriber:a1", "preflight", "subscriber"),
        ],
    ),
    (
        "provisioning_iam",
        [ev("build.succeeded", "publisher")],
        ev("iam.failed", "accounts"),
        [
            fx("iam.provision:accounts:a1", "iam.provision", "accounts"),
            fx("build:director:a1", "build", "director"),
            fx("build:subscriber:a1", "build", "subscriber"),
        ],
    ),
    (
        "provisioning_iam",
        [ev("build.succeeded", "publisher")],
        ev("build.failed", "director"),
        [
            fx("iam.provision:accounts:a1", "iam.provision", "accounts"),
            fx("build:director:a1", "build", "director"),
            fx("build:subscriber:a1", "build", "subscriber"),
        ],
    ),
    (
        "verifying_iam",
        [ev("build.succeeded", "director")],
        ev("build.failed", "subscriber"),
        [
            fx("iam.verify:accounts:a1:p0", "iam.verify", "accounts"),
            fx("build:publisher:a1", "build", "publisher"),
            fx("build:subscriber:a1", "build", "subscriber"),
        ],
    ),
    (
        "building",
        [ev("build.succeeded", "director"), ev("build.succeeded", "publisher")],
        ev("build.failed", "subscriber"),
        [fx("build:subscriber:a1", "build", "subscriber")],
    ),
    (
        "deploying_director",
        [],
        ev("deploy.failed", "director"),
        [fx("deploy:director:a1", "deploy", "director")],
    ),
    (
        "awaiting_director",
        [],
        ev("director.failed", "director"),
        [
            fx(
                "director.command:ping:a1:p0",
                "director.command",
                "ping",
                instruction="ping",
                command_id="r1:ping:director:a1:p0",
            )
        ],
    ),
    (
        "provisioning_dataflows",
        [ev("director.dataflow_complete", "tracer")],
        ev("director.failed", "director-infra"),
        [
            fx(
                "director.command:director-infra:a1",
                "director.command",
                "director-infra",
                instruction="dataflow-setup",
                dataflow="director-infra",
                command_id="r1:dataflow-setup:director-infra:a1",
            )
        ],
    ),
    (
        "verifying_dataflow_iam",
        [],
        ev("iam.failed", "resources"),
        [fx("iam.bind:resources:a1", "iam.bind", "resources")],
    ),
    (
        "deploying_services",
        [ev("deploy.succeeded", "publisher")],
        ev("deploy.failed", "subscriber"),
        [fx("deploy:subscriber:a1", "deploy", "subscriber")],
    ),
]


@pytest.mark.parametrize(
    ("state", "before", "failure", "effects"), RETRIES, ids=[f"{r[0]}-{r[2].type}" for r in RETRIES]
)
def test_retry_redrives_the_failed_state_with_only_unfinished_items(
    state: str, before: list[Event], failure: Event, effects: list[EffectSpec]
) -> None:
    run, _ = drive(run_at(state), *before)
    failed = apply(run, failure).run
    assert failed.state == "failed"

    d = apply(failed, ev("command.retry"))
    assert (d.from_state, d.to_state) == ("failed", state)
    assert d.run.attempt == 1
    assert d.run.error is None
    assert d.run.status == "running"
    assert list(d.effects) == effects
    assert d.run.timer is not None and d.run.wake_at is not None
    assert not any(s == "failed" for phase in d.run.progress.values() for s in phase.values())
    # and the retried run can still finish
    assert run_to_end(d.run).state == "succeeded"


def test_retry_of_dependent_setup_redrives_only_unfinished_dataflows() -> None:
    run = run_at("dependent_setup", WIDE_PLAN)
    run, _ = drive(
        run, ev("director.dependent_complete", "ledger"), ev("director.failed", "sales", error="x")
    )
    d = apply(run, ev("command.retry"))
    assert d.to_state == "dependent_setup"
    assert ids(d) == [f"director.command:{df}:a1:dependent" for df in ("alerts", "sales", "trail")]
    assert {e.params["command_id"] for e in d.effects} == {
        f"r1:dependent-resource-setup:{df}:a1" for df in ("alerts", "sales", "trail")
    }


def test_retry_after_a_timeout_restarts_the_poll_budget() -> None:
    run = run_at("verifying_iam", limits={"iam_budget": 3})
    while run.state == "verifying_iam":
        run = fire(run, run.wake_at).run
    later = NOW + timedelta(hours=1)
    d = apply(run, ev("command.retry"), later)
    assert d.to_state == "verifying_iam"
    assert d.run.timer.purpose == "iam.accounts"
    assert d.run.timer.attempt == 0
    assert d.run.timer.started_at == later
    assert ids(d)[0] == "iam.verify:accounts:a1:p0"


def test_second_retry_uses_attempt_two() -> None:
    run = apply(run_at("deploying_director"), ev("deploy.failed", "director")).run
    run = apply(run, ev("command.retry")).run
    run = apply(run, ev("deploy.failed", "director")).run
    d = apply(run, ev("command.retry"))
    assert d.run.attempt == 2
    assert ids(d) == ["deploy:director:a2"]


@pytest.mark.parametrize("state", ["generating_config", "building", "deploying_services"])
def test_retry_on_a_running_run_is_ignored(state: str) -> None:
    run = run_at(state)
    expect_ignored(decide(run, ev("command.retry"), NOW), run, f"not expected in state '{state}'")


def test_retry_on_a_succeeded_run_or_one_cancelled_before_it_began_is_ignored() -> None:
    run = _terminal_runs()["succeeded"]
    expect_ignored(decide(run, ev("command.retry"), NOW), run, "not expected")
    never_began = apply(run_at("queued"), ev("command.cancel")).run
    assert decide(never_began, ev("command.retry"), NOW).outcome == "ignored"


def test_retry_of_a_run_that_never_started_is_ignored() -> None:
    run = failed_run("r1", "invalid_architecture", "bad file", NOW)
    assert run.status == "failed"
    assert run.error == RunError(state="pending", reason="invalid_architecture", message="bad file")
    d = decide(run, ev("command.retry"), NOW)
    assert d.outcome == "ignored"
    assert d.run == run
    assert d.detail


def test_cancel_of_a_failed_run_is_ignored() -> None:
    run = apply(run_at("building"), ev("build.failed", "director")).run
    expect_ignored(decide(run, ev("command.cancel"), NOW), run, "not expected in state 'failed'")


# ---- invalid triggers ----------------------------------------------------------------------


def _preflight_with_director_passed() -> RunState:
    return apply(run_at("preflight"), ev("preflight.passed", "director")).run


INVALID = [
    (
        "event type not valid in the state",
        lambda: run_at("generating_config"),
        ev("iam.verified"),
        "is not expected in state 'generating_config'",
    ),
    (
        "start on a started run",
        lambda: run_at("preflight"),
        ev("command.start"),
        "is not expected in state 'preflight'",
    ),
    (
        "bindings outside their state",
        lambda: run_at("building"),
        ev("iam.bindings_applied"),
        "is not expected",
    ),
    (
        "late director deploy",
        lambda: run_at("awaiting_director"),
        ev("deploy.succeeded", "director"),
        "is not expected",
    ),
    (
        "unknown item",
        lambda: run_at("preflight"),
        ev("preflight.passed", "nope"),
        "'nope' is not an item of phase 'preflight'",
    ),
    (
        "no item",
        lambda: run_at("preflight"),
        ev("preflight.passed"),
        "None is not an item of phase 'preflight'",
    ),
    (
        "unknown build",
        lambda: run_at("provisioning_iam"),
        ev("build.succeeded", "nope"),
        "not an item of phase 'build'",
    ),
    (
        "unknown dataflow",
        lambda: run_at("provisioning_dataflows"),
        ev("director.dataflow_complete", "nope"),
        "not an item of phase 'dataflows'",
    ),
    (
        "already succeeded",
        _preflight_with_director_passed,
        ev("preflight.passed", "director"),
        "'director' already succeeded in phase 'preflight'",
    ),
    (
        "non-director deploy",
        lambda: run_at("deploying_director"),
        ev("deploy.succeeded", "publisher"),
        "deploy of 'publisher' is not the director",
    ),
    ("stale timer", lambda: run_at("preflight"), ev("timer.fired", seq=-1), "stale timer"),
]


@pytest.mark.parametrize(
    ("make_run", "event", "why"), [i[1:] for i in INVALID], ids=[i[0] for i in INVALID]
)
def test_invalid_triggers_are_ignored_with_a_reason(make_run: Any, event: Event, why: str) -> None:
    run = make_run()
    expect_ignored(decide(run, event, NOW), run, why)


def _runs_in_every_state() -> list[RunState]:
    runs = [run_at(state) for state in ACTIVE_STATES]
    runs.append(apply(run_at("verifying_dataflow_iam"), ev("iam.bindings_applied")).run)
    runs += _terminal_runs().values()
    return runs


def test_decide_never_raises_and_never_mutates_its_input() -> None:
    """Every event type, with a plan item, an unknown item or none, in every state."""
    for run in _runs_in_every_state():
        snapshot = run.model_dump()
        for type_ in ALL_EVENT_TYPES:
            for item in (None, "director", "publisher", "tracer", "accounts", "nope"):
                for data in ({}, {"seq": run.timer_seq}, {"error": "e", "image": "i", "url": "u"}):
                    d = decide(run, ev(type_, item, **data), NOW)
                    assert d.outcome in ("applied", "ignored")
                    if d.outcome == "ignored":  # the frozen snapshot itself: nothing to copy
                        assert d.detail
                        assert d.effects == ()
                        assert d.run is run
                    else:
                        assert d.run is not run
        assert run.model_dump() == snapshot


def test_decide_copies_what_it_changes_and_shares_what_never_changes() -> None:
    run = run_at("preflight")
    snapshot = run.model_dump()
    d = apply(run, ev("preflight.passed", "director"))
    assert run.model_dump() == snapshot
    assert run.progress["preflight"]["director"] == "pending"
    assert d.run.progress is not run.progress
    assert d.run.progress["preflight"] is not run.progress["preflight"]
    assert d.run.outputs is not run.outputs
    assert d.run.plan is run.plan  # fixed at start: shared, not copied


def test_run_records_are_frozen() -> None:
    run = run_at("preflight")
    with pytest.raises(ValidationError):
        run.state = "failed"  # type: ignore[misc]
    d = apply(run, ev("preflight.passed", "director"))
    with pytest.raises(FrozenInstanceError):
        d.outcome = "ignored"  # type: ignore[misc]


def test_decide_bumps_the_version_once_per_applied_transition() -> None:
    run = run_at("preflight").model_copy(update={"version": 7})
    later = NOW + timedelta(seconds=5)
    recorded = decide(run, ev("preflight.passed", "director"), later)
    assert recorded.applied and recorded.run.version == 8 and recorded.run.updated_at == later
    assert apply(run, ev("preflight.failed", "director")).run.version == 8
    ignored = decide(run, ev("iam.verified"), later)
    assert not ignored.applied and ignored.run.version == 7 and ignored.run.updated_at == run.updated_at
    assert start_run("r9", PLAN, {}, NOW).run.version == 1
    rejected = rejected_start("r9", "invalid_architecture", "bad", NOW)
    assert (rejected.to_state, rejected.run.status, rejected.run.version) == ("failed", "failed", 1)


# ---- zero-item phases ------------------------------------------------------------------


def test_no_app_dataflows_finishes_after_the_last_deploy() -> None:
    plan = {**PLAN, "app_dataflows": []}
    run = run_at("deploying_services", plan)
    run = apply(run, ev("deploy.succeeded", "publisher")).run
    d = apply(run, ev("deploy.succeeded", "subscriber"))
    expect_move(d, "deploying_services", "succeeded", [], None)
    assert d.run.status == "succeeded"
    assert d.run.progress["dependent"] == {}


def test_no_dataflows_skips_to_dataflow_iam() -> None:
    plan = {**PLAN, "dataflows": [], "app_dataflows": []}
    d = apply(run_at("awaiting_director", plan), ev("director.ready"))
    expect_move(
        d,
        "awaiting_director",
        "verifying_dataflow_iam",
        [fx("iam.bind:resources:a0", "iam.bind", "resources")],
        ("timeout", DEFAULT_LIMITS["state_timeout"].total_seconds()),
    )


def test_no_services_and_no_app_dataflows_cascade_to_succeeded() -> None:
    plan = {**PLAN, "services": [], "app_dataflows": []}
    run = apply(run_at("verifying_dataflow_iam", plan), ev("iam.bindings_applied")).run
    d = apply(run, ev("iam.verified", "resources"))
    expect_move(d, "verifying_dataflow_iam", "succeeded", [], None)


def test_no_services_to_preflight_or_build_skips_both_fan_ins() -> None:
    plan = {
        "director": "director",
        "services": [],
        "all_services": [],
        "dataflows": [],
        "app_dataflows": [],
    }
    d = apply(run_at("generating_config", plan), ev("config.generated"))
    expect_move(
        d,
        "generating_config",
        "provisioning_iam",
        [fx("iam.provision:accounts:a0", "iam.provision", "accounts")],
        ("timeout", DEFAULT_LIMITS["state_timeout"].total_seconds()),
    )
    run = apply(d.run, ev("iam.accounts_created")).run
    d = apply(run, ev("iam.verified", "accounts"))
    assert d.to_state == "deploying_director"
    assert run_to_end(d.run).state == "succeeded"


# ---- the machine definition ------------------------------------------------------------


def test_machine_has_no_auto_transitions() -> None:
    assert MACHINE.auto_transitions is False
    assert not [name for name in MACHINE.events if name.startswith("to_")]
    probe = SimpleNamespace()
    with orchestration._LOCK:  # the shared machine: never attach a model unlocked
        MACHINE.add_model(probe, initial="pending")
        try:
            assert not [name for name in vars(probe) if name.startswith("to_")]
            assert hasattr(probe, "command_start")
        finally:
            MACHINE.remove_model(probe)
    assert MACHINE.models == [orchestration._MODEL]  # the one model decide() reuses


def test_states_are_exactly_the_machine_states() -> None:
    assert set(MACHINE.states) == set(STATES)
    assert set(ACTIVE_STATES).isdisjoint(TERMINAL_STATES)
    assert MACHINE.initial == "pending"


def test_every_state_is_reachable_in_the_definition() -> None:
    edges: dict[str, set[str]] = {s: set() for s in STATES}
    for event in MACHINE.events.values():
        for source, transitions in event.transitions.items():
            for tr in transitions:
                if tr.dest is not None:
                    edges[source].add(tr.dest)
    seen, todo = {"pending"}, ["pending"]
    while todo:
        for dest in edges[todo.pop()]:
            if dest not in seen:
                seen.add(dest)
                todo.append(dest)
    assert seen == set(STATES)
    # every active state can fail and be cancelled; an end goes nowhere but to its teardown
    # (and failed or cancelled -> retry), and a finished teardown nowhere at all
    for state in ACTIVE_STATES:
        assert {"failed", "cancelled"} <= edges[state], state
    assert edges["succeeded"] == {"removing_services"}
    # retry: back where it failed or was cancelled
    assert edges["failed"] == edges["cancelled"] == set(ACTIVE_STATES) - {"pending", "queued"}
    assert edges["torn_down"] == set()


def test_admits() -> None:
    assert admits("preflight", "preflight.passed")
    assert admits("verifying_iam", "build.succeeded")
    assert admits("failed", "command.retry")
    assert not admits("failed", "command.cancel")
    assert not admits("succeeded", "timer.fired")
    assert not admits("preflight", "no.such_event")
    for state in ACTIVE_STATES:
        assert admits(state, "command.cancel")
        assert admits(state, "timer.fired")


# ---- thread safety ---------------------------------------------------------------------


def test_decide_is_thread_safe_on_a_shared_machine() -> None:
    threads_n, steps = 8, 200

    def happy_path(run_id: str) -> list[tuple[str, str, list[str]]]:
        """The reference: (from, to, effect ids) for each step of one full run, computed alone."""
        run = new_run(run_id=run_id)
        out = []
        while run.state not in TERMINAL_STATES:
            d = decide(run, next_happy_event(run), NOW)
            out.append((d.from_state, d.to_state, ids(d)))
            run = d.run
        return out

    expected = {f"t{i}": happy_path(f"t{i}") for i in range(threads_n)}
    errors: list[str] = []
    barrier = threading.Barrier(threads_n)

    def worker(run_id: str) -> None:
        try:
            barrier.wait()
            reference = expected[run_id]
            run, i = new_run(run_id=run_id), 0
            for _ in range(steps):
                if run.state in TERMINAL_STATES:
                    run, i = new_run(run_id=run_id), 0
                d = decide(run, next_happy_event(run), NOW)
                got = (d.from_state, d.to_state, ids(d))
                if d.outcome != "applied" or got != reference[i]:
                    errors.append(f"{run_id} step {i}: {d.outcome} {got} != {reference[i]}")
                for e in d.effects:
                    command_id = e.params.get("command_id", f"{run_id}:")
                    if not command_id.startswith(f"{run_id}:"):
                        errors.append(f"{run_id}: foreign command_id {command_id}")
                run, i = d.run, i + 1
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(f"{run_id}: {exc!r}")

    workers = [threading.Thread(target=worker, args=(f"t{i}",)) for i in range(threads_n)]
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, so decisions really interleave
    try:
        for t in workers:
            t.start()
        for t in workers:
            t.join(timeout=30)
    finally:
        sys.setswitchinterval(switch)
    assert not any(t.is_alive() for t in workers)
    assert errors == []
    assert MACHINE.models == [orchestration._MODEL]  # no model leaked onto the shared machine


# ---- bugs found by these tests, fixed (kept as regression tests) -------------------


def test_iam_verified_before_bindings_applied_is_ignored() -> None:
    run = run_at("verifying_dataflow_iam")
    assert run.progress["iam"]["bindings"] == "pending"
    d = decide(run, ev("iam.verified", "resources"), NOW)
    assert d.outcome == "ignored"
    assert d.run.state == "verifying_dataflow_iam"


def test_late_accounts_verification_does_not_verify_the_bindings() -> None:
    run = apply(run_at("verifying_dataflow_iam"), ev("iam.bindings_applied", "resources")).run
    d = decide(run, ev("iam.verified", "accounts"), NOW)
    assert d.outcome == "ignored"
    assert d.run.state == "verifying_dataflow_iam"


# ---- stale replies: every outcome of an earlier attempt is ignored (issue 10, point 6) ------


def _retried(state: str, failure: Event) -> RunState:
    """A run that failed in ``state`` during attempt 0 and was retried: attempt 1, in ``state`` again."""
    failed = apply(run_at(state), failure).run
    run = apply(failed, ev("command.retry")).run
    assert (run.state, run.attempt) == (state, 1)
    return run


def _event(type_: str, item: str | None, event_id: str, **data: Any) -> Event:
    return Event(run_id="r1", event_id=event_id, type=type_, item=item, data=data)


A0_DATAFLOW = "r1:dataflow-setup:tracer:a0"
STALE_DIRECTOR_REPLIES = [
    # the director's failure of attempt 0, told by its command_id only (as testdata/director answers)
    _event("director.failed", "tracer", f"director~{A0_DATAFLOW}~failed", command_id=A0_DATAFLOW, error="x"),
    # successes of attempt 0 too
    _event("director.dataflow_complete", "tracer", f"director~{A0_DATAFLOW}~dataflow_complete",
           command_id=A0_DATAFLOW),
    # the attempt read from the event id alone
    _event("director.dataflow_complete", "tracer", f"director~{A0_DATAFLOW}~dataflow_complete"),
    # the runner's own failure event for the attempt-0 effect
    _event("director.failed", "tracer", "director.command:tracer:a0~director.failed~tracer",
           effect_id="director.command:tracer:a0", error="x"),
]


@pytest.mark.parametrize("stale", STALE_DIRECTOR_REPLIES, ids=lambda e: e.event_id)
def test_a_director_reply_of_an_earlier_attempt_is_ignored(stale: Event) -> None:
    run = _retried("provisioning_dataflows", ev("director.failed", "tracer", command_id=A0_DATAFLOW, error="x"))
    expect_ignored(decide(run, stale, NOW), run, "outcome of attempt 0 arrived during attempt 1")


def test_the_same_replies_of_the_current_attempt_apply() -> None:
    run = _retried("provisioning_dataflows", ev("director.failed", "tracer", command_id=A0_DATAFLOW, error="x"))
    a1 = "r1:dataflow-setup:tracer:a1"
    done = decide(run, _event("director.dataflow_complete", "tracer", f"director~{a1}~dataflow_complete",
                              command_id=a1), NOW)
    assert done.outcome == "applied" and done.run.progress["dataflows"]["tracer"] == "succeeded"
    failed = decide(run, _event("director.failed", "tracer", f"director~{a1}~failed", command_id=a1, error="x"), NOW)
    assert failed.outcome == "applied" and failed.to_state == "failed"


def test_an_effect_success_of_an_earlier_attempt_is_ignored() -> None:
    run = _retried("deploying_services", ev("deploy.failed", "subscriber", effect_id="deploy:subscriber:a0"))
    stale = _event("deploy.succeeded", "subscriber", "deploy:subscriber:a0~deploy.succeeded~subscriber",
                   effect_id="deploy:subscriber:a0", url="http://old")
    expect_ignored(decide(run, stale, NOW), run, "outcome of attempt 0 arrived during attempt 1")
    fresh = _event("deploy.succeeded", "subscriber", "deploy:subscriber:a1~deploy.succeeded~subscriber",
                   effect_id="deploy:subscriber:a1", url="http://new")
    assert decide(run, fresh, NOW).outcome == "applied"


@pytest.mark.parametrize(
    ("event", "attempt"),
    [
        (_event("build.succeeded", "a1", "build:a1:a0~build.succeeded~a1", effect_id="build:a1:a0"), 0),
        (_event("director.ready", "director", "director~r1:ping:director:a2:p3~ready",
                command_id="r1:ping:director:a2:p3"), 2),
        (_event("director.dependent_complete", "a3", "x", command_id="r1:dependent-resource-setup:a3:a1"), 1),
        (_event("build.succeeded", "svc", "cloudbuild~b-1~SUCCESS"), None),
        (_event("command.retry", None, "cmd~123:a0"), None),
    ],
)
def test_the_attempt_of_an_outcome_is_read_past_items_named_like_attempts(event: Event, attempt: int | None) -> None:
    assert attempt_of(event) == attempt


def test_the_resources_the_director_reports_are_recorded_once_each() -> None:
    """Contract (issue 13): ``outputs.resources`` lists ``{kind, name, dataflow, location}``."""
    run = run_at("provisioning_dataflows")
    topic = {"kind": "pubsub_topic", "name": "tracer-topic", "dataflow": "tracer", "location": "global"}
    sub = {"kind": "pubsub_subscription", "name": "tracer-sub", "dataflow": "tracer", "location": "global"}
    junk: list[Any] = [{"kind": "gcs_bucket"}, "not a map", {**topic, "name": 7}]
    d = apply(run, ev("director.dataflow_complete", "tracer", resources=[sub, topic, *junk]))
    assert d.run.outputs["resources"] == [sub, topic]  # ordered by dataflow, kind, name
    infra = {"kind": "pubsub_topic", "name": "director-commands", "dataflow": "director-infra",
             "location": "global"}
    d = apply(d.run, ev("director.dataflow_complete", "director-infra", resources=[infra, topic]))
    assert d.run.outputs["resources"] == [infra, sub, topic]  # merged, the repeated topic once
    assert "resources" not in run.outputs  # the input snapshot is untouched

    # A teardown's reply moves what it removed from ``resources`` to ``removed_resources``.
    torn = apply(run_to_end(d.run), ev("command.teardown")).run
    torn = apply(torn, ev("undeploy.succeeded", "publisher")).run
    torn = apply(torn, ev("undeploy.succeeded", "subscriber")).run
    d = apply(torn, ev("director.dataflow_complete", "tracer", instruction="teardown", removed=[topic, "junk"]))
    assert d.run.outputs["resources"] == [infra, sub] and d.run.outputs["removed_resources"] == [topic]


# ---- teardown ------------------------------------------------------------------------------------


def test_teardown_removes_services_then_dataflows_then_the_director_then_accounts() -> None:
    done = run_to_end(new_run(PLAN))
    assert done.status == "succeeded" and set(done.outputs["urls"]) == {"director", "publisher", "subscriber"}

    d = apply(done, ev("command.teardown"))
    assert (d.from_state, d.to_state, d.run.status) == ("succeeded", "removing_services", "running")
    assert sorted(e.effect_id for e in d.effects) == ["undeploy:publisher:a0", "undeploy:subscriber:a0"]
    d = apply(d.run, ev("undeploy.succeeded", "publisher"))
    assert d.to_state == "removing_services" and "publisher" not in d.run.outputs["urls"]
    d = apply(d.run, ev("undeploy.succeeded", "subscriber"))
    assert d.to_state == "removing_dataflows"
    [teardown] = d.effects  # only the ephemeral dataflow, never the director's own infrastructure
    assert (teardown.kind, teardown.item, teardown.params["instruction"]) == ("director.command", "tracer", "teardown")
    resources = d.run.outputs.get("resources", [])
    bucket = {"kind": "gcs_bucket", "name": "raw", "dataflow": "tracer", "location": "EU"}
    d = apply(d.run, ev("director.dataflow_complete", "tracer", command_id=teardown.params["command_id"],
                        instruction="teardown", removed=[bucket]))
    assert d.to_state == "removing_director" and [e.effect_id for e in d.effects] == ["undeploy:director:a0"]
    assert d.run.outputs["removed_resources"] == [bucket] and d.run.outputs["resources"] == resources
    d = apply(d.run, ev("undeploy.succeeded", "director"))
    assert d.to_state == "removing_accounts" and [e.kind for e in d.effects] == ["iam.remove"]
    d = apply(d.run, ev("iam.accounts_removed", "accounts", removed=["publisher-sa@p.iam"]))
    assert (d.to_state, d.run.status, d.run.timer) == ("torn_down", "torn_down", None)
    assert d.run.outputs["removed_services"] == ["director", "publisher", "subscriber"]
    assert d.run.outputs["removed_accounts"] == ["publisher-sa@p.iam"]
    assert decide(d.run, ev("command.teardown"), NOW).outcome == "ignored"  # nothing left to do


def test_teardown_of_a_run_that_failed_early_skips_what_never_existed() -> None:
    failed = apply(run_at("preflight"), ev("preflight.failed", "director")).run
    d = apply(failed, ev("command.teardown"))
    # no service, no dataflow, no director was ever deployed: straight to the accounts
    assert d.to_state == "removing_accounts" and [e.kind for e in d.effects] == ["iam.remove"]
    assert d.run.error is None and d.run.failed_state is None


def test_teardown_of_a_run_whose_dataflow_setup_failed_still_removes_that_dataflow() -> None:
    # The director may have created half of tracer's resources before it failed: tear it down too.
    at = run_at("provisioning_dataflows", {**PLAN, "ephemeral_dataflows": ["tracer"]})
    failed = apply(at, ev("director.failed", "tracer", error="gcs_bucket raw: quota")).run
    assert failed.status == "failed"
    d = apply(failed, ev("command.teardown"))  # no service but the director was deployed
    teardowns = [e for e in d.effects if e.kind == "director.command"]
    assert d.to_state == "removing_dataflows" and [e.params["dataflow"] for e in teardowns] == ["tracer"]
    assert teardowns[0].params["instruction"] == "teardown"


def test_a_failed_teardown_is_redriven_from_where_it_stopped() -> None:
    d = apply(run_to_end(new_run()), ev("command.teardown"))
    d = apply(d.run, ev("undeploy.succeeded", "publisher"))
    d = apply(d.run, ev("undeploy.failed", "subscriber", error="permission denied"))
    assert (d.to_state, d.run.failed_state, d.run.error.reason) == ("failed", "removing_services", "undeploy_failed")  # type: ignore[union-attr]
    d = apply(d.run, ev("command.retry"))
    assert d.to_state == "removing_services"
    assert [e.effect_id for e in d.effects] == ["undeploy:subscriber:a1"]  # the publisher stays removed


def test_a_teardown_lists_what_it_keeps_and_why() -> None:
    kept = [{"kind": "dataflow", "name": "director-infra", "dataflow": "director-infra", "why": "the director's own"},
            {"kind": "gcs_buckets", "name": "archive", "dataflow": "tracer", "why": "teardown_protection"}]
    done = run_to_end(new_run({**PLAN, "kept": kept}))
    d = apply(done, ev("command.teardown"))
    assert d.run.outputs["kept"] == kept
