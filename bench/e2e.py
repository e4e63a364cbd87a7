"""End-to-end benchmark (not a test): where ``podium up``'s time goes on the embedded default.

Runs what ``podium up`` runs, in this process: the daemon with the **local backend**
(``daemon.server.Daemon``, as ``cli/up.py`` does) deploying ``testdata/architecture.yaml``,
then ``up``'s own end-to-end check (the publisher's messages reach the subscriber). Then it
reads the run's audit log from Firestore:

* **phases** from state entry times (``received_at`` of the applied records whose
  ``to_state`` differs from ``from_state``): config, preflight, IAM (accounts created and
  verified), builds (scheduled with IAM, until the last ``build.succeeded``), director
  (deployed and ready), dataflows (the director creates the topics), dataflow IAM, deploys,
  dependent setup; plus the publisher→subscriber check;
* **IAM ∥ builds**: both branches' spans, their overlap, and the time saved against running
  them one after the other;
* **per-item spans**: every effect from its handler's start to the commit of its outcome
  (``received_at`` of the outcome's audit record), with the time it waited in the queue
  before that (outbox ``created_at`` → handler start). Handler start/end times are recorded
  by wrapping the daemon's handler table.

Each repetition is a first deployment: a fresh state directory (no build cache), an empty
local IAM registry (``--keep-iam``: keep it, as a re-deploy would), and the deployed processes
stopped at the end. The figures are the median over repetitions; the timeline is of the
median repetition.

    python -m devtools.emulators run -- python bench/e2e.py [--repeat 3] [--png docs/timeline.png]
        [--sweep-interval S (default: podium serve's, as podium up)] [--keep-iam]

Writes ``bench/results/e2e.json`` and the Gantt chart ``docs/timeline.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from google.cloud import firestore  # noqa: E402

from cli.up import EXAMPLE_ARCHITECTURE, verify_dataflow  # noqa: E402
from daemon import logs  # noqa: E402
from daemon.config import Settings  # noqa: E402
from daemon.pubsub import ensure_daemon_plumbing, publish_command  # noqa: E402
from daemon.server import Daemon  # noqa: E402
from handlers.base import EffectContext, Outcome  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# podium serve's default, which cli/up.py uses too (wake-ups fire timers and re-checks on time)
UP_SWEEP_INTERVAL: float = Settings.model_fields["sweep_interval_seconds"].default
RESULTS = Path(__file__).resolve().parent / "results"

# Phases: (name, start state, end) where end is a state entered or a marker computed below.
PHASES: list[tuple[str, str, str]] = [
    ("config", "generating_config", "preflight"),
    ("preflight", "preflight", "provisioning_iam"),
    ("iam", "provisioning_iam", "@iam_done"),
    ("builds", "provisioning_iam", "@builds_done"),
    ("director", "deploying_director", "provisioning_dataflows"),
    ("dataflows", "provisioning_dataflows", "verifying_dataflow_iam"),
    ("dataflow_iam", "verifying_dataflow_iam", "deploying_services"),
    ("deploys", "deploying_services", "dependent_setup"),
    ("dependent", "dependent_setup", "succeeded"),
]
# Which phase an effect belongs to on the timeline.
KIND_PHASE = {"configgen": "config", "preflight": "preflight", "iam.provision": "iam", "build": "builds",
              "iam.bind": "dataflow_iam"}


class SpanRecorder:
    """Wraps every handler: when each call started and ended, and how it ended."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def wrap(self, handlers: dict[str, Callable[[EffectContext], Sequence[Outcome]]]) -> None:
        for kind, handler in list(handlers.items()):
            handlers[kind] = self._wrapped(kind, handler)

    def _wrapped(self, kind: str, handler: Callable[[EffectContext], Sequence[Outcome]]) -> Any:
        def run(ctx: EffectContext) -> Sequence[Outcome]:
            began = time.time()
            ended_how = "outcome"
            try:
                return handler(ctx)
            except Exception as exc:
                ended_how = type(exc).__name__  # NotReady: re-checked later through the lease
                raise
            finally:
                with self.lock:
                    self.calls.append({"run_id": ctx.run_id, "effect_id": ctx.effect_id, "kind": kind,
                                       "item": ctx.item, "start": began, "end": time.time(), "ended": ended_how})

        return run


def ts(value: Any) -> float:
    return value.timestamp() if hasattr(value, "timestamp") else float(value)


def analyse(doc: Mapping[str, Any], events: list[dict[str, Any]], effects: list[dict[str, Any]],
            calls: list[dict[str, Any]], verify_seconds: float) -> dict[str, Any]:
    applied = sorted((e for e in events if e.get("outcome") == "applied"), key=lambda e: e["version"])
    t0 = ts(applied[0]["received_at"])
    entry: dict[str, float] = {}
    for e in applied:
        if e.get("to_state") and e["to_state"] != e.get("from_state") and e["to_state"] not in entry:
            entry[e["to_state"]] = ts(e["received_at"]) - t0
    entry.setdefault("generating_config", 0.0)
    iam_done = next((ts(e["received_at"]) - t0 for e in applied
                     if e["type"] == "iam.verified" and e.get("from_state") == "verifying_iam"), None)
    build_times = [ts(e["received_at"]) - t0 for e in applied if e["type"] == "build.succeeded"]
    markers = {"@iam_done": iam_done, "@builds_done": max(build_times) if build_times else None}
    phases: dict[str, dict[str, float]] = {}
    for name, start, end in PHASES:
        a = entry.get(start)
        b = markers[end] if end.startswith("@") else entry.get(end)
        if a is not None and b is not None:
            phases[name] = {"start": round(a, 3), "end": round(b, 3), "seconds": round(b - a, 3)}
    total = entry.get("succeeded", max((ts(e["received_at"]) - t0 for e in applied), default=0.0))
    parallel: dict[str, float] = {}
    if "iam" in phases and "builds" in phases:
        i, b = phases["iam"], phases["builds"]
        overlap = max(0.0, min(i["end"], b["end"]) - max(i["start"], b["start"]))
        union = max(i["end"], b["end"]) - min(i["start"], b["start"])
        parallel = {"iam_seconds": i["seconds"], "builds_seconds": b["seconds"], "overlap_seconds": round(overlap, 3),
                    "branch_seconds": round(union, 3),
                    "saved_vs_serial_seconds": round(i["seconds"] + b["seconds"] - union, 3)}

    # Per-effect spans: queue (outbox created_at → first handler start), work (→ outcome committed).
    outcome_at: dict[str, float] = {}
    for e in applied:
        eid = str(e.get("event_id", ""))
        if "~" in eid and not eid.startswith(("timer~", "cmd~", "director~")):
            effect_id = eid.split("~")[0]
            outcome_at.setdefault(effect_id, ts(e["received_at"]) - t0)
        elif eid.startswith("director~"):  # the director's reply: director~<command_id>~<status>
            outcome_at.setdefault("cmd:" + eid.split("~")[1], ts(e["received_at"]) - t0)
    by_effect: dict[str, list[dict[str, Any]]] = {}
    for c in calls:
        by_effect.setdefault(c["effect_id"], []).append(c)
    spans = []
    for eff in effects:
        effect_id = str(eff.get("effect_id") or eff.get("id"))
        mine = sorted(by_effect.get(effect_id, []), key=lambda c: c["start"])
        if not mine:
            continue
        created = ts(eff["created_at"]) - t0 if eff.get("created_at") else None
        start = mine[0]["start"] - t0
        handler_end = mine[-1]["end"] - t0
        params = eff.get("params") or {}
        done = outcome_at.get(effect_id) or outcome_at.get("cmd:" + str(params.get("command_id")))
        kind = str(eff.get("kind"))
        phase = KIND_PHASE.get(kind)
        if kind == "deploy":
            phase = "director" if eff.get("item") == doc.get("plan", {}).get("director") else "deploys"
        elif kind == "iam.verify":
            phase = "iam" if eff.get("item") == "accounts" else "dataflow_iam"
        elif kind == "director.command":
            phase = {"ping": "director", "dataflow-setup": "dataflows",
                     "dependent-resource-setup": "dependent"}.get(str(params.get("instruction")), "director")
        spans.append({
            "effect_id": effect_id, "kind": kind, "item": eff.get("item"), "phase": phase,
            "instruction": params.get("instruction"),
            "queued_at": round(created, 3) if created is not None else None,
            "start": round(start, 3), "handler_end": round(handler_end, 3),
            "outcome_committed": round(done, 3) if done is not None else None,
            "handler_calls": len(mine), "not_ready_calls": sum(c["ended"] == "NotReady" for c in mine),
            "calls": [[round(c["start"] - t0, 3), round(c["end"] - t0, 3)] for c in mine],
            "seconds": round((done if done is not None else handler_end) - start, 3),
        })
    spans.sort(key=lambda s: s["start"])
    return {"total_seconds": round(total, 3), "verify_seconds": round(verify_seconds, 3),
            "state_entry": {k: round(v, 3) for k, v in sorted(entry.items(), key=lambda kv: kv[1])},
            "phases": phases, "parallel": parallel, "effects": spans, "transitions": len(applied)}


def forget_local_iam(settings: Settings) -> int:
    """Empty the local IAM registry, so every repetition is a first ``podium up``: accounts and
    bindings created now, visible only after the simulated propagation delay."""
    from handlers.iam.local import COLLECTION

    client = firestore.Client(project=settings.project)
    refs = [d.reference for d in client.collection(COLLECTION).stream()]
    for ref in refs:
        ref.delete()
    client.close()
    return len(refs)


def one_run(index: int, timeout: float, sweep_interval: float, keep_iam: bool) -> dict[str, Any]:
    state_dir = Path(tempfile.mkdtemp(prefix=f"podium-e2e-{index}-"))
    settings = Settings(backend="local", source_root=EXAMPLE_ARCHITECTURE.parent, state_dir=state_dir,
                        collection=f"e2e-{index}-{os.getpid()}", sweep_interval_seconds=sweep_interval)
    ensure_daemon_plumbing(settings)
    if not keep_iam:
        forget_local_iam(settings)
    daemon = Daemon(settings, http_port=0)
    recorder = SpanRecorder()
    recorder.wrap(daemon.effects.handlers)
    daemon.start()
    run_id = f"e2e-{time.strftime('%H%M%S')}-{index}"
    db = firestore.Client(project=settings.project)
    try:
        began = time.monotonic()
        publish_command(settings, {"command": "start", "run_id": run_id,
                                   "architecture_yaml": EXAMPLE_ARCHITECTURE.read_text(),
                                   "source_root": str(EXAMPLE_ARCHITECTURE.parent)})
        ref = db.collection(settings.collection).document(run_id)
        doc: dict[str, Any] = {}
        while time.monotonic() - began < timeout:
            snap = ref.get()
            doc = (snap.to_dict() or {}) if snap.exists else {}
            if doc.get("status") in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.25)
        wall = time.monotonic() - began
        if doc.get("status") != "succeeded":
            raise RuntimeError(f"run {run_id} ended {doc.get('status')}: {doc.get('error')}")
        v0 = time.monotonic()
        ok, detail = verify_dataflow(doc)
        verify_seconds = time.monotonic() - v0
        events = [(d.to_dict() or {}) | {"id": d.id} for d in ref.collection("events").stream()]
        effects = [(d.to_dict() or {}) | {"id": d.id} for d in ref.collection("effects").stream()]
    finally:
        daemon.stop()
        try:
            from handlers.deploy.local import stop_all

            stop_all(settings)
        except Exception as exc:  # noqa: BLE001 - report, keep the figures
            print(f"could not stop local services: {exc}", file=sys.stderr)
        shutil.rmtree(state_dir, ignore_errors=True)
    result = analyse(doc, events, effects, recorder.calls, verify_seconds)
    result |= {"run_id": run_id, "sweep": sweep_interval, "wall_seconds_publish_to_end": round(wall, 3),
               "dataflow_check": ok,
               "dataflow_detail": detail}
    return result


COLORS = {"config": "#8c8c8c", "preflight": "#9467bd", "iam": "#d62728", "builds": "#1f77b4",
          "director": "#ff7f0e", "dataflows": "#bcbd22", "dataflow_iam": "#e377c2", "deploys": "#2ca02c",
          "dependent": "#17becf"}


def timeline_png(run: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    # label, start, end, queued_at, phase, handler calls
    rows: list[tuple[str, float, float, float | None, str, list[list[float]]]] = []
    for name, ph in run["phases"].items():
        rows.append((f"phase: {name}", ph["start"], ph["end"], None, name, []))
    for s in run["effects"]:
        what = s["instruction"] if s["kind"] == "director.command" else s["kind"]
        label = f"{what}: {s['item'] or '-'}"
        if s["outcome_committed"] is None:
            label += " (not yet)"  # an IAM check that saw nothing: the next poll reported
        end = s["outcome_committed"] if s["outcome_committed"] is not None else s["handler_end"]
        rows.append((label, s["start"], end, s["queued_at"], s["phase"] or "config", s.get("calls", [])))
    fig_h = max(4.0, 0.28 * len(rows) + 1.5)
    fig, ax = plt.subplots(figsize=(13, fig_h))
    for y, (label, start, end, queued, phase, calls) in enumerate(rows):
        color = COLORS.get(phase, "#444444")
        is_phase = label.startswith("phase:")
        if queued is not None and queued < start - 0.01:
            ax.barh(y, start - queued, left=queued, color=color, alpha=0.2, height=0.6)
        if is_phase:
            ax.barh(y, max(end - start, 0.02), left=start, color=color, alpha=0.55, height=0.8,
                    edgecolor="black", linewidth=0.5)
        else:  # pale: waiting (re-check after NotReady, outcome in flight); solid: the handler running
            ax.barh(y, max(end - start, 0.02), left=start, color=color, alpha=0.45, height=0.6)
            for a, b in calls:
                ax.barh(y, max(b - a, 0.02), left=a, color=color, alpha=1.0, height=0.6)
        ax.text(end + 0.1, y, f"{end - start:.2f}s", va="center", fontsize=7)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([r[0] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the start command was applied")
    par = run.get("parallel") or {}
    title = (f"podium up on the embedded default (local backend, emulators, sweep every {run['sweep']:g} s): "
             f"{run['total_seconds']:.1f} s to succeeded, + {run['verify_seconds']:.1f} s publisher→subscriber check")
    if par:
        title += (f"\nIAM {par['iam_seconds']:.1f} s ∥ builds {par['builds_seconds']:.1f} s: overlap "
                  f"{par['overlap_seconds']:.1f} s, saved {par['saved_vs_serial_seconds']:.1f} s against serial")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    handles = [Patch(color=c, label=n) for n, c in COLORS.items() if n in run["phases"]]
    handles.append(Patch(color="#1f77b4", alpha=1.0, label="handler running"))
    handles.append(Patch(color="#1f77b4", alpha=0.45, label="waiting: NotReady re-check / outcome to commit"))
    handles.append(Patch(color="#1f77b4", alpha=0.2, label="queued: outbox → handler start"))
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600.0, help="per run")
    parser.add_argument("--png", default=str(REPO / "docs" / "timeline.png"), help="'' for none")
    parser.add_argument("--sweep-interval", type=float, default=UP_SWEEP_INTERVAL,
                        help=f"the daemon's sweep interval (default {UP_SWEEP_INTERVAL}: podium serve's and "
                             "podium up's)")
    parser.add_argument("--keep-iam", action="store_true",
                        help="re-deploy: keep the local IAM registry between repetitions (already propagated)")
    parser.add_argument("--output", default=str(RESULTS / "e2e.json"))
    args = parser.parse_args()
    if not os.environ.get("PUBSUB_EMULATOR_HOST"):
        print("run under the emulators: python -m devtools.emulators run -- python bench/e2e.py", file=sys.stderr)
        return 2
    os.environ.setdefault("PODIUM_PROJECT", "podium-local")
    logs.configure("json", level=30)  # as podium up: warnings and errors only
    runs = []
    for i in range(args.repeat):
        res = one_run(i, args.timeout, args.sweep_interval, args.keep_iam)
        runs.append(res)
        phases = ", ".join(f"{k} {v['seconds']:.1f}" for k, v in res["phases"].items())
        print(f"run {i + 1}/{args.repeat}: {res['total_seconds']:.1f} s to succeeded ({phases}); "
              f"check {res['verify_seconds']:.1f} s {'ok' if res['dataflow_check'] else 'FAILED'}", flush=True)
    ranked = sorted(runs, key=lambda r: r["total_seconds"])
    median_run = ranked[len(ranked) // 2]
    names = [p[0] for p in PHASES]
    summary = {
        "total_seconds": statistics.median(r["total_seconds"] for r in runs),
        "verify_seconds": statistics.median(r["verify_seconds"] for r in runs),
        "phases_seconds": {n: statistics.median(r["phases"][n]["seconds"] for r in runs if n in r["phases"])
                           for n in names if any(n in r["phases"] for r in runs)},
        "parallel": {k: statistics.median(r["parallel"][k] for r in runs if r["parallel"])
                     for k in (median_run["parallel"] or {})},
        "min_total_seconds": ranked[0]["total_seconds"],
        "max_total_seconds": ranked[-1]["total_seconds"],
    }
    results = {"when": datetime.now(UTC).isoformat(), "cpus": os.cpu_count(), "repeat": args.repeat,
               "iam": "kept (re-deploy)" if args.keep_iam else "fresh each repetition (first deploy)",
               "sweep_interval_seconds": args.sweep_interval,
               "median": summary, "timeline_run": median_run["run_id"], "runs": runs,
               "all_ok": all(r["dataflow_check"] for r in runs)}
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    if args.png:
        timeline_png(median_run, Path(args.png))
    print(f"median of {args.repeat}: {summary['total_seconds']:.1f} s to succeeded "
          f"(min {summary['min_total_seconds']:.1f}, max {summary['max_total_seconds']:.1f}); "
          f"check {summary['verify_seconds']:.1f} s")
    for n, v in summary["phases_seconds"].items():
        print(f"  {n:13} {v:7.2f} s  ({v / summary['total_seconds'] * 100:4.1f}%)")
    if summary["parallel"]:
        p = summary["parallel"]
        print(f"  IAM ∥ builds: overlap {p['overlap_seconds']:.2f} s, saved {p['saved_vs_serial_seconds']:.2f} s")
    print(f"wrote {out}" + (f" and {args.png}" if args.png else ""))
    return 0 if results["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
