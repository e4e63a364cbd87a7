"""``podium status``: runs and their state, read from Firestore.

Run ids are never folded or cut (they are meant to be copied): the list is printed as plain
columns sized to the data, and only the last column (the error) is shortened to the terminal
width. Phases are printed in pipeline order (``machines.pipeline.PHASES``), not in whatever
order Firestore returns a map's keys.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from google.cloud import firestore
from rich.console import Console
from rich.text import Text

from daemon.config import Settings
from daemon.store import RunStore
from machines.pipeline import PHASES

EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE = 0, 1, 2
STATUS_COLOUR = {"succeeded": "green", "failed": "red", "running": "yellow", "queued": "cyan", "pending": "dim",
                 "cancelled": "magenta", "torn_down": "blue"}


def store_for(settings: Settings) -> RunStore:
    return RunStore(firestore.Client(project=settings.project), settings.collection, "cli", 0)


def _jsonable(data: Any) -> Any:
    return json.loads(json.dumps(data, default=str))


# ---- shared formatting (status, watch) -----------------------------------------------------

def _progress_keys() -> tuple[str, ...]:
    keys: list[str] = []
    for phase in PHASES:
        keys += [key for _event, key in phase.items]
        if phase.fan_in:
            keys.append(phase.fan_in)
        if phase.state == "provisioning_iam":
            # not a fan-in of PHASES: the machine's own steps (accounts, bindings and their
            # verification), opened when IAM provisioning starts, beside the builds
            keys.append("iam")
    return tuple(dict.fromkeys(keys))


PROGRESS_ORDER = _progress_keys()


def ordered_progress(progress: Mapping[str, Any] | None) -> list[tuple[str, Mapping[str, Any]]]:
    """``progress`` in pipeline order (keys the pipeline does not name last, sorted)."""
    progress = progress or {}
    rank = {key: i for i, key in enumerate(PROGRESS_ORDER)}
    keys = sorted(progress, key=lambda k: (rank.get(k, len(rank)), k))
    return [(k, progress[k] or {}) for k in keys]


def stamp(value: Any, *, millis: bool = False) -> str:
    """A stored time as ``YYYY-MM-DD HH:MM:SS[.mmm]`` (UTC): the date included."""
    if isinstance(value, datetime):
        when = value.astimezone(UTC) if value.tzinfo else value
        text = when.strftime("%Y-%m-%d %H:%M:%S")
        return text + (f".{when.microsecond // 1000:03d}" if millis else "")
    if value is None:
        return "-"
    text = str(value).replace("T", " ")
    return text[:23] if millis else text[:19]


def as_datetime(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def duration(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _width() -> int:
    return shutil.get_terminal_size((80, 24)).columns


def _one_line(text: Any) -> str:
    return " ".join(str(text or "").split())


def _fit(text: str, room: int) -> str:
    room = max(room, 20)
    return text if len(text) <= room else text[: room - 1] + "…"


def columns(headers: Sequence[str], rows: Iterable[Sequence[str]], *, styles: Sequence[str | None] = (),
            width: int | None = None) -> list[Text]:
    """Plain columns sized to their content; only the last one is shortened to ``width``.

    No cell but the last is ever folded or cut: an id stays whole (copyable) however narrow the
    terminal (the line is then longer than the terminal and wraps there, as ``kubectl`` does)."""
    rows = [list(r) for r in rows]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers[:-1])]
    room = (width or _width()) - sum(w + 2 for w in widths)
    lines = [Text("  ".join([*(h.ljust(w) for h, w in zip(headers, widths, strict=False)), headers[-1]]),
                  style="bold")]
    for row in rows:
        line = Text()
        for i, cell in enumerate(row[:-1]):
            style = styles[i] if i < len(styles) else None
            line.append(cell, style=STATUS_COLOUR.get(cell, "") if style == "status" else (style or ""))
            line.append(" " * (widths[i] - len(cell) + 2))
        line.append(_fit(row[-1], room) if row[-1] else "")
        line.rstrip()
        lines.append(line)
    return lines


def _print_lines(console: Console, lines: Iterable[Text]) -> None:
    for line in lines:
        console.print(line, soft_wrap=True)  # soft wrap: rich neither folds nor crops the line


# ---- the commands --------------------------------------------------------------------------

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
    console = Console()
    if not rows:
        console.print(f"no runs{f' with status {status}' if status else ''} in collection {settings.collection}",
                      markup=False)
        return EXIT_OK
    table = [[str(r["run_id"]), str(r["state"]), str(r["status"]), str(r["version"]), stamp(r["updated_at"]),
              _one_line(r["error"])] for r in rows]
    _print_lines(console, columns(["RUN", "STATE", "STATUS", "VERSION", "UPDATED (UTC)", "ERROR"], table,
                                  styles=["bold", None, "status"]))
    return EXIT_OK


def error_lines(err: Mapping[str, Any], *, head: int = 20) -> list[str]:
    """``error``: its state and reason, then the first ``head`` lines of its message."""
    message = str(err.get("message") or "").strip().splitlines()
    lines = [f"error in {err.get('state')}: {err.get('reason')}"]
    lines += [f"  {line}" for line in message[:head]]
    if len(message) > head:
        lines.append(f"  … ({len(message) - head} more lines: `podium status RUN --json`)")
    return lines


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
        status = str(doc.get("status"))
        console.print(Text.assemble((run_id, "bold"), f"  state={doc.get('state')}  ",
                                    (f"status={status}", STATUS_COLOUR.get(status, "")),
                                    f"  version={doc.get('version')}  created={stamp(doc.get('created_at'))}  "
                                    f"updated={stamp(doc.get('updated_at'))} (UTC)"), soft_wrap=True)
        if doc.get("error"):
            for i, line in enumerate(error_lines(doc["error"])):
                console.print(Text(line, style="red" if i == 0 else ""))
        for phase, items in ordered_progress(doc.get("progress")):
            console.print(Text(f"  {phase:16} " + "  ".join(f"{k}={v}" for k, v in sorted(items.items()))))
        for key, value in (doc.get("outputs") or {}).items():
            console.print(Text(f"  outputs.{key}: {value}"))
        if events:
            console.print()
            rows = [[stamp(e.get("received_at"), millis=True), str(e.get("type") or ""), str(e.get("item") or "-"),
                     str(e.get("outcome") or ""),
                     f"{e.get('from_state') or '-'} -> {e.get('to_state') or '-'}", _one_line(e.get("detail"))]
                    for e in audit]
            _print_lines(console, columns(["RECEIVED (UTC)", "TYPE", "ITEM", "OUTCOME", "TRANSITION", "DETAIL"],
                                          rows))
    return EXIT_OK if doc.get("status") in ("running", "queued", "succeeded") else EXIT_RUN_FAILED
