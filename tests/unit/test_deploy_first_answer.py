"""handlers.deploy.local._await_first_answer: the bounded wait of the deploy that starts a process.

Pure: the process's liveness and its health probe are stand-ins, the clock is real (bounds in
tens of milliseconds, asserted with wide margins)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from handlers.deploy import local
from handlers.deploy.registry import ProcessRecord


def record(age: float = 0.0) -> ProcessRecord:
    return ProcessRecord(
        project="p", service="svc", pid=4242, port=1, url="http://127.0.0.1:1", image="local://svc@sha256:" + "0" * 12,
        started_at=datetime.now(UTC) - timedelta(seconds=age), run_id="r", effect_id="deploy:svc:a0",
        log_path="/dev/null", log_offset=0, fingerprint="f", workdir="/nonexistent", config_hash="h",
    )


class Process:
    """Alive until ``exits_after`` probes, answering from probe ``answers_at`` on (None: never)."""

    def __init__(self, answers_at: int | None = None, exits_after: int | None = None) -> None:
        self.answers_at, self.exits_after, self.probes = answers_at, exits_after, 0
        self.timeouts: list[float] = []

    def alive(self, pid: int, fingerprint: str) -> bool:
        return self.exits_after is None or self.probes < self.exits_after

    def healthy(self, port: int, timeout: float = local.HEALTH_TIMEOUT_SECONDS) -> bool:
        self.probes += 1
        self.timeouts.append(timeout)
        return self.answers_at is not None and self.probes >= self.answers_at


@pytest.fixture
def process(monkeypatch: pytest.MonkeyPatch) -> Process:
    p = Process()
    monkeypatch.setattr(local, "is_alive", p.alive)
    monkeypatch.setattr(local, "_healthy", p.healthy)
    return p


def timed(rec: ProcessRecord, cancelled: threading.Event | None = None) -> float:
    started = time.monotonic()
    local._await_first_answer(rec, cancelled or threading.Event())
    return time.monotonic() - started


def test_it_returns_at_the_first_answer(process: Process, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "FIRST_WAIT_SECONDS", 30.0)
    process.answers_at = 3
    assert timed(record()) < 5.0
    assert process.probes == 3


def test_it_returns_when_the_process_exits(process: Process, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "FIRST_WAIT_SECONDS", 30.0)
    process.exits_after = 2
    assert timed(record()) < 5.0
    assert process.probes == 2


def test_it_gives_up_when_the_process_is_first_wait_seconds_old(
    process: Process, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "FIRST_WAIT_SECONDS", 0.3)
    elapsed = timed(record())
    assert 0.25 <= elapsed < 3.0
    assert process.probes >= 2
    assert all(t <= 0.3 for t in process.timeouts)  # no probe outlasts the wait's bound
    assert timed(record(age=5.0)) < 0.2  # already older than the bound: no wait at all


def test_a_cancelled_effect_stops_waiting(process: Process, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "FIRST_WAIT_SECONDS", 30.0)
    cancelled = threading.Event()
    threading.Timer(0.1, cancelled.set).start()
    assert timed(record(), cancelled) < 5.0
