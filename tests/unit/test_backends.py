"""Every effect kind the machine schedules has a handler in every backend, and a failure event."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from daemon.backends import handlers_for
from daemon.config import Settings
from handlers.base import FAILURE_EVENT
from machines.messages import EVENT_TYPES

MACHINES = Path(__file__).resolve().parents[2] / "machines"


def scheduled_kinds() -> set[str]:
    text = "".join((MACHINES / name).read_text() for name in ("orchestration.py", "teardown.py"))
    return set(re.findall(r'self\.effect\(\s*"([a-z.]+)"', text))


def test_the_machine_schedules_exactly_the_kinds_that_have_failure_events():
    assert scheduled_kinds() == set(FAILURE_EVENT)
    assert set(FAILURE_EVENT.values()) <= EVENT_TYPES


@pytest.mark.parametrize("backend", ["local", "gcp", "standin"])
def test_every_backend_handles_every_kind(backend):
    assert set(handlers_for(Settings(backend=backend))) == set(FAILURE_EVENT)
