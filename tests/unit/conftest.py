"""Fixtures the unit tests share (tests/conftest.py holds those of every test folder)."""

from __future__ import annotations

import pytest

from machines.architecture import Architecture, load_architecture
from tests.architectures import RICH, TESTDATA  # the repository root is on pytest's pythonpath


@pytest.fixture
def demo() -> Architecture:
    """The demo architecture ``make run`` deploys (testdata/architecture.yaml)."""
    return load_architecture(TESTDATA.read_text())


@pytest.fixture
def rich() -> Architecture:
    """``tests.architectures.RICH``: every resource kind and link (see that module)."""
    return load_architecture(RICH)
