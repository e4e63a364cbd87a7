"""Engine benchmark (not a test): R runs × S events through the real emulators.

Measures, for Podium's engine (Pub/Sub intake → one Firestore transaction through the FSM →
audit record → ack) and for a bare loop with no framework (one transaction + ack per event:
the floor of this stack), in the same process and run:

* events applied per second,
* publish→commit latency p50/p95/p99,
* process CPU time per event (all threads, this process only: the emulators' JVMs excluded),
* peak RSS, and RSS after 100 and after N finished runs (memory must not grow with runs).

Both emulators are JVMs that get faster as they warm up, so a short unmeasured pass of both
sides runs first, and with ``--repeat N`` the two sides alternate which goes first and the
table shows the median of N passes (every pass is kept in the JSON).

Each run is created directly in ``deploying_services`` with S services, so every event is a
``deploy.succeeded`` the machine really applies (S-1 recorded items, then the fan-in join).
Effects are not executed here: this measures the message path only.

    python -m devtools.emulators run -- python bench/engine.py [--runs 50 --events 20] [--repeat 3]
        [--memory-runs 5000 | --memory-runs 0 (skip the memory check)] [--output FILE]

Prints a table and writes ``bench/results/engine.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import resource
import statistics
import sys
import threading
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from google.cloud import firestore, pubsub_v1  # noqa: E402

from daemon.config import Settings  # noqa: E402
from daemon.engine import Engine, Inbound, Verdict  # noqa: E402
from daemon.intake import PullIntake  # noqa: E402
from daemon.pubsub import ensure_daemon_plumbing, topic_path  # noqa: E402
from daemon.store import RunStore, run_fields  # noqa: E402
from machines.messages import RunState  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _emulator_pids() -> dict[str, int]:
    """The two emulator JVMs this run talks to, found by the ports in their command lines."""
    ports = {name: os.environ.get(var, "").rpartition(":")[2]
             for name, var in (("pubsub", "PUBSUB_EMULATOR_HOST"), ("firestore", "FIRESTORE_EMULATOR_HOST"))}
    found: dict[str, int] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        for name, port in ports.items():
            if port and "java" in cmd and f"--port={port}" in cmd:
                found[name] = int(proc.name)
    return found


def emulator_cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) used so far by each emulator JVM (empty if not found)."""
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for name, pid in _emulator_pids().items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            out[name] = (int(fields[11]) + int(fields[12])) / ticks
        except (OSError, IndexError, ValueError):
            continue
    return out


def cpu_split(before: dict[str, float], after: dict[str, float], events: int) -> dict[str, float]:
    return {f"{k}_cpu_ms_per_event": round((after[k] - before[k]) * 1000 / max(events, 1), 2)
            for k in after if k in before}


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0}
    qs = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": round(qs[49] * 1000, 2), "p95": round(qs[94] * 1000, 2), "p99": round(qs[98] * 1000, 2)}


def seed_runs(db: firestore.Client, collection: str, prefix: str, runs: int, services: int) -> list[str]:
    """Create R runs waiting in deploying_services for S deploy events each."""
    names = [f"svc{i:03d}" for i in range(services)]
    plan = {"director": "director", "services": names, "all_services": ["director", *names],
            "dataflows": ["df"], "app_dataflows": ["df"]}
    ids = [f"{prefix}-{i:05d}" for i in range(runs)]
    now = datetime.now(UTC)
    batch = db.batch()
    for n, run_id in enumerate(ids, start=1):
        run = RunState(run_id=run_id, state="deploying_services", version=1, plan=plan,
                       progress={"deploy": {s: "pending" for s in names}}, created_at=now, updated_at=now)
        batch.set(db.collection(collection).document(run_id),
                  {"run_id": run_id, "created_at": now, "plan": plan, **run_fields(run)})
        if n % 400 == 0:
            batch.commit()
            batch = db.batch()
    batch.commit()
    return ids


# At most this many publishes in flight. The client commits every ordering key's batch on a
# thread of its own, so an unbounded burst over R keys starts R threads at once (10,000 for the
# memory check): hundreds of runnable threads on 2 cores then slow everything, both sides alike.
PUBLISH_INFLIGHT = 200


def publish_events(settings: Settings, run_ids: list[str], services: int, sent: dict[str, float]) -> float:
    ordered = settings.events_ordering  # PODIUM_EVENTS_ORDERING=1 measures the ordered subscription
    publisher = pubsub_v1.PublisherClient(
        publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=ordered)
    )
    key = (lambda run_id: {"ordering_key": run_id}) if ordered else (lambda run_id: {})
    topic = topic_path(settings.project, settings.events_topic)
    inflight: deque[Any] = deque()
    began = time.monotonic()
    for i in range(services):
        for run_id in run_ids:
            event_id = f"bench~{run_id}~{i}"
            body = {"run_id": run_id, "event_id": event_id, "type": "deploy.succeeded",
                    "item": f"svc{i:03d}", "data": {"url": f"http://{i}"}}
            while len(inflight) >= PUBLISH_INFLIGHT:
                inflight.popleft().result(timeout=60)
            sent[event_id] = time.monotonic()
            inflight.append(publisher.publish(topic, json.dumps(body).encode(), **key(run_id), run_id=run_id))
    for f in inflight:
        f.result(timeout=60)
    publisher.stop()
    return time.monotonic() - began


class Recorder:
    """Commit times by event id, recorded right after each transaction returns."""

    def __init__(self, total: int) -> None:
        self.committed: dict[str, float] = {}
        self.lock = threading.Lock()
        self.total = total
        self.done = threading.Event()

    def mark(self, event_id: str) -> None:
        with self.lock:
            self.committed.setdefault(event_id, time.monotonic())
            if len(self.committed) >= self.total:
                self.done.set()


def bench_podium(settings: Settings, runs: int, services: int, label: str) -> dict[str, Any]:
    if runs * services <= 0:
        raise ValueError("bench_podium needs at least one run and one event per run")
    db = firestore.Client(project=settings.project)
    store = RunStore(db, settings.collection, owner="bench", lease_seconds=30)
    ids = seed_runs(db, settings.collection, f"{label}-{uuid.uuid4().hex[:4]}", runs, services)
    recorder = Recorder(runs * services)
    engine = Engine(settings, store)
    original = engine.on_event

    def on_event(msg: Inbound) -> Verdict:
        verdict = original(msg)
        if verdict is Verdict.ACK:
            recorder.mark(json.loads(msg.data)["event_id"])
        return verdict

    engine.on_event = on_event  # type: ignore[method-assign]
    intake = PullIntake(settings, engine)
    intake.start()
    sent: dict[str, float] = {}
    began, cpu_began, emu_began = time.monotonic(), time.process_time(), emulator_cpu_seconds()
    publish_events(settings, ids, services, sent)
    finished = recorder.done.wait(600)
    elapsed, cpu = time.monotonic() - began, time.process_time() - cpu_began
    emulators = cpu_split(emu_began, emulator_cpu_seconds(), len(recorder.committed))
    intake.stop()
    db.close()
    latencies = [recorder.committed[k] - sent[k] for k in recorder.committed if k in sent]
    return {
        "engine": "podium",
        "runs": runs,
        "events_per_run": services,
        "events": len(recorder.committed),
        "complete": finished,
        "seconds": round(elapsed, 2),
        "events_per_second": round(len(recorder.committed) / elapsed, 1),
        "cpu_ms_per_event": round(cpu * 1000 / max(len(recorder.committed), 1), 2),
        **emulators,
        "latency_ms": percentiles(latencies),
        "rss_mb": round(rss_mb(), 1),
    }


def bench_floor(settings: Settings, runs: int, services: int, label: str) -> dict[str, Any]:
    """The bare loop: streaming pull, one transaction (read run, write run + record), ack."""
    db = firestore.Client(project=settings.project)
    ids = seed_runs(db, settings.collection, f"{label}-{uuid.uuid4().hex[:4]}", runs, services)
    recorder = Recorder(runs * services)
    runs_ref = db.collection(settings.collection)

    def apply(body: dict[str, Any], message_id: str) -> None:
        run_ref = runs_ref.document(body["run_id"])
        event_ref = run_ref.collection("events").document(body["event_id"])

        @firestore.transactional
        def tx(transaction: firestore.Transaction) -> None:
            snaps = {s.reference.path: s for s in transaction.get_all([run_ref, event_ref])}
            if snaps[event_ref.path].exists:
                return
            version = snaps[run_ref.path].get("version")
            transaction.update(run_ref, {f"progress.deploy.{body['item']}": "succeeded", "version": version + 1})
            transaction.set(event_ref, {"type": body["type"], "message_id": message_id})

        tx(db.transaction())

    def callback(message: Any) -> None:
        try:
            body = json.loads(message.data)
            apply(body, message.message_id)
            message.ack()
            recorder.mark(body["event_id"])
        except Exception:  # noqa: BLE001
            message.nack()

    subscriber = pubsub_v1.SubscriberClient()
    from google.cloud.pubsub_v1.subscriber.scheduler import ThreadScheduler

    future = subscriber.subscribe(
        f"projects/{settings.project}/subscriptions/{settings.events_subscription}",
        callback,
        flow_control=pubsub_v1.types.FlowControl(max_messages=settings.max_messages),
        scheduler=ThreadScheduler(ThreadPoolExecutor(max_workers=16)),
    )
    sent: dict[str, float] = {}
    began, cpu_began, emu_began = time.monotonic(), time.process_time(), emulator_cpu_seconds()
    publish_events(settings, ids, services, sent)
    finished = recorder.done.wait(600)
    elapsed, cpu = time.monotonic() - began, time.process_time() - cpu_began
    emulators = cpu_split(emu_began, emulator_cpu_seconds(), len(recorder.committed))
    future.cancel()
    with contextlib.suppress(Exception):  # cancelled: wait for the stream (and its acks) to close
        future.result(timeout=5)
    subscriber.close()
    db.close()
    latencies = [recorder.committed[k] - sent[k] for k in recorder.committed if k in sent]
    return {
        "engine": "floor",
        "runs": runs,
        "events_per_run": services,
        "events": len(recorder.committed),
        "complete": finished,
        "seconds": round(elapsed, 2),
        "events_per_second": round(len(recorder.committed) / elapsed, 1),
        "cpu_ms_per_event": round(cpu * 1000 / max(len(recorder.committed), 1), 2),
        **emulators,
        "latency_ms": percentiles(latencies),
    }


def settings_for(tag: str, **overrides: Any) -> Settings:
    suffix = f"{tag}-{uuid.uuid4().hex[:6]}"
    s = Settings(project=os.environ.get("PODIUM_PROJECT", "podium-bench"), commands_topic=f"bcmd-{suffix}",
                 events_topic=f"bevt-{suffix}", dead_letter_topic=f"bdlq-{suffix}", collection=f"bench-{suffix}",
                 backend="standin", one_run_per_target=False, **overrides)  # many runs of one architecture
    ensure_daemon_plumbing(s)
    return s


def warm_up(runs: int = 20, events: int = 5) -> None:
    """An unmeasured pass of both sides: the emulators' JVMs are much slower while cold."""
    bench_floor(settings_for("warm"), runs, events, "warm")
    bench_podium(settings_for("warm"), runs, events, "warm")


def median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The pass with the median throughput (its latencies and CPU belong to that same pass)."""
    ranked = sorted(rows, key=lambda r: r["events_per_second"])
    return ranked[len(ranked) // 2] | {"passes": len(rows)}


def compare(runs: int, events: int, repeat: int) -> dict[str, Any]:
    """Floor and podium, ``repeat`` passes each, alternating which side goes first."""
    passes: dict[str, list[dict[str, Any]]] = {"floor": [], "podium": []}
    for i in range(repeat):
        order = ("floor", "podium") if i % 2 == 0 else ("podium", "floor")
        for side in order:
            fn = bench_floor if side == "floor" else bench_podium
            passes[side].append(fn(settings_for(side), runs, events, side))
    floor, podium = median_row(passes["floor"]), median_row(passes["podium"])
    return {
        "floor": floor,
        "podium": podium,
        "all_passes": passes,
        "throughput_ratio": round(podium["events_per_second"] / max(floor["events_per_second"], 1e-9), 3),
        "cpu_ratio": round(podium["cpu_ms_per_event"] / max(floor["cpu_ms_per_event"], 1e-9), 3),
    }


def memory_check(memory_runs: int, chunk: int = 1000) -> dict[str, Any]:
    """Finished runs must not grow the process. Same subscription, S=2, runs in chunks.

    RSS is read after 100 runs and after every further ``chunk``: a leak shows as a slope
    over the second half (after the allocator's first high-water mark), not as one step.
    """
    mem_settings = settings_for("mem")
    first = bench_podium(mem_settings, 100, 2, "mem100")
    gc.collect()
    curve = [(100, round(rss_mb(), 1))]
    done, rows = 100, [first]
    while done < memory_runs:
        n = min(chunk, memory_runs - done)
        rows.append(bench_podium(mem_settings, n, 2, f"mem{done}"))
        done += n
        gc.collect()
        curve.append((done, round(rss_mb(), 1)))
    half = [p for p in curve if p[0] >= memory_runs / 2]
    slope = (half[-1][1] - half[0][1]) / max(half[-1][0] - half[0][0], 1) * 1000 if len(half) > 1 else 0.0
    return {"rss_mb_after_100_runs": curve[0][1], f"rss_mb_after_{memory_runs}_runs": curve[-1][1],
            "runs": memory_runs, "rss_mb_after_all_runs": curve[-1][1], "rss_curve": curve,
            "mb_per_1000_runs_second_half": round(slope, 2), "peak_rss_mb": round(peak_rss_mb(), 1),
            "events_per_second_at_scale": round(statistics.median(r["events_per_second"] for r in rows[1:]), 1)
            if len(rows) > 1 else first["events_per_second"],
            "complete": all(r["complete"] for r in rows)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=1, help="passes per side; the table shows the median")
    parser.add_argument("--memory-runs", type=int, default=5000,
                        help="finished runs for the memory check (0: skip it)")
    parser.add_argument("--output", default=str(RESULTS / "engine.json"))
    args = parser.parse_args()
    if not os.environ.get("PUBSUB_EMULATOR_HOST"):
        print("run under the emulators: python -m devtools.emulators run -- python bench/engine.py", file=sys.stderr)
        return 2
    import logging

    from daemon import logs

    logs.configure("console", level=logging.WARNING)
    results: dict[str, Any] = {"when": datetime.now(UTC).isoformat(), "cpus": os.cpu_count(),
                               "workload": {"runs": args.runs, "events_per_run": args.events, "repeat": args.repeat,
                                            "events_ordering": Settings().events_ordering}}
    warm_up()
    results |= compare(args.runs, args.events, max(args.repeat, 1))
    if args.memory_runs > 100:
        results["memory"] = memory_check(args.memory_runs)

    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"R={args.runs} x S={args.events}, median of {max(args.repeat, 1)} pass(es)")
    print(f"{'':10} {'events/s':>10} {'CPU ms/ev':>10} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}"
          f"   emulators' CPU ms/ev: pubsub, firestore")
    for row in (results["floor"], results["podium"]):
        lat = row["latency_ms"]
        print(f"{row['engine']:10} {row['events_per_second']:>10} {row['cpu_ms_per_event']:>10} "
              f"{lat['p50']:>8} {lat['p95']:>8} {lat['p99']:>8}   "
              f"{row.get('pubsub_cpu_ms_per_event', '?')}, {row.get('firestore_cpu_ms_per_event', '?')}")
    print(f"throughput ratio podium/floor: {results['throughput_ratio']}; CPU ratio: {results['cpu_ratio']}")
    if "memory" in results:
        mem = results["memory"]
        print(f"RSS after 100 runs: {mem['rss_mb_after_100_runs']} MB; after {args.memory_runs} runs: "
              f"{mem['rss_mb_after_all_runs']} MB (peak {mem['peak_rss_mb']} MB; "
              f"{mem['mb_per_1000_runs_second_half']} MB per 1000 runs over the second half)")
        print("  curve (runs, MB): " + " ".join(f"{n}:{v}" for n, v in mem["rss_curve"]))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
