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
    if shutil.which("dot") is None:
        from machines.errors import PodiumError

        raise PodiumError("PNG needs Graphviz's 'dot' program: apt-get install graphviz (or use --format mermaid|dot)")
    return bytes(graph.pipe(format="png"))
