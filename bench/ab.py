"""Before/after on the same workload in the same run (not a test): two source trees, alternating.

The engine benchmark's podium side (``bench/engine.py``: R runs × S events through the real
emulators) runs in a fresh subprocess per pass, importing ``daemon``, ``machines`` and
``handlers`` from either the baseline tree or this working tree. Passes alternate (B A A B B A …)
against the same emulators, so both trees see the same warm JVMs and the same background load.

    python -m devtools.emulators run -- python bench/ab.py --baseline DIR [--runs 50 --events 20 --rounds 3]

``DIR`` holds the baseline's ``daemon/``, ``machines/``, ``handlers/`` (e.g. ``git archive <commit>
daemon machines handlers | tar -x -C DIR``). Writes ``bench/results/ab.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def worker(tree: Path, runs: int, events: int, passes: int, log_format: str) -> None:
    """One subprocess: import the engine from ``tree``, then run the podium side ``passes`` times."""
    sys.path.insert(0, str(tree))
    import logging

    for name in ("daemon.config", "daemon.engine", "daemon.intake", "daemon.logs", "daemon.pubsub", "daemon.store",
                 "handlers.standin", "machines.messages", "machines.orchestration"):
        importlib.import_module(name)
    import daemon.logs
    import daemon.store

    assert Path(daemon.store.__file__).resolve().is_relative_to(tree.resolve()), daemon.store.__file__
    if log_format == "warning":
        daemon.logs.configure("console", level=logging.WARNING)
    else:  # podium serve's level; lines go to /dev/null so the terminal is not measured
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115
        daemon.logs.configure(log_format, level=logging.INFO)
    spec = importlib.util.spec_from_file_location("bench_engine_ab", HERE / "engine.py")
    assert spec is not None and spec.loader is not None
    engine = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(engine)
    engine.bench_podium(engine.settings_for("abwarm"), 20, 5, "abwarm")  # this process's own warm-up
    rows = [engine.bench_podium(engine.settings_for("ab"), runs, events, "ab") for _ in range(passes)]
    sys.__stdout__.write(json.dumps(rows) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="directory with the baseline daemon/ machines/ handlers/")
    parser.add_argument("--candidate", default=str(REPO), help="directory of the changed tree (default: this one)")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="alternations; each is 2 passes per tree")
    parser.add_argument("--log-format", choices=["warning", "console", "json"], default="warning")
    parser.add_argument("--output", default=str(HERE / "results" / "ab.json"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--passes", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(Path(args.worker), args.runs, args.events, args.passes, args.log_format)
        return 0
    if not os.environ.get("PUBSUB_EMULATOR_HOST"):
        print("run under the emulators: python -m devtools.emulators run -- python bench/ab.py ...", file=sys.stderr)
        return 2
    trees = {"before": Path(args.baseline).resolve(), "after": Path(args.candidate).resolve()}
    for name, tree in trees.items():
        if not (tree / "daemon" / "store.py").is_file():
            print(f"{name}: {tree} has no daemon/store.py", file=sys.stderr)
            return 2
    rows: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    # warm the emulators once, unmeasured, with the candidate
    subprocess.run([sys.executable, __file__, "--worker", str(trees["after"]), "--runs", "20", "--events", "5",
                    "--passes", "1", "--baseline", "-"], check=True, capture_output=True, cwd=REPO)
    for i in range(args.rounds):
        order = ("before", "after") if i % 2 == 0 else ("after", "before")
        for name in order:
            proc = subprocess.run(
                [sys.executable, __file__, "--worker", str(trees[name]), "--runs", str(args.runs), "--events",
                 str(args.events), "--passes", str(args.passes), "--log-format", args.log_format, "--baseline", "-"],
                check=True, capture_output=True, text=True, cwd=REPO,
            )
            got = json.loads(proc.stdout.strip().splitlines()[-1])
            rows[name].extend(got)
            print(f"round {i + 1} {name:6}: " + ", ".join(
                f"{r['events_per_second']} ev/s {r['cpu_ms_per_event']} ms CPU/ev" for r in got), flush=True)

    def summary(items: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "passes": len(items),
            "events_per_second": round(statistics.median(r["events_per_second"] for r in items), 1),
            "cpu_ms_per_event": round(statistics.median(r["cpu_ms_per_event"] for r in items), 2),
            "p50_ms": round(statistics.median(r["latency_ms"]["p50"] for r in items), 1),
            "p95_ms": round(statistics.median(r["latency_ms"]["p95"] for r in items), 1),
            "complete": all(r["complete"] for r in items),
        }

    result = {
        "when": datetime.now(UTC).isoformat(),
        "cpus": os.cpu_count(),
        "workload": {"runs": args.runs, "events_per_run": args.events, "rounds": args.rounds,
                     "passes_per_round": args.passes, "log_format": args.log_format},
        "trees": {k: str(v) for k, v in trees.items()},
        "before": summary(rows["before"]),
        "after": summary(rows["after"]),
        "passes": rows,
    }
    b, a = result["before"], result["after"]
    result["ratio_after_to_before"] = {
        "events_per_second": round(a["events_per_second"] / b["events_per_second"], 3),
        "cpu_ms_per_event": round(a["cpu_ms_per_event"] / b["cpu_ms_per_event"], 3),
        "p50_ms": round(a["p50_ms"] / b["p50_ms"], 3) if b["p50_ms"] else None,
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"{'':7} {'events/s':>9} {'CPU ms/ev':>10} {'p50 ms':>8} {'p95 ms':>8}   (median of {b['passes']} passes)")
    for name in ("before", "after"):
        r = result[name]
        print(f"{name:7} {r['events_per_second']:>9} {r['cpu_ms_per_event']:>10} {r['p50_ms']:>8} {r['p95_ms']:>8}")
    print(f"after/before: {result['ratio_after_to_before']}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
