"""Following a run live from Firestore ``on_snapshot`` (no polling but a slow safety-net read)."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from google.cloud import firestore

from daemon.config import Settings

TERMINAL = ("succeeded", "failed", "cancelled", "torn_down")
RECHECK_SECONDS = 5.0


def wait_for_end(settings: Settings, run_id: str, *, timeout: float, quiet: bool = False) -> int:
    """Block until the run reaches a terminal status. Exit code 0/1 by status, 3 on timeout.

    A run that did not succeed is explained on stderr (quiet or not): its status, the state
    that failed, the reason and the head of the message."""
    client = firestore.Client(project=settings.project)
    done = threading.Event()
    last: dict[str, Any] = {}

    def on_snapshot(snaps: list[Any], _changes: Any, _read_time: Any) -> None:
        for snap in snaps:
            if not snap.exists:
                continue
            doc = snap.to_dict() or {}
            if not quiet and doc.get("state") != last.get("state"):
                print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {run_id}: {doc.get('state')} ({doc.get('status')})",
                      flush=True)
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
                print(f"podium: run {run_id} has not ended within {timeout:.0f} s "
                      f"(state {last.get('state')}); follow it with `podium watch {run_id}`", file=sys.stderr)
                return 3
            snap = ref.get()
            if snap.exists and (snap.to_dict() or {}).get("status") in TERMINAL:
                on_snapshot([snap], None, None)
    finally:
        watch.unsubscribe()
    if last.get("status") == "succeeded":
        return 0
    explain_end(run_id, last)
    return 1


def explain_end(run_id: str, doc: dict[str, Any]) -> None:
    """Why a run did not succeed, on stderr: status, then the error's state, reason and message head."""
    from cli.status import error_lines

    err = doc.get("error") or {}
    print(f"run {run_id} {doc.get('status')} (state {doc.get('state')})", file=sys.stderr)
    if err:
        print("\n".join(error_lines(err)), file=sys.stderr)
    print(f"details: podium status {run_id} --events", file=sys.stderr)


def finish_live(console: Any) -> None:
    """End a ``rich.live.Live`` display with a newline: rich adds one only on a terminal, so
    piped or captured output ran the live view's last line into the next print."""
    if not console.is_terminal:
        console.line()


def elapsed(doc: dict[str, Any], started: float | None = None) -> str:
    """The run's own elapsed time: created_at to updated_at once it ended, else to now (or,
    without created_at, the time since ``started``, a ``time.monotonic()``)."""
    from datetime import UTC, datetime

    from cli.status import as_datetime, duration

    created = as_datetime(doc.get("created_at"))
    if created is None:
        return duration(time.monotonic() - started) if started is not None else "-"
    end = as_datetime(doc.get("updated_at")) if doc.get("status") in TERMINAL else None
    return duration(((end or datetime.now(UTC)) - created).total_seconds())


def render_run(doc: dict[str, Any], events: list[dict[str, Any]], started: float | None = None) -> Any:
    """A rich renderable of one run: state, per-phase/per-item progress in pipeline order, the
    run's own elapsed time (from its document), the last events with their date."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from cli.status import STATUS_COLOUR, error_lines, ordered_progress, stamp

    colour = {**STATUS_COLOUR, "pending": "dim"}
    head = Text.assemble(
        (f"{doc.get('run_id')}  ", "bold"),
        (f"{doc.get('state')}", colour.get(str(doc.get("status")), "white")),
        f"  status={doc.get('status')}  version={doc.get('version')}  elapsed={elapsed(doc, started)}",
    )
    table = Table("phase", "items", box=None, pad_edge=False)
    for phase, items in ordered_progress(doc.get("progress")):
        cells = Text()
        for name, status in sorted(items.items()):
            cells.append(f"{name}:{status}  ", colour.get(str(status), "white"))
        table.add_row(phase, cells)
    parts: list[Any] = [head, table]
    if doc.get("error"):
        lines = error_lines(doc["error"], head=10)
        parts.append(Text(lines[0], "red"))
        parts.extend(Text(line) for line in lines[1:])
    for e in events[-5:]:
        parts.append(Text(f"  {stamp(e.get('received_at'))} {e.get('type')} {e.get('item') or ''} "
                          f"{e.get('outcome')} {e.get('detail') or ''}"[:140], "dim"))
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

    events_seen = threading.Event()

    def on_events(snaps: list[Any], _c: Any, _t: Any) -> None:
        with lock:
            state["events"] = [s.to_dict() for s in snaps]
        events_seen.set()
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
            while time.monotonic() < deadline:
                ended = done.is_set()  # read before the document: its terminal state is printed too
                with lock:
                    doc = dict(state["doc"])
                if doc.get("state") != last_state:
                    last_state = doc.get("state")
                    print(json.dumps({"run_id": run_id, "state": doc.get("state"), "status": doc.get("status"),
                                      "version": doc.get("version")}), flush=True)
                if ended:
                    break
                changed.wait(0.5)
                changed.clear()
        else:
            console = Console()
            with Live(console=console, refresh_per_second=4, transient=False) as live:
                while not done.is_set() and time.monotonic() < deadline:
                    changed.wait(0.25)
                    changed.clear()
                    with lock:
                        live.update(render_run(dict(state["doc"]), list(state["events"]), started))
                events_seen.wait(2.0)  # a run that had already ended: its last events in the final view
                with lock:
                    live.update(render_run(dict(state["doc"]), list(state["events"]), started))
            finish_live(console)
    finally:
        for w in watches:
            w.unsubscribe()
    if not done.is_set():
        print(f"podium watch: run {run_id} has not ended within {timeout:.0f} s", file=sys.stderr)
        return 3
    return 0 if state["doc"].get("status") == "succeeded" else 1
