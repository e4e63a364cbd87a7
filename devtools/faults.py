"""Fault injection for crash tests: kill this process with SIGKILL at a named point.

``PODIUM_FAULTS="point[:match],..."`` arms points; each fires at most once per marker
directory (``PODIUM_FAULTS_DIR``), so the restarted daemon does not die again. Points:
``after_commit`` (committed, not yet acked), ``before_effect`` (committed, effect not run),
``mid_effect`` (inside a handler), ``during_claim`` (a sweep's claim of an expired effect
committed, the effect not run; matched with the effect kind) and ``during_heartbeat`` (the
heartbeat's lease extension written; no subject, so arm it without ``match``). ``match`` is
compared with the event type or effect kind.
Unset in production: ``crash_point`` is then a dictionary lookup and nothing else.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

_ARMED: dict[str, str] = {}
for _spec in filter(None, os.environ.get("PODIUM_FAULTS", "").split(",")):
    _point, _, _match = _spec.partition(":")
    _ARMED[_point] = _match


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
    os.kill(os.getpid(), signal.SIGKILL)
