"""``podium graph``: the machine drawn from its own definition (``transitions``' diagrams).

The picture is built from ``machines.orchestration``'s states and transition table, the
same ones ``decide`` runs, so it cannot drift from the code.
"""

from __future__ import annotations

import shutil
from typing import Literal

from transitions.extensions import GraphMachine

from machines import orchestration

Format = Literal["mermaid", "dot", "png"]


class _Model:
    state: str


def render(fmt: Format = "mermaid", current: str | None = None) -> str | bytes:
    """Return mermaid or DOT source (str), or PNG bytes. ``current`` is highlighted."""
    model = _Model()
    GraphMachine(
        model=model,
        states=list(orchestration.STATES),
        transitions=orchestration.transition_table(),
        initial=current or "pending",
        auto_transitions=False,
        graph_engine="mermaid" if fmt == "mermaid" else "graphviz",
        show_conditions=True,
        title="Podium orchestration",
    )
    graph = model.get_graph()  # type: ignore[attr-defined]
    if fmt == "mermaid":
        return str(graph.draw(None))
    if fmt == "dot":
        return str(graph.source)
    from machines.errors import PodiumError

    missing = PodiumError("--format png needs Graphviz's `dot` program, which is not on PATH: install Graphviz "
                          "(apt-get install graphviz, brew install graphviz) or use --format mermaid|dot",
                          reason="environment")  # the CLI exits 4: an environment problem
    if shutil.which("dot") is None:
        raise missing
    from graphviz import ExecutableNotFound

    try:
        return bytes(graph.pipe(format="png"))
    except ExecutableNotFound as exc:  # gone between the check and the call
        raise missing from exc
