"""Profile of the hot path (not a test): the engine benchmark's podium side under pyinstrument.

pyinstrument samples one thread, and Podium's messages are handled on the Pub/Sub client's
callback threads, so every ``Engine.on_event`` call is profiled on its own thread and the
sessions are combined: the profile is the wall time spent inside the engine per message
(parse, the Firestore transaction, ``decide``, logging), summed over all messages. Process CPU
time per event is measured on a second, unprofiled pass of the same workload, next to the
bare floor loop, so the profiler's own cost does not distort it.

    python -m devtools.emulators run -- python bench/profile.py [--runs 50 --events 20] [--log-format console]

``--log-format`` configures logging the way ``podium serve`` does (INFO, console or json) instead
of the benchmark's WARNING, to see what the per-message log line costs. Writes
``bench/results/profile.json`` (with a breakdown of the wall time per part of the path and the
top frames) and the profile text next to it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.engine import RESULTS, bench_floor, bench_podium, settings_for, warm_up  # noqa: E402
from daemon import logs  # noqa: E402
from daemon.engine import Engine, Inbound, Verdict  # noqa: E402


def profiled_podium(runs: int, events: int) -> tuple[dict[str, Any], Any]:
    from pyinstrument import Profiler
    from pyinstrument.session import Session

    sessions: list[Session] = []
    lock = threading.Lock()
    original = Engine.on_event

    def on_event(self: Engine, msg: Inbound) -> Verdict:
        profiler = Profiler(interval=0.0005)
        profiler.start()
        try:
            return original(self, msg)
        finally:
            session = profiler.stop()
            with lock:
                sessions.append(session)

    Engine.on_event = on_event  # type: ignore[method-assign]
    try:
        result = bench_podium(settings_for("prof"), runs, events, "prof")
    finally:
        Engine.on_event = original  # type: ignore[method-assign]
    combined = sessions[0]
    for s in sessions[1:]:
        combined = Session.combine(combined, s)
    return result, combined


def _key(frame: Any) -> str:
    path = frame.file_path or ""
    where = "/".join(Path(path).parts[-2:]) if path else "<built-in>"
    name = f"{frame.class_name}.{frame.function}" if getattr(frame, "class_name", None) else frame.function
    return f"{name} ({where})"


def frame_tables(session: Any, limit: int = 25) -> dict[str, list[dict[str, Any]]]:
    """Inclusive and self wall time by function, summed over the combined session's threads.

    Inclusive time counts a function once per stack (recursion is not double counted); the
    share is of the total wall time spent inside ``Engine.on_event``.
    """
    root = session.root_frame()
    inclusive: dict[str, float] = {}
    self_time: dict[str, float] = {}

    def walk(frame: Any, above: frozenset[str]) -> None:
        key = _key(frame)
        if frame.children or not frame.is_synthetic:
            if key not in above:
                inclusive[key] = inclusive.get(key, 0.0) + frame.time
            above = above | {key}
        else:  # pyinstrument's synthetic [self] frame: the parent's own time
            parent = _key(frame.parent) if frame.parent is not None else key
            self_time[parent] = self_time.get(parent, 0.0) + frame.time
        for child in frame.children:
            walk(child, above)
        if not frame.children and not frame.is_synthetic:
            self_time[key] = self_time.get(key, 0.0) + frame.time

    if root is not None:
        walk(root, frozenset())
    total = session.duration or 1.0
    engine_total = sum(v for k, v in inclusive.items() if k.startswith("Engine.on_event (daemon/engine.py")) or total

    def rows(table: dict[str, float]) -> list[dict[str, Any]]:
        ranked = sorted(table.items(), key=lambda kv: kv[1], reverse=True)[:limit]
        return [{"frame": k, "seconds": round(v, 3), "share": round(v / engine_total, 3)} for k, v in ranked]

    ours = {k: v for k, v in inclusive.items() if "(daemon/" in k or "(machines/" in k}

    def incl(prefix: str) -> float:
        return sum(v for k, v in inclusive.items() if k.startswith(prefix))

    tx_total = incl("_Transactional.__call__ (")
    body = incl("tx (daemon/store.py")
    read = incl("Client.get_all (")
    parts = {
        "waiting for the run's lock in this replica": incl("RunStore.apply (daemon/store.py") - tx_total,
        "BeginTransaction RPC": incl("Transaction._begin ("),
        "BatchGet RPC (run + audit record)": read,
        "transaction body minus the read (validate, decide, buffer writes)": body - read,
        "Commit RPC": incl("Transaction._commit ("),
        "parse the message (JSON + pydantic)": incl("parse_event ("),
        "after commit (log line, effects hand-off)": incl("Engine._after ("),
    }
    breakdown = [{"part": k, "seconds": round(v, 3), "share": round(v / engine_total, 3)} for k, v in parts.items()]
    return {"breakdown": breakdown, "inclusive_ours": rows(ours), "inclusive_all": rows(inclusive),
            "self": rows(self_time)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--log-format", choices=["warning", "console", "json"], default="warning",
                        help="warning: the engine benchmark's setting; console/json: podium serve's, at INFO")
    parser.add_argument("--repeat", type=int, default=3, help="unprofiled podium/floor passes for CPU per event")
    parser.add_argument("--output", default=str(RESULTS / "profile.json"))
    parser.add_argument("--save-session", action="store_true", help="also write the pyinstrument session")
    args = parser.parse_args()
    if not os.environ.get("PUBSUB_EMULATOR_HOST"):
        print("run under the emulators: python -m devtools.emulators run -- python bench/profile.py", file=sys.stderr)
        return 2
    if args.log_format == "warning":
        logs.configure("console", level=logging.WARNING)
    else:
        # podium serve logs INFO to stderr; send it to /dev/null so the terminal is not the bottleneck
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115
        logs.configure(args.log_format, level=logging.INFO)
    warm_up()

    passes: dict[str, list[dict[str, Any]]] = {"podium": [], "floor": []}
    for _ in range(args.repeat):
        passes["floor"].append(bench_floor(settings_for("floor"), args.runs, args.events, "floor"))
        passes["podium"].append(bench_podium(settings_for("podium"), args.runs, args.events, "podium"))
    began = time.monotonic()
    profiled, session = profiled_podium(args.runs, args.events)
    profile_seconds = time.monotonic() - began

    from pyinstrument.renderers import ConsoleRenderer

    text = ConsoleRenderer(unicode=False, color=False, show_all=False, time="percent_of_total").render(session)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".txt").write_text(text)
    if args.save_session:  # tens of MB: load it with pyinstrument.session.Session.load to dig further
        session.save(str(out.with_suffix(".pyisession")))

    def median(rows: list[dict[str, Any]], key: str) -> float:
        values = sorted(r[key] for r in rows)
        return values[len(values) // 2]

    summary = {
        "when": datetime.now(UTC).isoformat(),
        "cpus": os.cpu_count(),
        "workload": {"runs": args.runs, "events_per_run": args.events, "log_format": args.log_format,
                     "repeat": args.repeat},
        "floor": passes["floor"],
        "podium": passes["podium"],
        "median": {
            side: {"events_per_second": median(rows, "events_per_second"),
                   "cpu_ms_per_event": median(rows, "cpu_ms_per_event"),
                   "p50_ms": sorted(r["latency_ms"]["p50"] for r in rows)[len(rows) // 2]}
            for side, rows in passes.items()
        },
        "profiled_pass": {"events": profiled["events"], "seconds": round(profile_seconds, 2),
                          "engine_wall_s_in_on_event": round(session.duration, 2)},
        "frames": frame_tables(session),
    }
    out.write_text(json.dumps(summary, indent=2))
    sys.stdout.write(f"{'':8} {'events/s':>9} {'CPU ms/event':>13} {'p50 ms':>8}\n")
    for side, row in summary["median"].items():
        sys.stdout.write(f"{side:8} {row['events_per_second']:>9} {row['cpu_ms_per_event']:>13} {row['p50_ms']:>8}\n")
    frames = summary["frames"]
    sys.stdout.write("inside Engine.on_event, share of its wall time summed over messages:\n")
    for row in frames["breakdown"]:
        sys.stdout.write(f"  {row['share'] * 100:5.1f}%  {row['part']}\n")
    sys.stdout.write(" inclusive, Podium's own functions:\n")
    for row in frames["inclusive_ours"][:15]:
        sys.stdout.write(f"  {row['share'] * 100:5.1f}%  {row['frame']}\n")
    sys.stdout.write(" self time, any function:\n")
    for row in frames["self"][:12]:
        sys.stdout.write(f"  {row['share'] * 100:5.1f}%  {row['frame']}\n")
    sys.stdout.write(f"wrote {out} and {out.with_suffix('.txt')}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
