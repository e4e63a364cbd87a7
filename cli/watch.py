"""Following a run live from Firestore ``on_snapshot`` (no polling but a slow safety-net read)."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from google.cloud import firestore

from daemon.config import Settings

TERMINAL = ("succeeded", "failed", "cancelled")
RECHECK_SECONDS = 5.0


def wait_for_end(settings: Settings, run_id: str, *, timeout: float, quiet: bool = False) -> int:
    """Block until the run reaches a terminal status. Exit code 0/1 by status, 3 on timeout."""
    client = firestore.Client(project=settings.project)
    done = threading.Event()
    last: dict[str, Any] = {}

    def on_snapshot(snaps: list[Any], _changes: Any, _read_time: Any) -> None:
        for snap in snaps:
            if not snap.exists:
                continue
            doc = snap.to_dict() or {}
            if not quiet and doc.get("state") != last.get("state"):
                print(f"{time.strftime('%H:%M:%S')} {run_id}: {doc.get('state')} ({doc.get('status')})", flush=True)
            last.clear()
            last.update(doc)
            if doc.get("status") in TERMINAL:
                done.set()

    ref = client.collection(settings.collection).document(run_id)
    watch = ref.on_snapshot(on_snapshot)
    deadline = time.monotonic() + timeout
    try:
        # The listener does the work; a read every few seconds is the safety net for a listen
        # stream that dropped an update (seen with the emulator under load).
        while not done.wait(min(RECHECK_SECONDS, max(deadline - time.monotonic(), 0))):
            if time.monotonic() >= deadline:
                return 3
            snap = ref.get()
            if snap.exists and (snap.to_dict() or {}).get("status") in TERMINAL:
                on_snapshot([snap], None, None)
    finally:
        watch.unsubscribe()
    return 0 if last.get("status") == "succeeded" else 1


def render_run(doc: dict[str, Any], events: list[dict[str, Any]], started: float) -> Any:
    """A rich renderable of one run: state, per-phase/per-item progress, elapsed, last events."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    colour = {"succeeded": "green", "failed": "red", "running": "yellow", "pending": "dim", "cancelled": "magenta"}
    head = Text.assemble(
        (f"{doc.get('run_id')}  ", "bold"),
        (f"{doc.get('state')}", colour.get(str(doc.get("status")), "white")),
        f"  status={doc.get('status')}  version={doc.get('version')}  elapsed={time.monotonic() - started:.0f}s",
    )
    table = Table("phase", "items", box=None, pad_edge=False)
    for phase, items in (doc.get("progress") or {}).items():
        cells = Text()
        for name, status in sorted(items.items()):
            cells.append(f"{name}:{status}  ", colour.get(status, "white"))
        table.add_row(phase, cells)
    parts: list[Any] = [head, table]
    if doc.get("error"):
        err = doc["error"]
        parts.append(Text(f"error in {err.get('state')}: {err.get('reason')}: {err.get('message')}", "red"))
    for e in events[-5:]:
        parts.append(Text(f"  {str(e.get('received_at'))[11:19]} {e.get('type')} {e.get('item') or ''} "
                          f"{e.get('outcome')} {e.get('detail') or ''}"[:120], "dim"))
    return Group(*parts)


def watch_run(settings: Settings, run_id: str, *, timeout: float, as_json: bool = False) -> int:
    """``podium watch``: live view until the run ends. Exit 0 succeeded, 1 failed/cancelled, 2 unknown, 3 timeout."""
    import json

    from rich.console import Console
    from rich.live import Live

    client = firestore.Client(project=settings.project)
    run_ref = client.collection(settings.collection).document(run_id)
    if not run_ref.get().exists:
        print(f"podium watch: no run {run_id!r}", file=sys.stderr)
        return 2
    started = time.monotonic()
    state: dict[str, Any] = {"doc": {}, "events": []}
    lock = threading.Lock()
    done = threading.Event()
    changed = threading.Event()

    def on_doc(snaps: list[Any], _c: Any, _t: Any) -> None:
        for snap in snaps:
            with lock:
                state["doc"] = snap.to_dict() or {}
            if state["doc"].get("status") in TERMINAL:
                done.set()
            changed.set()

    def on_events(snaps: list[Any], _c: Any, _t: Any) -> None:
        with lock:
            state["events"] = [s.to_dict() for s in snaps]
        changed.set()

    watches = [
        run_ref.on_snapshot(on_doc),
        run_ref.collection("events").order_by("received_at").limit_to_last(5).on_snapshot(on_events)
        if hasattr(run_ref.collection("events").order_by("received_at"), "limit_to_last")
        else run_ref.collection("events").on_snapshot(on_events),
    ]
    deadline = time.monotonic() + timeout
    try:
        if as_json:
            last_state = None
            while not done.is_set() and time.monotonic() < deadline:
                changed.wait(0.5)
                changed.clear()
                with lock:
                    doc = dict(state["doc"])
                if doc.get("state") != last_state:
                    last_state = doc.get("state")
                    print(json.dumps({"run_id": run_id, "state": doc.get("state"), "status": doc.get("status"),
                                      "version": doc.get("version")}), flush=True)
        else:
            with Live(console=Console(), refresh_per_second=4, transient=False) as live:
                while not done.is_set() and time.monotonic() < deadline:
                    changed.wait(0.25)
                    changed.clear()
                    with lock:
                        live.update(render_run(dict(state["doc"]), list(state["events"]), started))
                with lock:
                    live.update(render_run(dict(state["doc"]), list(state["events"]), started))
    finally:
        for w in watches:
            w.unsubscribe()
    if not done.is_set():
        return 3
    return 0 if state["doc"].get("status") == "succeeded" else 1
