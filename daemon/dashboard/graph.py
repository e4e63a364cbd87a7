"""The machine's picture for the dashboard, from the definition ``podium graph`` draws.

Both come from ``machines.orchestration``'s ``STATES`` and ``transition_table()`` (the table
``decide`` runs), so the dashboard cannot show a machine the daemon does not run. The page gets
the definition as data (states, edges, the pipeline's progress keys) and, when Graphviz's
``dot`` is installed, the same SVG ``podium graph --format dot`` lays out; without ``dot`` the
page draws the states and edges itself from the data. The current state is highlighted in the
browser, so one cached picture serves every run.
"""

from __future__ import annotations

import shutil
from functools import lru_cache
from typing import Any

import structlog

from machines import orchestration
from machines.pipeline import PHASES

log = structlog.get_logger("podium.dashboard")

TITLE = "Podium orchestration"


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]


@lru_cache(maxsize=1)
def definition() -> dict[str, Any]:
    """States, one edge per (source, trigger, destination), and the progress keys in pipeline order."""
    edges: list[dict[str, Any]] = []
    for t in orchestration.transition_table():
        for source in _as_list(t["source"]):
            dest = t.get("dest")
            edges.append({
                "source": source,
                "dest": dest if dest is not None else source,
                "trigger": t["trigger"],
                "conditions": _as_list(t.get("conditions")),
                "internal": dest is None,  # recorded without leaving the state
            })
    progress_keys: list[str] = []
    for phase in PHASES:
        for key in [k for _event, k in phase.items] + ([phase.fan_in] if phase.fan_in else []):
            if key not in progress_keys:
                progress_keys.append(key)
    return {
        "title": TITLE,
        "states": list(orchestration.STATES),
        "initial": "pending",
        "active": list(orchestration.ACTIVE_STATES),
        "terminal": list(orchestration.TERMINAL_STATES),
        "edges": edges,
        "progress_keys": progress_keys,
    }


@lru_cache(maxsize=1)
def svg() -> str | None:
    """``podium graph``'s diagram as SVG (transitions' GraphMachine through Graphviz), or None
    without ``dot``. Each state is a ``<g class="node">`` whose ``<title>`` is the state name."""
    if shutil.which("dot") is None:
        return None
    from transitions.extensions import GraphMachine

    class Model:
        state: str

    model = Model()
    try:
        GraphMachine(model=model, states=list(orchestration.STATES), transitions=orchestration.transition_table(),
                     initial="pending", auto_transitions=False, graph_engine="graphviz", show_conditions=True,
                     title=TITLE)
        data = model.get_graph().pipe(format="svg")  # type: ignore[attr-defined]
    except Exception as exc:  # noqa: BLE001 - a broken Graphviz: the page draws the graph itself
        log.warning("graphviz could not draw the machine; the page draws it", error=repr(exc))
        return None
    text = bytes(data).decode("utf-8")
    return text[text.find("<svg"):]  # without the XML prolog and doctype: it is inlined in the page
