"""``podium status``: runs and their state, read from Firestore."""

from __future__ import annotations

import json
import sys
from typing import Any

from google.cloud import firestore
from rich.console import Console
from rich.table import Table

from daemon.config import Settings
from daemon.store import RunStore

EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE = 0, 1, 2


def store_for(settings: Settings) -> RunStore:
    return RunStore(firestore.Client(project=settings.project), settings.collection, "cli", 0)


def _jsonable(data: Any) -> Any:
    return json.loads(json.dumps(data, default=str))


def show_runs(settings: Settings, *, status: str | None, limit: int, as_json: bool) -> int:
    runs = store_for(settings).list_runs(status=status, limit=limit)
    rows = [
        {k: r.get(k) for k in ("run_id", "state", "status", "version", "created_at", "updated_at")}
        | {"error": (r.get("error") or {}).get("message")}
        for r in runs
    ]
    if as_json:
        print(json.dumps(_jsonable(rows), indent=2))
        return EXIT_OK
    table = Table("run", "state", "status", "version", "updated", "error")
    for r in rows:
        table.add_row(str(r["run_id"]), str(r["state"]), str(r["status"]), str(r["version"]),
                      str(r["updated_at"])[:19], (r["error"] or "")[:60])
    Console().print(table)
    return EXIT_OK


def show_run(settings: Settings, run_id: str, *, events: bool, as_json: bool) -> int:
    store = store_for(settings)
    doc = store.get(run_id)
    if doc is None:
        print(f"podium status: no run {run_id!r} in collection {settings.collection!r}", file=sys.stderr)
        return EXIT_USAGE
    doc.pop("architecture", None)
    audit = store.events(run_id) if events else []
    if as_json:
        out = dict(doc)
        if events:
            out["events"] = audit
        print(json.dumps(_jsonable(out), indent=2, sort_keys=True))
    else:
        console = Console()
        console.print(f"[bold]{run_id}[/]  state={doc.get('state')}  status={doc.get('status')}  version={doc.get('version')}")
        if doc.get("error"):
            err = doc["error"]
            console.print(f"[red]error[/] in {err.get('state')}: {err.get('reason')}: {err.get('message')}")
        for phase, items in (doc.get("progress") or {}).items():
            console.print(f"  {phase:10} " + "  ".join(f"{k}={v}" for k, v in sorted(items.items())))
        for key, value in (doc.get("outputs") or {}).items():
            console.print(f"  outputs.{key}: {value}")
        if events:
            table = Table("received", "type", "item", "outcome", "from", "to", "detail")
            for e in audit:
                table.add_row(str(e.get("received_at"))[11:23], e.get("type"), str(e.get("item") or ""),
                              e.get("outcome"), str(e.get("from_state") or ""), str(e.get("to_state") or ""),
                              (e.get("detail") or "")[:60])
            console.print(table)
    return EXIT_OK if doc.get("status") in ("running", "succeeded") else EXIT_RUN_FAILED
