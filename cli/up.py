"""``podium up`` (what ``make run`` does): the whole deployment on the embedded default.

Emulators up → daemon up (in this process, local backend) → start the architecture →
live progress → check the publisher's messages reach the subscriber → exit 0; or the
failing phase and reason and exit 1. Ctrl-C (or the end) stops everything it started.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from rich.console import Console

from daemon import logs
from daemon.config import Settings

# The embedded default (package data, so an installed `podium` has it too; testdata/ links here).
EXAMPLE = Path(__file__).resolve().parent / "example"
EXAMPLE_ARCHITECTURE = EXAMPLE / "architecture.yaml"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT = 0, 1, 2, 3


def _subscriber_count(url: str) -> int:
    with urllib.request.urlopen(f"{url}/stats", timeout=3) as resp:
        return int(json.loads(resp.read()).get("received", 0))


def verify_dataflow(doc: dict[str, Any], timeout: float = 20.0) -> tuple[bool, str]:
    """The end-to-end proof: the subscriber's count of received messages grows."""
    url = (doc.get("outputs") or {}).get("urls", {}).get("subscriber")
    if not url:
        return False, "the run has no subscriber URL"
    deadline = time.monotonic() + timeout
    last = 0
    while time.monotonic() < deadline:
        try:
            last = _subscriber_count(url)
        except OSError:
            last = 0
        if last > 0:
            return True, f"the subscriber at {url} has received {last} message(s) from the publisher"
        time.sleep(0.5)
    return False, f"the subscriber at {url} received no message within {timeout:.0f} s"


def working_copy_of_the_example(state_dir: Path) -> Path:
    """The embedded example copied under ``state_dir``: Podium writes ``resources.yaml`` into the
    services' folders, and an installed package's own files are not ours to change."""
    import shutil

    target = state_dir / "example"
    shutil.copytree(EXAMPLE, target, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache", ".venv"))
    return target / EXAMPLE_ARCHITECTURE.name


def export_line(env: dict[str, str], project: str) -> str:
    """The shell line that points other ``podium`` verbs at these emulators and this project."""
    import shlex

    values = {**env, "PODIUM_PROJECT": project}
    return "export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in values.items())


def up(
    architecture: Path | None = None,
    *,
    run_id: str | None = None,
    timeout: float = 600.0,
    keep: bool = False,
    console: Console | None = None,
) -> int:
    from cli.watch import render_run
    from daemon.pubsub import ensure_daemon_plumbing, publish_command
    from daemon.server import Daemon
    from devtools.emulators import attach_from_env, start_emulators

    console = console or Console()
    state_dir = Path.cwd() / ".podium"
    state_dir.mkdir(exist_ok=True)
    architecture = (architecture or working_copy_of_the_example(state_dir)).resolve()
    if not architecture.is_file():
        console.print(f"[red]podium up: no architecture file at {architecture}[/]")
        return EXIT_USAGE
    logs.configure("json", level=30)  # the live view owns the terminal; warnings and errors still show
    with ExitStack() as stack:
        emulators = attach_from_env()
        started_here = emulators is None
        if emulators is None:
            console.print("starting the Pub/Sub, Firestore and Cloud Storage emulators …")
            emulators = start_emulators(work_dir=state_dir / "emulators")
            stack.callback(emulators.stop)
            emulators.export()
        os.environ.setdefault("PODIUM_PROJECT", "podium-local")
        # podium serve's own settings: timers and re-checks fire at their moment (daemon/wakeups.py).
        settings = Settings(backend="local", source_root=architecture.parent, state_dir=state_dir)
        console.print(f"emulators: pubsub {emulators.pubsub_host}, firestore {emulators.firestore_host}, "
                      f"storage {emulators.storage_host or '(none)'}", soft_wrap=True)
        if started_here:
            # The other verbs (status, watch, logs, cancel …) in another shell need these, while
            # this process runs (it stops the emulators when it ends; --keep keeps them).
            console.print("for podium status/watch/logs/cancel in another shell (while this runs):")
            console.print(export_line(emulators.env(), settings.project), soft_wrap=True, markup=False,
                          highlight=False)
        ensure_daemon_plumbing(settings)
        daemon = Daemon(settings, http_port=0)
        daemon.start()
        stack.callback(daemon.stop)
        if settings.dashboard:
            console.print(f"dashboard: {daemon.dashboard_url}", soft_wrap=True)
        stack.callback(_stop_services, settings, console)

        run_id = run_id or time.strftime("demo-%Y%m%d-%H%M%S")
        publish_command(
            settings,
            {"command": "start", "run_id": run_id, "architecture_yaml": architecture.read_text(),
             "source_root": str(architecture.parent)},
        )
        console.print(f"started run [bold]{run_id}[/] of {architecture}", soft_wrap=True)
        doc = _follow(settings, run_id, timeout, console, render_run)
        if doc is None:
            console.print(f"[red]timed out after {timeout:.0f} s[/]; see `podium status {run_id} --events`",
                          soft_wrap=True)
            return EXIT_TIMEOUT
        console.print(f"Firestore document: {settings.collection}/{run_id} (project {settings.project}, "
                      f"emulator {emulators.firestore_host}); service logs: {state_dir / 'logs'} "
                      f"(`podium logs {run_id}`)", soft_wrap=True)
        if doc.get("status") != "succeeded":
            err = doc.get("error") or {}
            console.print(f"run {doc.get('status')} in phase {err.get('state')}: {err.get('reason')}", style="red",
                          markup=False)
            console.print(str(err.get("message", ""))[:3000], markup=False)
            return EXIT_FAILED
        urls = (doc.get("outputs") or {}).get("urls") or {}
        if "subscriber" in urls:  # the example's end-to-end proof; another architecture has its own
            ok, detail = verify_dataflow(doc)
            console.print(("[green]✓ " if ok else "[red]✗ ") + detail + "[/]")
            if not ok:
                return EXIT_FAILED
        for resource in (doc.get("outputs") or {}).get("resources") or []:
            console.print(f"  {resource['kind']:<22} {resource['name']}  ({resource['dataflow']}, {resource['location']})")
        console.print(f"[green]run {run_id} succeeded[/]")
        if keep:
            console.print("services keep running; Ctrl-C stops everything")
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        return EXIT_OK


def _follow(settings: Settings, run_id: str, timeout: float, console: Console, render: Any) -> dict[str, Any] | None:
    """Live view of the run from Firestore snapshots until it ends."""
    import threading

    from google.cloud import firestore
    from rich.live import Live

    client = firestore.Client(project=settings.project)
    ref = client.collection(settings.collection).document(run_id)
    latest: dict[str, Any] = {"doc": {"run_id": run_id, "state": "pending", "status": "running"}, "events": []}
    changed = threading.Event()

    def on_doc(snaps: list[Any], _c: Any, _t: Any) -> None:
        for snap in snaps:
            if snap.exists:
                latest["doc"] = snap.to_dict() or {}
        changed.set()

    def on_events(snaps: list[Any], _c: Any, _t: Any) -> None:
        latest["events"] = sorted((s.to_dict() for s in snaps), key=lambda e: str(e.get("received_at")))[-5:]
        changed.set()

    from cli.watch import finish_live

    watches = [ref.on_snapshot(on_doc), ref.collection("events").on_snapshot(on_events)]
    started = time.monotonic()
    ended: dict[str, Any] | None = None
    try:
        with Live(render(latest["doc"], [], started), console=console, refresh_per_second=4) as live:
            while time.monotonic() - started < timeout:
                changed.wait(0.25)
                changed.clear()
                doc = dict(latest["doc"])
                live.update(render(doc, list(latest["events"]), started))
                if doc.get("status") in ("succeeded", "failed", "cancelled"):
                    ended = doc
                    break
        finish_live(console)  # what is printed next starts on a line of its own
        return ended
    finally:
        for w in watches:
            w.unsubscribe()


def _stop_services(settings: Settings, console: Console) -> None:
    try:
        from handlers.deploy.local import stop_all

        stopped = stop_all(settings)
        if stopped:
            console.print(f"stopped local services: {', '.join(stopped)}")
    except Exception as exc:  # noqa: BLE001 - shutting down: report, do not mask the exit code
        console.print(f"[yellow]could not stop local services: {exc}[/]")
