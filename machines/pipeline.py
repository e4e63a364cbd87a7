"""The pipeline, declared once: its effect kinds and its phases. Pure data, no I/O.

Everything that used to repeat this knowledge derives from the two tables below:

* the ``transitions`` machine and ``podium graph`` (``machines.orchestration.transition_table``):
  each phase's edges, its fan-in join, the failure edges, the timeouts;
* the event types the events topic accepts (``machines.messages.EVENT_TYPES``);
* what each effect kind reports (``handlers.base.FAILURE_EVENT`` / ``SUCCESS_EVENTS``), and so
  which outcomes may settle which effect.

What a phase *does* when it is entered (which effects, which timers) stays code: the
``_enter_<state>`` callbacks of ``machines.orchestration._RunModel``. Adding a phase is one
``Phase`` entry here, its ``_enter_<state>`` there, and the handler of its effect kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "EFFECT_KINDS",
    "FAILURE_SOURCES",
    "FAN_IN",
    "ITEM_PROGRESS",
    "OUTCOME_EVENT_TYPES",
    "PHASES",
    "PIPELINE_STATES",
    "STATE_TIMEOUTS",
    "TEARDOWN_START",
    "TERMINAL_STATES",
    "EffectKind",
    "Phase",
]


@dataclass(frozen=True)
class EffectKind:
    """One kind of side effect: the events its handler may report."""

    name: str
    succeeds_with: frozenset[str]
    fails_with: str


@dataclass(frozen=True)
class Phase:
    """One state of the pipeline, in order.

    ``moves``: (event type, next state or None) edges out of this state; None records the
    event without moving (an item of a fan-in, an intermediate step). ``items``: (event type,
    progress key) pairs whose ``item`` is recorded as succeeded here. ``fan_in``: the progress
    key whose items must all succeed before the join moves on to ``then``. ``fails_on``: the
    failure events of the effects running in this state (they fail the run here). ``timeout``:
    its default deadline in seconds (None: the generic ``state_timeout``).
    """

    state: str
    effects: tuple[str, ...] = ()
    moves: tuple[tuple[str, str | None], ...] = ()
    items: tuple[tuple[str, str], ...] = ()
    fan_in: str | None = None
    then: str | None = None
    fails_on: tuple[str, ...] = ()
    timeout: float | None = None


def _kind(name: str, fails_with: str, *succeeds_with: str) -> EffectKind:
    return EffectKind(name, frozenset(succeeds_with), fails_with)


EFFECT_KINDS: Mapping[str, EffectKind] = {
    k.name: k
    for k in (
        _kind("configgen", "config.failed", "config.generated"),
        _kind("preflight", "preflight.failed", "preflight.passed"),
        _kind("iam.provision", "iam.failed", "iam.accounts_created"),
        _kind("iam.verify", "iam.failed", "iam.verified"),
        _kind("iam.bind", "iam.failed", "iam.bindings_applied"),
        _kind("build", "build.failed", "build.succeeded"),
        _kind("deploy", "deploy.failed", "deploy.succeeded"),
        _kind("director.command", "director.failed",
              "director.ready", "director.dataflow_complete", "director.dependent_complete"),
        _kind("undeploy", "undeploy.failed", "undeploy.succeeded"),
        _kind("iam.remove", "iam.failed", "iam.accounts_removed"),
        # On cancel: stop what the run still has going (its local processes, its Cloud Builds).
        _kind("stop", "stop.failed", "stop.succeeded"),
    )
}

# Builds run beside IAM (modelled as data, so ``state`` stays one string): their items are
# recorded in every state of that branch, and their failure fails the run in each of them.
_BUILDS = ("build.succeeded", "build")

PHASES: tuple[Phase, ...] = (
    Phase("generating_config", effects=("configgen",), moves=(("config.generated", "preflight"),),
          fails_on=("config.failed",), timeout=300.0),
    Phase("preflight", effects=("preflight",), moves=(("preflight.passed", None),),
          items=(("preflight.passed", "preflight"),), fan_in="preflight", then="provisioning_iam",
          fails_on=("preflight.failed",), timeout=900.0),
    Phase("provisioning_iam", effects=("iam.provision", "build"),
          moves=(("iam.accounts_created", "verifying_iam"), ("build.succeeded", None)),
          items=(_BUILDS,), fails_on=("iam.failed", "build.failed")),
    Phase("verifying_iam", effects=("iam.verify",),
          moves=(("iam.verified", "building"), ("build.succeeded", None)),
          items=(_BUILDS,), fails_on=("iam.failed", "build.failed")),
    Phase("building", moves=(("build.succeeded", None),), items=(_BUILDS,), fan_in="build",
          then="deploying_director", fails_on=("build.failed",)),
    Phase("deploying_director", effects=("deploy",), moves=(("deploy.succeeded", "awaiting_director"),),
          items=(("deploy.succeeded", "director"),), fails_on=("deploy.failed",), timeout=600.0),
    Phase("awaiting_director", effects=("director.command",),
          moves=(("director.ready", "provisioning_dataflows"),), fails_on=("director.failed",)),
    Phase("provisioning_dataflows", effects=("director.command",),
          moves=(("director.dataflow_complete", None),), items=(("director.dataflow_complete", "dataflows"),),
          fan_in="dataflows", then="verifying_dataflow_iam", fails_on=("director.failed",), timeout=900.0),
    Phase("verifying_dataflow_iam", effects=("iam.bind", "iam.verify"),
          moves=(("iam.bindings_applied", None), ("iam.verified", "deploying_services")),
          fails_on=("iam.failed",)),
    Phase("deploying_services", effects=("deploy",), moves=(("deploy.succeeded", None),),
          items=(("deploy.succeeded", "deploy"),), fan_in="deploy", then="dependent_setup",
          fails_on=("deploy.failed",), timeout=900.0),
    Phase("dependent_setup", effects=("director.command",), moves=(("director.dependent_complete", None),),
          items=(("director.dependent_complete", "dependent"),), fan_in="dependent", then="succeeded",
          fails_on=("director.failed",), timeout=600.0),
    # Teardown (``command.teardown`` from a terminal state), in reverse dependency order: the
    # services, then what the director made for ephemeral dataflows, then the director, then the
    # accounts Podium created. Each list may be empty: its join then passes at once.
    Phase("removing_services", effects=("undeploy",), moves=(("undeploy.succeeded", None),),
          items=(("undeploy.succeeded", "undeploy"),), fan_in="undeploy", then="removing_dataflows",
          fails_on=("undeploy.failed",), timeout=900.0),
    Phase("removing_dataflows", effects=("director.command",), moves=(("director.dataflow_complete", None),),
          items=(("director.dataflow_complete", "teardown"),), fan_in="teardown", then="removing_director",
          fails_on=("director.failed",), timeout=900.0),
    Phase("removing_director", effects=("undeploy",), moves=(("undeploy.succeeded", None),),
          items=(("undeploy.succeeded", "director_removal"),), fan_in="director_removal",
          then="removing_accounts", fails_on=("undeploy.failed",), timeout=600.0),
    Phase("removing_accounts", effects=("iam.remove",), moves=(("iam.accounts_removed", "torn_down"),),
          fails_on=("iam.failed",), timeout=600.0),
)
# Where ``command.teardown`` starts, and the terminal states it may start from.
TEARDOWN_START = "removing_services"
TERMINAL_STATES: tuple[str, ...] = ("succeeded", "failed", "cancelled", "torn_down")

# ---- derived views (what the machine, the messages and the handlers read) ----------------------

PIPELINE_STATES: tuple[str, ...] = tuple(p.state for p in PHASES)
# (event type, state) -> the progress key the event's item is recorded under.
ITEM_PROGRESS: Mapping[tuple[str, str], str] = {
    (event, p.state): key for p in PHASES for event, key in p.items
}
# fan-in state -> the progress key whose items gate its join.
FAN_IN: Mapping[str, str] = {p.state: p.fan_in for p in PHASES if p.fan_in}
# failure event -> the states in which it fails the run.
FAILURE_SOURCES: Mapping[str, tuple[str, ...]] = {
    failure: tuple(p.state for p in PHASES if failure in p.fails_on)
    for failure in dict.fromkeys(f for p in PHASES for f in p.fails_on)
}
STATE_TIMEOUTS: Mapping[str, float] = {p.state: p.timeout for p in PHASES if p.timeout is not None}
OUTCOME_EVENT_TYPES: frozenset[str] = frozenset(
    e for k in EFFECT_KINDS.values() for e in (*k.succeeds_with, k.fails_with)
)


def _check() -> None:
    """The table is consistent: a typo here would otherwise surface as a silent dead edge."""
    states = set(PIPELINE_STATES) | set(TERMINAL_STATES)
    for p in PHASES:
        assert all(k in EFFECT_KINDS for k in p.effects), p
        for event, dest in p.moves:
            assert event in OUTCOME_EVENT_TYPES and (dest is None or dest in states), (p.state, event)
        assert all(f in OUTCOME_EVENT_TYPES for f in p.fails_on), p
        assert (p.fan_in is None) == (p.then is None) and (p.then is None or p.then in states), p
        # a state fails on exactly the failure events of the effects that may run in it
        reported = {EFFECT_KINDS[k].fails_with for k in p.effects}
        assert reported <= set(p.fails_on) or not p.effects, p


_check()
