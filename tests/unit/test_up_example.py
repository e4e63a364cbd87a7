"""``podium up`` without a file deploys the embedded example, which ships inside the ``cli``
package (not a repository-relative ``testdata/``), from a working copy (issue 11 point 3)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from cli.up import EXAMPLE, EXAMPLE_ARCHITECTURE, working_copy_of_the_example
from machines.architecture import load_architecture

REPO = Path(__file__).resolve().parents[2]


def test_the_example_is_package_data_of_the_cli() -> None:
    assert EXAMPLE.parent == (REPO / "cli").resolve()
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "example/**/*" in data["cli"]
    assert (REPO / "testdata").resolve() == EXAMPLE  # the tests' path is a link to it


def test_up_works_on_a_copy_and_never_writes_into_the_package(tmp_path: Path) -> None:
    before = sorted(p.relative_to(EXAMPLE) for p in EXAMPLE.rglob("*") if "__pycache__" not in p.parts)
    copy = working_copy_of_the_example(tmp_path)
    assert copy == tmp_path / "example" / "architecture.yaml"
    assert copy.read_text() == EXAMPLE_ARCHITECTURE.read_text()
    arch = load_architecture(copy.read_text(), source=str(copy))
    for service in ("director", "publisher", "subscriber"):
        assert (copy.parent / service).is_dir(), service
    assert arch.name
    (copy.parent / "publisher" / "resources.yaml").write_text("generated: here\n")
    after = sorted(p.relative_to(EXAMPLE) for p in EXAMPLE.rglob("*") if "__pycache__" not in p.parts)
    assert after == before
    assert working_copy_of_the_example(tmp_path) == copy  # a second `podium up` refreshes in place
