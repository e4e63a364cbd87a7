"""Peer benchmark (not a test): Podium and Temporal side by side on the same workload (issue 15.1).

R deployments of ``testdata/architecture.yaml``'s graph, every step instant, on each side:

* **Podium** (`podium_workload.PodiumPasses`): one ``podium serve`` with the stand-in backend
  and the shipped engine defaults (only ``one_run_per_target`` off), R ``start`` commands
  published to the commands topic, on the Pub/Sub and Firestore emulators;
* **Temporal** (``temporal_workload.py --serve-passes``, in its own venv): the same 18-step graph
  as a workflow of no-op activities on ``temporal server start-dev`` with one Python worker.

Both sides are started once. For each R: one warm-up pass per side (not in the medians), then
``--repeat`` rounds, each one Podium pass and one Temporal pass, alternating which goes first;
while one side runs, the other is idle. What each figure measures:

* deployments/s: R / (first start → last deployment ended);
* p50 / p99 latency per deployment. Podium: the driver's clock just before the ``start`` is
  published → the run's terminal ``updated_at`` (includes the publish, Pub/Sub delivery and the
  intake). Temporal: the server's start → close time of the workflow, which begins only once
  the server has accepted the start. Podium's figure is the stricter one;
* CPU seconds per process over the pass (user + system). "engine" CPU is what serves the
  deployments: Podium's daemon + Firestore emulator + Pub/Sub emulator, Temporal's server +
  worker; the drivers are shown apart. The emulators are not production Firestore and Pub/Sub
  (docs/performance.md), so Podium's CPU includes two JVMs standing in for managed services.

Ratios are Podium / Temporal for throughput (> 1: Podium faster), Temporal / Podium for
latency (> 1: Podium's lower) and Podium / Temporal for CPU per deployment (< 1: Podium
cheaper), from the medians.

    python -m devtools.emulators run -- python bench/peers/compare.py [--runs 50 200] [--repeat 3]

Needs the peer venv (``make bench-peers`` creates it). Writes ``bench/results/peers.json``
(medians, every pass, versions, settings, the plan); exits 1 if any pass was incomplete.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(HERE), str(REPO)]

from pass_stats import median_of  # noqa: E402
from plan_of_testdata import testdata_plan  # noqa: E402
from podium_workload import POLL_INTERVAL, RESULTS, PodiumPasses, proc_cpu_seconds  # noqa: E402

PEERS_PYTHON = "/tmp/podium-peers-venv/bin/python"


class TemporalPasses:
    """``temporal_workload.py --serve-passes`` in the peer venv: its server and worker, started once."""

    def __init__(self, python: str, plan_file: Path) -> None:
        self.cmd = [python, str(HERE / "temporal_workload.py"), "--serve-passes", "--plan", str(plan_file)]
        self.proc: subprocess.Popen[str] | None = None
        self.ready: dict[str, Any] = {}

    def _line(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the Temporal pass server ended (exit {self.proc.wait(10)}); see its stderr above")
        return dict(json.loads(line))

    def __enter__(self) -> TemporalPasses:
        if not Path(self.cmd[0]).exists():
            raise SystemExit(f"no peer venv at {self.cmd[0]}: run `make bench-peers` once (or see bench/peers/README.md)")
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
        self.ready = self._line()
        return self

    def one_pass(self, runs: int, warmup: bool = False) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(f"{'warmup ' if warmup else ''}{runs}\n")
        self.proc.stdin.flush()
        return self._line()

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        if self.proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait(10)


def summary(passes: list[dict[str, Any]]) -> dict[str, Any]:
    """The medians of pass_stats.median_of (both sides' passes have its keys), and CPU per deployment."""
    return median_of(passes) | {
        "cpu_ms_per_deployment": round(statistics.median(p["cpu_ms_per_deployment"] for p in passes), 1)}


def ratios(podium: dict[str, Any], temporal: dict[str, Any]) -> dict[str, float | None]:
    def div(a: float, b: float) -> float | None:
        return round(a / b, 2) if b else None

    return {
        "throughput_podium_over_temporal": div(podium["deployments_per_second"], temporal["deployments_per_second"]),
        "p50_temporal_over_podium": div(temporal["p50_ms"], podium["p50_ms"]),
        "p99_temporal_over_podium": div(temporal["p99_ms"], podium["p99_ms"]),
        "cpu_per_deployment_podium_over_temporal": div(podium["cpu_ms_per_deployment"],
                                                       temporal["cpu_ms_per_deployment"]),
    }


def print_table(results: dict[str, Any]) -> None:
    head = (f"{'R':>4}  {'side':9} {'deploy/s':>8} {'p50 ms':>8} {'p99 ms':>8}  {'CPU-s per process':58} "
            f"{'engine CPU-s':>13} {'CPU-ms/deploy':>14}")
    print(head)
    print("-" * len(head))
    for runs, r in results.items():
        for side in ("podium", "temporal"):
            m = r[side]["median"]
            procs = "  ".join(f"{k} {v:.2f}" for k, v in m["cpu_s"].items())
            print(f"{runs:>4}  {side:9} {m['deployments_per_second']:>8} {m['p50_ms']:>8} {m['p99_ms']:>8}  "
                  f"{procs:58} {m['cpu_s_engine_total']:>13} {m['cpu_ms_per_deployment']:>14}"
                  f"{'' if m['complete'] else '  INCOMPLETE'}")
        q = {k: "n/a" if v is None else f"{v}x" for k, v in r["ratios"].items()}
        print(f"{'':4}  ratios: throughput Podium/Temporal {q['throughput_podium_over_temporal']}; "
              f"p50 Temporal/Podium {q['p50_temporal_over_podium']}; "
              f"p99 Temporal/Podium {q['p99_temporal_over_podium']}; "
              f"CPU per deployment Podium/Temporal {q['cpu_per_deployment_podium_over_temporal']}")
    print(f"({r['podium']['median']['passes']} passes per side and R, medians; engine CPU = Podium's daemon + "
          f"firestore + pubsub emulators, Temporal's server + worker)")


def versions(temporal: dict[str, Any]) -> dict[str, Any]:
    from importlib.metadata import version

    from devtools.emulator_jars import find_emulators

    def git(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], capture_output=True, text=True, cwd=REPO).stdout.strip()

    try:
        jars = find_emulators()
        emulators: dict[str, str] = {"pubsub": jars.pubsub.name, "firestore": str(jars.firestore)}
    except Exception as exc:  # noqa: BLE001 - only informative
        emulators = {"error": str(exc)}
    return {"podium": {"package": version("podium"), "commit": git("rev-parse", "HEAD"),
                       "work_tree_dirty": bool(git("status", "--porcelain"))},
            "python": platform.python_version(), "emulators": emulators, "temporal": temporal}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, nargs="+", default=[50, 200], help="concurrent deployments (R)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per R: one pass of each side per round")
    parser.add_argument("--initial-warmup", type=int, default=None,
                        help="deployments of the one warm-up pass per side before the first R (default: the "
                             "largest R; 0: none)")
    parser.add_argument("--timeout", type=float, default=900.0, help="per Podium pass, seconds")
    parser.add_argument("--poll-interval", type=float, default=POLL_INTERVAL,
                        help="seconds between the Podium driver's counts of ended runs (podium_workload.POLL_INTERVAL)")
    parser.add_argument("--plan", help="plan JSON (default: plan_of_testdata.testdata_plan(), computed here)")
    parser.add_argument("--peers-python", default=PEERS_PYTHON, help="the peer venv's python (temporalio, psutil)")
    parser.add_argument("--output", default=str(RESULTS / "peers.json"))
    args = parser.parse_args()
    if args.initial_warmup is None:
        args.initial_warmup = max(args.runs)
    if not os.environ.get("PUBSUB_EMULATOR_HOST"):
        print("run under the emulators: python -m devtools.emulators run -- python bench/peers/compare.py",
              file=sys.stderr)
        return 2

    plan = json.loads(Path(args.plan).read_text()) if args.plan else testdata_plan()
    with tempfile.TemporaryDirectory(prefix="podium-peers-") as tmp:
        plan_file = Path(args.plan) if args.plan else Path(tmp) / "plan.json"
        if not args.plan:
            plan_file.write_text(json.dumps(plan))
        results: dict[str, Any] = {}
        with PodiumPasses(args.timeout, args.poll_interval) as podium, TemporalPasses(args.peers_python, plan_file) as temporal:
            print(f"podium: one `podium serve`, log {podium.log_path}; temporal: {temporal.ready['temporal']['cli']}; "
                  f"R={args.runs}, warm-up + {args.repeat} alternating rounds each", file=sys.stderr, flush=True)

            def idle_cpu(side: str) -> float:
                """CPU seconds so far of the side that is not running (to see what it costs meanwhile)."""
                if side == "podium":
                    return sum(v for k, v in podium.cpu().items() if k != "driver")
                assert temporal.proc is not None
                return proc_cpu_seconds(temporal.proc.pid, children=True)  # server, worker, its driver

            def one_pass(side: str, runs: int, warmup: bool = False) -> dict[str, Any]:
                other = "temporal" if side == "podium" else "podium"
                idle_before = idle_cpu(other)
                row = podium.one_pass(runs) if side == "podium" else temporal.one_pass(runs, warmup=warmup)
                row["cpu_ms_per_deployment"] = round(row["cpu_s_engine_total"] * 1000 / runs, 1)
                row["idle_side_cpu_s"] = {other: round(idle_cpu(other) - idle_before, 3)}
                return row

            # The emulators are JVMs: their first thousands of transactions run before the JIT
            # has compiled them, which a managed service never shows. One pass of the largest R
            # per side first (Temporal's server is Go; it gets the same pass), then per-R warm-ups.
            if args.initial_warmup:
                first = {side: one_pass(side, args.initial_warmup, warmup=True) for side in ("podium", "temporal")}
                print("  initial warm-up: " + ", ".join(f"{n} {w['deployments_per_second']}/s" for n, w in first.items()),
                      file=sys.stderr, flush=True)
            for runs in args.runs:
                warm = {side: one_pass(side, runs, warmup=True) for side in ("podium", "temporal")}
                print(f"  R={runs} warm-up: " + ", ".join(f"{n} {w['deployments_per_second']}/s" for n, w in warm.items()),
                      file=sys.stderr, flush=True)
                passes: dict[str, list[dict[str, Any]]] = {"podium": [], "temporal": []}
                for i in range(args.repeat):
                    order = ["podium", "temporal"] if i % 2 == 0 else ["temporal", "podium"]
                    for position, name in enumerate(order, 1):
                        row = one_pass(name, runs)
                        row.update({"round": i + 1, "position_in_round": position})
                        passes[name].append(row)
                        print(f"  R={runs} round {i + 1}/{args.repeat} {name}: {row['deployments_per_second']}/s "
                              f"p50 {row['p50_ms']} ms p99 {row['p99_ms']} ms cpu {row['cpu_s']}, idle {row['idle_side_cpu_s']}"
                              f"{'' if row['complete'] else ' INCOMPLETE'}", file=sys.stderr, flush=True)
                entry: dict[str, Any] = {name: {"median": summary(ps), "passes": ps, "warmup": warm[name]}
                                         for name, ps in passes.items()}
                entry["ratios"] = ratios(entry["podium"]["median"], entry["temporal"]["median"])
                results[str(runs)] = entry
            engine_settings = podium.engine_settings()
            temporal_ready = temporal.ready

    print_table(results)
    complete = all(p["complete"] for r in results.values() for side in ("podium", "temporal")
                   for p in [*r[side]["passes"], r[side]["warmup"]])
    out = {
        "when": datetime.now(UTC).isoformat(),
        "cpus": os.cpu_count(),
        "complete": complete,
        "versions": versions(temporal_ready["temporal"]),
        "settings": {
            "podium": engine_settings,
            "temporal": temporal_ready["temporal"],
            "runs": args.runs, "repeat": args.repeat,
            "initial_warmup": args.initial_warmup,
            "method": "both sides started once; one warm-up pass of initial_warmup deployments per side, then "
                      "per R one warm-up pass per side (not in the medians), then "
                      "`repeat` rounds of one pass per side, alternating which goes first; the idle side waits",
            "latency": {"podium": "driver clock before publishing the start -> run's terminal updated_at",
                        "temporal": "server start time -> close time of the workflow"},
            "engine_cpu": {"podium": "daemon + firestore emulator + pubsub emulator", "temporal": "server + worker"},
            "idle_side_cpu_s": "per pass: CPU seconds the other, idle side used meanwhile (Podium: daemon + "
                               "emulators; Temporal: server + worker + its pass server)",
        },
        "workload": {"graph": "testdata/architecture.yaml", "plan": plan,
                     "temporal_activities_per_run": temporal_ready["steps_per_run"],
                     "podium": "stand-in backend (every effect succeeds at once)",
                     "temporal": "no-op activities"},
        "results": results,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.output}", file=sys.stderr)
    if not complete:
        print("INCOMPLETE: at least one pass did not finish every deployment or failed its checks", file=sys.stderr)
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
