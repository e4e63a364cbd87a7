"""Fault injection for crash tests: kill this process with SIGKILL at a named point.

``PODIUM_FAULTS="point[:match],..."`` arms points; each fires at most once per marker
directory (``PODIUM_FAULTS_DIR``), so the restarted daemon does not die again. Points:
``after_commit`` (committed, not yet acked), ``before_effect`` (committed, effect not run),
``mid_effect`` (inside a handler), ``during_claim`` (a sweep's claim of an expired effect
committed, the effect not run; matched with the effect kind) and ``during_heartbeat`` (the
heartbeat's lease extension written; no subject, so arm it without ``match``). ``match`` is
compared with the event type or effect kind.
Unset in production: ``crash_point`` is then a dictionary lookup and nothing else.

A point kills *this thread at this point*: while points are armed, every Firestore transaction
runs inside :func:`transaction_window`, and a firing point lets the transactions other threads
have open finish (starting no new one) before it kills. Otherwise the emulator keeps a killed
process's open transaction locking its documents for a minute (docs/reliability.md), and a
test of one point would wait on another thread's transaction. Kills at random moments, open
transactions included, are tests/faults/test_kill_storm.py's part.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_ARMED: dict[str, str] = {}
for _spec in filter(None, os.environ.get("PODIUM_FAULTS", "").split(",")):
    _point, _, _match = _spec.partition(":")
    _ARMED[_point] = _match


_window = threading.Condition()
_open = 0  # transactions open in this process (counted only while points are armed)
_dying = False
QUIESCE_SECONDS = 5.0


@contextmanager
def transaction_window() -> Iterator[None]:
    """Wrap one Firestore transaction: a firing point waits for it to end (see the module doc)."""
    global _open
    if not _ARMED:
        yield
        return
    with _window:
        while _dying:  # this process is about to be killed: begin nothing
            _window.wait()
        _open += 1
    try:
        yield
    finally:
        with _window:
            _open -= 1
            _window.notify_all()


def crash_point(point: str, subject: str = "") -> None:
    if point not in _ARMED:
        return
    match = _ARMED[point]
    if match and match != subject:
        return
    marker_dir = Path(os.environ.get("PODIUM_FAULTS_DIR", "/tmp/podium-faults"))
    marker_dir.mkdir(parents=True, exist_ok=True)
    try:
        (marker_dir / f"{point}-{match or 'any'}").touch(exist_ok=False)
    except FileExistsError:
        return
    global _dying
    with _window:
        _dying = True
        _window.wait_for(lambda: _open == 0, timeout=QUIESCE_SECONDS)
    os.kill(os.getpid(), signal.SIGKILL)
