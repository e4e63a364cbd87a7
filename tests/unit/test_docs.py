"""The docs stay true to the code."""

from __future__ import annotations

import re
from pathlib import Path

from cli.graph import render
from daemon.config import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_machine_picture_is_podium_graph_output():
    text = README.read_text()
    blocks = re.findall(r"```mermaid\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no mermaid picture of the machine"
    assert blocks[0].strip() == str(render("mermaid")).strip(), "regenerate it: podium graph"


def test_readme_documents_every_setting():
    text = README.read_text()
    missing = [f"PODIUM_{name.upper()}" for name in Settings.model_fields if f"PODIUM_{name.upper()}" not in text]
    assert not missing, f"settings missing from the README: {missing}"
