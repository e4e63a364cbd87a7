"""Scaling benchmark (not a test): throughput and publish→commit latency as concurrent runs grow.

R concurrent runs (default 10, 100, 1000) × S events each (default 5), through the engine
benchmark's own functions (``bench/engine.py``): Podium's message path and the bare floor loop,
``--repeat`` passes each (alternating which side goes first), median pass reported. All R×S
events are published at once, so the latency is publish→commit under that burst: it includes
the time an event waits in the subscription behind the others.

    python -m devtools.emulators run -- python bench/scaling.py [--runs 10,100,1000] [--events 5] [--repeat 3]

Writes ``bench/results/scaling.json`` and ``docs/scaling.png``.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.engine import RESULTS, compare, warm_up  # noqa: E402
from daemon import logs  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def idle_latency(events: int = 40) -> dict[str, Any]:
    """Publish→commit of one event at a time on an idle engine (no queue in front of it)."""
    import json as _json
    import threading
    import time
    import uuid

    from google.cloud import firestore, pubsub_v1

    from bench.engine import percentiles, seed_runs, settings_for
    from daemon.engine import Engine, Inbound, Verdict
    from daemon.intake import PullIntake
    from daemon.pubsub import topic_path
    from daemon.store import RunStore

    settings = settings_for("idle")
    db = firestore.Client(project=settings.project)
    ids = seed_runs(db, settings.collection, f"idle-{uuid.uuid4().hex[:4]}", events, 1)
    engine = Engine(settings, RunStore(db, settings.collection, owner="bench", lease_seconds=30))
    committed: dict[str, float] = {}
    arrived = threading.Condition()
    original = engine.on_event

    def on_event(msg: Inbound) -> Verdict:
        verdict = original(msg)
        with arrived:
            committed[_json.loads(msg.data)["event_id"]] = time.monotonic()
            arrived.notify_all()
        return verdict

    engine.on_event = on_event  # type: ignore[method-assign]
    intake = PullIntake(settings, engine)
    intake.start()
    publisher = pubsub_v1.PublisherClient(
        publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=True))
    topic = topic_path(settings.project, settings.events_topic)
    latencies = []
    for n, run_id in enumerate([ids[0], *ids]):  # the first event only opens the stream: not counted
        event_id = f"idle~{run_id}~{n}"
        body = {"run_id": run_id, "event_id": event_id, "type": "deploy.succeeded", "item": "svc000",
                "data": {"url": "http://0"}}
        sent = time.monotonic()
        publisher.publish(topic, _json.dumps(body).encode(), ordering_key=run_id, run_id=run_id).result(30)
        with arrived:
            arrived.wait_for(lambda eid=event_id: eid in committed, timeout=30)
        if n and event_id in committed:
            latencies.append(committed[event_id] - sent)
        time.sleep(0.05)
    intake.stop()
    publisher.stop()
    db.close()
    return {"events": len(latencies), "latency_ms": percentiles(latencies)}


def plot(rows: list[dict[str, Any]], events: int, path: Path, idle: dict[str, Any] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rs = [r["runs"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for side, style in (("podium", "o-"), ("floor", "s--")):
        left.plot(rs, [r[side]["events_per_second"] for r in rows], style, label=side)
    left.set_xscale("log")
    left.set_xlabel(f"concurrent runs R (× S={events} events each)")
    left.set_ylabel("events applied per second")
    left.set_ylim(bottom=0)
    left.set_title("throughput")
    left.grid(alpha=0.3)
    left.legend()
    for key, style in (("p50", "o-"), ("p95", "^-"), ("p99", "v-")):
        right.plot(rs, [r["podium"]["latency_ms"][key] / 1000 for r in rows], style, label=f"podium {key}")
    right.plot(rs, [r["floor"]["latency_ms"]["p50"] / 1000 for r in rows], "s--", label="floor p50")
    if idle:
        right.axhline(idle["latency_ms"]["p50"] / 1000, color="grey", linestyle=":",
                      label=f"podium p50, one event at a time ({idle['latency_ms']['p50']:.0f} ms)")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel(f"concurrent runs R (× S={events} events each, all published at once)")
    right.set_ylabel("publish → commit (s)")
    right.set_title("latency under the burst")
    right.grid(alpha=0.3, which="both")
    right.legend(fontsize=8)
    fig.suptitle(f"Podium engine vs bare floor loop, {os.cpu_count()} cores, Pub/Sub + Firestore emulators "
                 f"(median of {rows[0]['repeat']} passes)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="10,100,1000", help="comma-separated R values")
    parser.add_argument("--events", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--png", default=str(REPO / "docs" / "scaling.png"), help="'' for none")
    parser.add_argument("--output", default=str(RESULTS / "scaling.json"))
    args = parser.parse_args()
    if not os.environ.get("PUBSUB_EMULATOR_HOST"):
        print("run under the emulators: python -m devtools.emulators run -- python bench/scaling.py", file=sys.stderr)
        return 2
    logs.configure("console", level=logging.WARNING)
    warm_up()
    idle = idle_latency()
    print(f"idle: one event at a time, publish→commit p50 {idle['latency_ms']['p50']} ms "
          f"p95 {idle['latency_ms']['p95']} ms", flush=True)
    rows: list[dict[str, Any]] = []
    for r in [int(x) for x in args.runs.split(",") if x.strip()]:
        res = compare(r, args.events, args.repeat)
        row = {"runs": r, "events_per_run": args.events, "repeat": args.repeat, "floor": res["floor"],
               "podium": res["podium"], "throughput_ratio_to_floor": res["throughput_ratio"],
               "all_passes": res["all_passes"]}
        rows.append(row)
        p = res["podium"]
        print(f"R={r:5} x S={args.events}: podium {p['events_per_second']} ev/s p50 {p['latency_ms']['p50']} ms "
              f"p99 {p['latency_ms']['p99']} ms; floor {res['floor']['events_per_second']} ev/s", flush=True)
    base = rows[0]
    for row in rows:
        for side in ("podium", "floor"):
            row[f"{side}_vs_R{base['runs']}"] = {
                "events_per_second": round(row[side]["events_per_second"] / base[side]["events_per_second"], 2),
                "p50": round(row[side]["latency_ms"]["p50"] / max(base[side]["latency_ms"]["p50"], 1e-9), 2),
                "p99": round(row[side]["latency_ms"]["p99"] / max(base[side]["latency_ms"]["p99"], 1e-9), 2),
            }
    results = {"when": datetime.now(UTC).isoformat(), "cpus": os.cpu_count(), "baseline": f"R={base['runs']}",
               "idle_podium": idle,
               "rows": rows, "complete": all(r["podium"]["complete"] and r["floor"]["complete"] for r in rows)}
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    if args.png:
        plot(rows, args.events, Path(args.png), idle)
    print(f"{'R':>6} {'podium ev/s':>12} {'x R' + str(base['runs']):>7} {'p50 ms':>9} {'p99 ms':>9} "
          f"{'floor ev/s':>11} {'podium/floor':>13}")
    for row in rows:
        p, ratio = row["podium"], row[f"podium_vs_R{base['runs']}"]
        print(f"{row['runs']:>6} {p['events_per_second']:>12} {ratio['events_per_second']:>7} "
              f"{p['latency_ms']['p50']:>9} {p['latency_ms']['p99']:>9} {row['floor']['events_per_second']:>11} "
              f"{row['throughput_ratio_to_floor']:>13}")
    print(f"wrote {out}" + (f" and {args.png}" if args.png else ""))
    return 0 if results["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
