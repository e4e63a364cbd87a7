"""Ordering benchmark (not a test): the engine with and without message ordering on events.

The events subscription is unordered by default (README, "Why events are not ordered"); this
measures what that choice costs or gains on the engine's message path. Same workload as
``bench/engine.py`` (R runs × S ``deploy.succeeded`` events, effects not executed), Podium's
engine only, each pass on fresh topics: ordered (subscription with message ordering, events
published with the run id as ordering key) and unordered, alternating which goes first, after
an unmeasured warm-up of each. The bare floor loop of ``bench/engine.py`` is left out: it has
no per-run lock, so unordered it collides with itself in Firestore and measures nothing useful.

    python -m devtools.emulators run -- python bench/ordering.py [--runs 50 --events 20] [--repeat 3]

Prints a table and writes ``bench/results/ordering.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine import RESULTS, bench_podium, median_row, settings_for  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3, help="passes per side; the table shows the median")
    parser.add_argument("--output", default=str(RESULTS / "ordering.json"))
    args = parser.parse_args()
    if not os.environ.get("PUBSUB_EMULATOR_HOST"):
        print("run under the emulators: python -m devtools.emulators run -- python bench/ordering.py", file=sys.stderr)
        return 2
    from daemon import logs

    logs.configure("console", level=logging.WARNING)
    for ordered in (True, False):  # warm-up, unmeasured
        bench_podium(settings_for("warm", events_ordering=ordered), 20, 5, "warm")
    passes: dict[str, list[dict[str, Any]]] = {"ordered": [], "unordered": []}
    for i in range(max(args.repeat, 1)):
        for side in (("ordered", "unordered") if i % 2 == 0 else ("unordered", "ordered")):
            settings = settings_for(side, events_ordering=side == "ordered")
            passes[side].append(bench_podium(settings, args.runs, args.events, side))
    rows = {side: median_row(rows) for side, rows in passes.items()}
    results = {"when": datetime.now(UTC).isoformat(), "cpus": os.cpu_count(),
               "workload": {"runs": args.runs, "events_per_run": args.events, "repeat": args.repeat},
               **rows, "all_passes": passes,
               "throughput_ratio_unordered_to_ordered": round(
                   rows["unordered"]["events_per_second"] / max(rows["ordered"]["events_per_second"], 1e-9), 3)}
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"R={args.runs} x S={args.events}, median of {max(args.repeat, 1)} pass(es), engine only")
    print(f"{'':10} {'events/s':>10} {'CPU ms/ev':>10} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
    for side, row in rows.items():
        lat = row["latency_ms"]
        print(f"{side:10} {row['events_per_second']:>10} {row['cpu_ms_per_event']:>10} "
              f"{lat['p50']:>8} {lat['p95']:>8} {lat['p99']:>8}")
    print(f"throughput unordered/ordered: {results['throughput_ratio_unordered_to_ordered']}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
