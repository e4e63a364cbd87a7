"""Peer benchmark (not a test): the Podium side of "whole deployments" against Temporal (issue 15.1).

R deployments of ``testdata/architecture.yaml`` driven through the public contract: R ``start``
commands published at once to the commands topic, served by **one** ``podium serve`` process
(a real subprocess, ``tests.integration.conftest.DaemonProcess``) with the stand-in backend
(every effect succeeds at once, the peer of Temporal's no-op activities). The engine runs with
the **shipped defaults** of ``podium serve`` (effect lease, sweep interval, ack deadline, worker
pools, unordered events: `ENGINE_SETTINGS` lists them); the only departure is
``one_run_per_target=False``, without which the per-target lock would queue R deployments of
one architecture one behind the other. Per pass (`PodiumPasses.one_pass`) it measures

* deployments/s: R / (first start published → last run ended), "ended" being the run
  document's ``updated_at`` of its terminal transition (the engine's clock inside that
  transaction; the driver and the daemon share this machine's clock). The driver learns that
  every run ended from a count aggregation every `POLL_INTERVAL` (0.5 s, see there);
* p50 / p99 latency per deployment: from the driver's clock just before that deployment's
  ``start`` was published to its terminal ``updated_at``. Stricter than Temporal's server
  start → close time: it includes the publish, Pub/Sub delivery and the intake;
* CPU seconds per process over the pass (``/proc``, user + system, as psutil reads them):
  the daemon, the Firestore and Pub/Sub emulators (JVMs, with any children), the driver (this
  process alone); ``cpu_s_engine_total`` = daemon + both emulators, the peer of Temporal's
  server + worker;
* ``complete``: every run ``succeeded`` and `bench.scaleout.verify` holds for this pass's runs
  (applied versions exactly 1..version, no event id applied twice, every effect done).

Each pass has its own run-id prefix and waits for exactly its own runs.

    python -m devtools.emulators run -- python bench/peers/podium_workload.py [--runs 50 200] [--repeat 3]

Standalone it runs, per R, a warm-up pass (not recorded) and ``--repeat`` passes, and writes
``bench/results/peers-podium.json``. ``compare.py`` drives it pass by pass beside Temporal.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from google.cloud import firestore, pubsub_v1  # noqa: E402
from google.cloud.firestore_v1.base_query import FieldFilter  # noqa: E402

from bench.engine import _emulator_pids  # noqa: E402
from bench.peers.pass_stats import median_of, pct  # noqa: E402
from bench.scaleout import TESTDATA, verify, wait_started  # noqa: E402
from daemon.config import Settings  # noqa: E402
from daemon.pubsub import ensure_daemon_plumbing, topic_path  # noqa: E402
from tests.integration.conftest import DaemonProcess  # noqa: E402

RESULTS = REPO / "bench" / "results"
# How often the driver counts this pass's ended runs. Not 0.1 s as Temporal's driver polls: one
# count aggregation costs the Firestore emulator ≈15 ms of CPU (Temporal's count_workflows ≈0.7 ms
# of its server's), which at 10 Hz would charge Podium ≈0.15 CPU-s per second of pass. The
# interval moves no measured time (ends are the runs' own timestamps), only the end of the CPU
# window: up to one interval of a nearly idle engine.
POLL_INTERVAL = 0.5
TERMINAL = ["succeeded", "failed", "cancelled"]
# The engine settings that shape this workload, all left at podium serve's defaults except
# one_run_per_target (recorded in the JSON with their values; a name this tree's Settings lacks is
# left out).
ENGINE_SETTINGS = ("backend", "one_run_per_target", "delivery", "events_ordering", "eager_outcomes",
                   "effect_lease_seconds", "sweep_interval_seconds", "ack_deadline_seconds",
                   "max_delivery_attempts", "max_messages", "effect_workers", "preflight_concurrency",
                   "build_concurrency", "effect_queue_limit")


def proc_cpu_seconds(pid: int, children: bool) -> float:
    """User + system CPU seconds of a live process (all its threads), and of its live descendants
    if ``children``. 0 for a process that is gone."""
    ticks = os.sysconf("SC_CLK_TCK")

    def own(p: int) -> float:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
            return (int(fields[11]) + int(fields[12])) / ticks
        except (OSError, IndexError, ValueError):
            return 0.0

    pids = [pid]
    if children:
        parent_of: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                parent_of.setdefault(ppid, []).append(int(entry.name))
        todo = [pid]
        while todo:
            kids = parent_of.get(todo.pop(), [])
            pids += kids
            todo += kids
    return sum(own(p) for p in pids)


class _PassView:
    """The Firestore client as `bench.scaleout.verify` uses it (``collection``, ``collection_group``),
    narrowed to the runs whose ids start with ``prefix``: verify reads whole collections, which
    would otherwise grow with every earlier pass in the same database."""

    def __init__(self, db: firestore.Client, collection: str, prefix: str) -> None:
        self.db, self.name = db, collection
        self.lo, self.hi = prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)

    def collection(self, name: str) -> Any:
        return (self.db.collection(name).where(filter=FieldFilter("run_id", ">=", self.lo))
                .where(filter=FieldFilter("run_id", "<", self.hi)))

    def collection_group(self, name: str) -> Any:
        # Sub-collections of the pass's runs: their paths sort between the two run paths.
        return (self.db.collection_group(name)
                .where(filter=FieldFilter("__name__", ">=", self.db.document(self.name, self.lo)))
                .where(filter=FieldFilter("__name__", "<", self.db.document(self.name, self.hi))))


class PodiumPasses:
    """One ``podium serve`` (stand-in backend, default engine settings) serving pass after pass.

    Needs the emulators (PUBSUB_EMULATOR_HOST, FIRESTORE_EMULATOR_HOST). Use as a context manager,
    or `start` and `stop`."""

    def __init__(self, timeout: float = 900.0, poll_interval: float = POLL_INTERVAL) -> None:
        unique = uuid.uuid4().hex[:8]
        # The defaults, whatever PODIUM_* this shell exports (the daemon's environment drops them too).
        self.ignored_env = sorted(k for k in os.environ if k.startswith("PODIUM_"))
        saved = {k: os.environ.pop(k) for k in self.ignored_env}
        try:
            self.settings = Settings(
                project=f"podium-peers-{unique[:6]}",  # its own database
                commands_topic=f"cmd-peers-{unique}",
                events_topic=f"evt-peers-{unique}",
                dead_letter_topic=f"dlq-peers-{unique}",
                backend="standin",
                one_run_per_target=False,  # R runs of one architecture at once
                source_root=TESTDATA,
                state_dir=Path("/tmp") / f"podium-peers-{unique}",
            )
        finally:
            os.environ.update(saved)
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.log_path = self.settings.state_dir / "daemon.log"
        self.daemon: DaemonProcess | None = None
        self.passes = 0
        self.yaml_text = (TESTDATA / "architecture.yaml").read_text()

    def engine_settings(self) -> dict[str, Any]:
        s = self.settings.model_dump()
        return {k: s[k] for k in ENGINE_SETTINGS if k in s} | {
            "log_format": "json (to a file, INFO)", "replicas": 1,
            "driver_poll_interval_seconds": self.poll_interval, "podium_env_ignored": self.ignored_env}

    def start(self) -> PodiumPasses:
        if not os.environ.get("PUBSUB_EMULATOR_HOST") or not os.environ.get("FIRESTORE_EMULATOR_HOST"):
            raise SystemExit("run under the emulators: python -m devtools.emulators run -- python ...")
        ensure_daemon_plumbing(self.settings)
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        self.db = firestore.Client(project=self.settings.project)
        self.publisher = pubsub_v1.PublisherClient()
        self.topic = topic_path(self.settings.project, self.settings.commands_topic)
        self.daemon = DaemonProcess(self.settings, self.log_path).start()
        wait_started([self.daemon])
        assert self.daemon.proc is not None
        emulators = _emulator_pids()
        missing = {"pubsub", "firestore"} - set(emulators)
        if missing:
            raise SystemExit(f"emulator process(es) not found by port: {sorted(missing)}")
        self.pids = {"daemon": self.daemon.proc.pid, "firestore": emulators["firestore"],
                     "pubsub": emulators["pubsub"], "driver": os.getpid()}
        return self

    def stop(self) -> None:
        if self.daemon is not None and self.daemon.alive:
            try:
                self.daemon.terminate(timeout=15)
            except Exception:  # noqa: BLE001 - then kill it
                self.daemon.kill()

    def __enter__(self) -> PodiumPasses:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def cpu(self) -> dict[str, float]:
        return {name: proc_cpu_seconds(pid, children=name != "driver") for name, pid in self.pids.items()}

    def ended(self, prefix: str) -> int:
        """How many of this pass's runs have ended (one count aggregation)."""
        query = _PassView(self.db, self.settings.collection, prefix).collection(self.settings.collection)
        return int(query.where(filter=FieldFilter("status", "in", TERMINAL)).count().get()[0][0].value)

    def one_pass(self, runs: int) -> dict[str, Any]:
        """R deployments published at once; returns the same keys as temporal_workload's one_pass
        (``cpu_s_engine_total`` in place of its ``cpu_s_server_worker``) plus Podium's checks."""
        if self.daemon is None or not self.daemon.alive:
            raise RuntimeError(f"the daemon is not running; see {self.log_path}")
        self.passes += 1
        prefix = f"peers-{self.passes:03d}-{uuid.uuid4().hex[:6]}-"
        run_ids = [f"{prefix}{i:04d}" for i in range(runs)]
        before = self.cpu()
        published: dict[str, float] = {}
        futures = []
        for run_id in run_ids:  # the payload of bench/scaleout.py publish_starts, each timed
            data = json.dumps({"command": "start", "run_id": run_id, "architecture_yaml": self.yaml_text,
                               "source_root": str(TESTDATA)}).encode()
            published[run_id] = time.time()
            futures.append(self.publisher.publish(self.topic, data))
        for f in futures:
            f.result(timeout=60)
        deadline = time.monotonic() + self.timeout
        ended = polls = 0
        while time.monotonic() < deadline:
            ended, polls = self.ended(prefix), polls + 1
            if ended >= runs:
                break
            time.sleep(self.poll_interval)
        after = self.cpu()
        cpu = {name: round(after[name] - before[name], 3) for name in self.pids}
        view = _PassView(self.db, self.settings.collection, prefix)
        docs = {d.id: d.to_dict() or {} for d in
                view.collection(self.settings.collection).select(["status", "updated_at"]).stream()}
        ends = {r: docs[r]["updated_at"].timestamp() for r in run_ids
                if docs.get(r, {}).get("status") in TERMINAL}
        latencies = [ends[r] - published[r] for r in ends]
        first = min(published.values())
        seconds = (max(ends.values()) - first) if ends else time.time() - first
        check = verify(view, self.settings, run_ids)  # type: ignore[arg-type]
        succeeded = sum(1 for r in run_ids if docs.get(r, {}).get("status") == "succeeded")
        return {
            "runs": runs,
            "transitions_per_run": check["transitions_per_run"],
            "complete": ended >= runs and succeeded == runs and bool(check["ok"]),
            "seconds": round(seconds, 3),
            "deployments_per_second": round(len(ends) / seconds, 2),  # = R / seconds when complete
            "p50_ms": round(pct(latencies, 0.50) * 1000, 1) if latencies else None,
            "p99_ms": round(pct(latencies, 0.99) * 1000, 1) if latencies else None,
            "cpu_s": cpu,
            "cpu_s_engine_total": round(cpu["daemon"] + cpu["firestore"] + cpu["pubsub"], 3),
            "run_id_prefix": prefix,
            "completion_polls": polls,
            "succeeded": succeeded,
            "check_ok": bool(check["ok"]),
            "audit_records": sum(check["audit_outcomes"].values()),  # this pass's only (scoped)
            "problems": check["problems"][:10],
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, nargs="+", default=[50, 200], help="concurrent deployments (R)")
    parser.add_argument("--repeat", type=int, default=3, help="recorded passes per R (medians over them)")
    parser.add_argument("--timeout", type=float, default=900.0, help="per pass, seconds")
    parser.add_argument("--poll-interval", type=float, default=POLL_INTERVAL,
                        help="seconds between the driver's counts of ended runs (see POLL_INTERVAL)")
    parser.add_argument("--output", default=str(RESULTS / "peers-podium.json"))
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with PodiumPasses(args.timeout, args.poll_interval) as side:
        print(f"podium serve (stand-in backend, default engine settings), log {side.log_path}; "
              f"R={args.runs}, {args.repeat} passes each", file=sys.stderr, flush=True)
        for runs in args.runs:
            warm = side.one_pass(runs)
            print(f"  R={runs}: warm-up {warm['deployments_per_second']}/s", file=sys.stderr, flush=True)
            passes = []
            for i in range(args.repeat):
                row = side.one_pass(runs)
                print(f"  R={runs} pass {i + 1}/{args.repeat}: {row['deployments_per_second']}/s "
                      f"p50 {row['p50_ms']} ms p99 {row['p99_ms']} ms cpu {row['cpu_s']}"
                      f"{'' if row['complete'] else ' INCOMPLETE'}", file=sys.stderr, flush=True)
                passes.append(row)
            results[str(runs)] = {"median": median_of(passes), "passes": passes, "warmup": warm}
        settings = side.engine_settings()
    out = {"when": datetime.now(UTC).isoformat(), "cpus": os.cpu_count(), "peer": "podium",
           "engine_settings": settings,
           "workload": {"graph": "testdata/architecture.yaml", "repeat": args.repeat, "warmup": "one pass per R"},
           "results": results}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.output}", file=sys.stderr)
    return 0 if all(r["median"]["complete"] and r["warmup"]["complete"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
