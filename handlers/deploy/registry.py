"""The registry of local service processes (``local`` deploy backend).

One Firestore document per deployed service, ``podium_local_processes/<project>~<service>``,
says which process serves it: pid, port, url, image, when and by which run it was started, its
log file, and a *fingerprint* of the process (boot id + start time from ``/proc/<pid>/stat``).
A pid alone is not an identity: after the process dies the kernel may give the number to any
other process, and Podium must neither adopt nor signal a stranger. A record whose fingerprint
no longer matches the live process at that pid is simply dead.

The registry lives in Firestore (not in daemon memory) so that a restarted daemon, or another
replica on the same machine, adopts the running processes instead of starting second copies.
Nothing secret is ever stored here: the configuration is recorded as a hash of names and
non-secret values only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import firestore

__all__ = [
    "COLLECTION",
    "ProcessRecord",
    "ProcessRegistry",
    "fingerprint",
    "is_alive",
    "remember_child",
    "stop_process",
]

COLLECTION = "podium_local_processes"
STOP_GRACE_SECONDS = 5.0

# Popen objects of the processes this daemon started, by pid: kept so that an exited child is
# reaped (no zombie that would look alive) and Python does not warn about a lost handle.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def doc_id(project: str, service: str) -> str:
    return f"{project}~{service}"


@dataclass(frozen=True)
class ProcessRecord:
    project: str
    service: str
    pid: int
    port: int
    url: str
    image: str
    started_at: datetime
    run_id: str
    effect_id: str
    log_path: str
    log_offset: int  # the log file's size when this process started: its own output starts here
    fingerprint: str
    workdir: str
    config_hash: str  # image + environment names/non-secret values + secret *names*
    healthy: bool = False  # answered GET /healthz with 200 at least once

    @property
    def doc_id(self) -> str:
        return doc_id(self.project, self.service)

    def age_seconds(self, now: datetime | None = None) -> float:
        return ((now or datetime.now(UTC)) - self.started_at).total_seconds()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProcessRecord:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        started = values.get("started_at")
        if isinstance(started, datetime):  # Firestore gives DatetimeWithNanoseconds (aware)
            values["started_at"] = datetime.fromtimestamp(started.timestamp(), UTC)
        values.setdefault("log_offset", 0)
        values.setdefault("config_hash", "")
        values.setdefault("workdir", "")
        values.setdefault("effect_id", "")
        return cls(**values)


class ProcessRegistry:
    """The ``podium_local_processes`` collection, through an official Firestore client."""

    def __init__(self, client: firestore.Client) -> None:
        self.client = client
        self.collection = client.collection(COLLECTION)

    def get(self, project: str, service: str) -> tuple[ProcessRecord | None, Any]:
        """The record (or None) and the snapshot's ``update_time`` (or None): the write
        precondition for :meth:`replace`."""
        snap = self.collection.document(doc_id(project, service)).get()
        if not snap.exists:
            return None, None
        return ProcessRecord.from_dict(snap.to_dict() or {}), snap.update_time

    def replace(self, record: ProcessRecord, expected_update_time: Any) -> bool:
        """Write ``record`` if the document is still as it was read (``None``: still absent).

        False means somebody else (another replica, a concurrent run) wrote it meanwhile.
        """
        ref = self.collection.document(record.doc_id)
        try:
            if expected_update_time is None:
                ref.create(record.to_dict())
            else:
                # Every record has the same top-level fields, so an update replaces it whole.
                ref.update(
                    record.to_dict(),
                    option=self.client.write_option(last_update_time=expected_update_time),
                )
        except (gexc.AlreadyExists, gexc.FailedPrecondition, gexc.NotFound):
            return False
        return True

    def mark_healthy(self, record: ProcessRecord) -> None:
        """Record that the process answered its health check (only while the doc names it)."""
        ref = self.collection.document(record.doc_id)
        snap = ref.get()
        if snap.exists and (snap.to_dict() or {}).get("pid") == record.pid:
            with contextlib.suppress(gexc.FailedPrecondition, gexc.NotFound):
                ref.update(
                    {"healthy": True},
                    option=self.client.write_option(last_update_time=snap.update_time),
                )

    def delete(self, project: str, service: str, *, pid: int | None = None) -> None:
        """Delete the record; with ``pid``, only if it still names that process."""
        ref = self.collection.document(doc_id(project, service))
        if pid is None:
            ref.delete()
            return
        snap = ref.get()
        if snap.exists and (snap.to_dict() or {}).get("pid") == pid:
            with contextlib.suppress(gexc.FailedPrecondition):
                ref.delete(option=self.client.write_option(last_update_time=snap.update_time))

    def for_project(self, project: str | None) -> list[ProcessRecord]:
        """The records of one project, or of every project when ``project`` is None."""
        query: Any = self.collection
        if project is not None:
            query = query.where(filter=firestore.FieldFilter("project", "==", project))
        snaps = query.stream()
        return sorted(
            (ProcessRecord.from_dict(s.to_dict() or {}) for s in snaps), key=lambda r: r.service
        )


# ---- process identity ------------------------------------------------------------------------


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown-boot"


def _stat(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` fields after the command name (state is [0], starttime is [19])."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may itself hold spaces or parentheses.
    return raw[raw.rfind(")") + 2 :].split()


def fingerprint(pid: int) -> str | None:
    """``<boot id>:<start time in clock ticks since boot>`` of a running process, or None."""
    stat = _stat(pid)
    if stat is None or len(stat) < 20:
        return None
    return f"{_boot_id()}:{stat[19]}"


def _reap(pid: int) -> None:
    """Collect the exit status of a process of ours that ended (so it is no zombie)."""
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        child.poll()
        return
    with contextlib.suppress(ChildProcessError, OSError):  # not our child: its parent reaps it
        os.waitpid(pid, os.WNOHANG)


def is_alive(pid: int, expected_fingerprint: str) -> bool:
    """Whether ``pid`` is still the very process that was fingerprinted (and not a zombie)."""
    if pid <= 0 or not expected_fingerprint or fingerprint(pid) != expected_fingerprint:
        return False  # gone, or the pid now names another process: never touch that one
    stat = _stat(pid)
    if stat is None or stat[0] in ("Z", "X"):
        _reap(pid)  # ours and ended: only now is it safe to wait for it
        return False
    return True


def remember_child(proc: subprocess.Popen[bytes]) -> None:
    _CHILDREN[proc.pid] = proc


def stop_process(pid: int, expected_fingerprint: str, grace: float = STOP_GRACE_SECONDS) -> bool:
    """SIGTERM the process group of ``pid`` (it leads its own session), SIGKILL after ``grace``.

    Only signals ``pid`` while it still matches the fingerprint, so a recycled pid is never
    touched. Returns True if it was running.
    """
    if not is_alive(pid, expected_fingerprint):
        return False
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not is_alive(pid, expected_fingerprint):
            _signal_group(pid, signal.SIGKILL, leader_alive=False)  # stragglers of the group
            return True
        time.sleep(0.05)
    if is_alive(pid, expected_fingerprint):
        _signal_group(pid, signal.SIGKILL)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and is_alive(pid, expected_fingerprint):
            time.sleep(0.05)
    _CHILDREN.pop(pid, None)
    return True


def _signal_group(pid: int, sig: signal.Signals, *, leader_alive: bool = True) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        if leader_alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
