"""Scale-out benchmark (not a test): several ``podium serve`` replicas on the same subscriptions.

Phase ``single``: one replica drives R runs (default 200) of ``testdata/architecture.yaml``
from ``start`` to ``succeeded`` (stand-in backend: every effect succeeds at once): the baseline.
Phase ``steady``: N replicas (default 3) drive another R runs.
Phase ``kill``: N fresh replicas drive another R runs, and one replica is killed with SIGKILL
once about a third of them have finished; the others must finish every run.

For every run of both phases it checks: status ``succeeded``; the applied audit records'
versions are exactly 1..version (no transition lost or doubled); no ``event_id`` applied twice;
every effect ``done``. It reports the wall time (first start published → last run ended),
runs/s, transitions/s, and each replica's share of the work: the ``message processed`` lines
with ``outcome=applied`` in its JSON log, and the effects it started.

    python -m devtools.emulators run -- python bench/scaleout.py [--runs 200] [--replicas 3]

Writes ``bench/results/scaleout.json``; the replicas' logs go to ``bench/results/scaleout-logs/``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from google.cloud import firestore, pubsub_v1  # noqa: E402
from google.cloud.firestore_v1.base_query import FieldFilter  # noqa: E402

from daemon.config import Settings  # noqa: E402
from daemon.pubsub import ensure_daemon_plumbing, topic_path  # noqa: E402
from tests.integration.conftest import DaemonProcess  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TESTDATA = REPO / "testdata"
RESULTS = Path(__file__).resolve().parent / "results"

# Engine tuning for the benchmark (documented in docs/performance.md). The lease, the sweep and
# the ack deadline only matter after the kill: they bound how soon the dead replica's leased
# effects and unacked messages are taken over (defaults: 30 s, 2 s, 60 s). A run whose transaction
# was open in the killed replica stays locked by the Firestore emulator for ~60 s, and its event is
# nacked at every delivery meanwhile: with 5 attempts 10 s apart it would be dead-lettered, and a
# dead letter on an ordered subscription wedges the Pub/Sub emulator (docs/reliability.md, known
# limits). 20 attempts (200 s) stay clear of it, as the fault suite's 50 do.
TUNING = {"effect_lease_seconds": 10.0, "sweep_interval_seconds": 1.0, "ack_deadline_seconds": 10,
          "max_delivery_attempts": 20}


def make_settings(tag: str) -> Settings:
    unique = f"{tag}-{uuid.uuid4().hex[:8]}"
    return Settings(
        project=f"podium-scaleout-{uuid.uuid4().hex[:6]}",  # its own database: collection-group reads see only it
        commands_topic=f"cmd-{unique}",
        events_topic=f"evt-{unique}",
        dead_letter_topic=f"dlq-{unique}",
        collection="orchestrations",
        backend="standin",
        one_run_per_target=False,  # many runs of one architecture at once
        source_root=TESTDATA,
        state_dir=Path("/tmp") / f"podium-scaleout-{unique}",
        **TUNING,
    )


def wait_started(procs: list[DaemonProcess], timeout: float = 60.0) -> dict[int, str]:
    """Each replica's id, from its ``daemon started`` log line."""
    deadline = time.monotonic() + timeout
    ids: dict[int, str] = {}
    while time.monotonic() < deadline and len(ids) < len(procs):
        for i, p in enumerate(procs):
            if i in ids or not p.log_path.exists():
                continue
            for line in p.log_path.read_text(errors="replace").splitlines():
                if '"daemon started"' in line:
                    ids[i] = json.loads(line).get("replica", f"replica-{i}")
                    break
        time.sleep(0.2)
    if len(ids) < len(procs):
        raise RuntimeError(f"only {len(ids)} of {len(procs)} replicas started; see {procs[0].log_path.parent}")
    return ids


def publish_starts(settings: Settings, run_ids: list[str]) -> None:
    client = pubsub_v1.PublisherClient()
    topic = topic_path(settings.project, settings.commands_topic)
    yaml_text = (TESTDATA / "architecture.yaml").read_text()
    futures = [
        client.publish(topic, json.dumps({"command": "start", "run_id": r, "architecture_yaml": yaml_text,
                                          "source_root": str(TESTDATA)}).encode())
        for r in run_ids
    ]
    for f in futures:
        f.result(timeout=60)


def ended_count(db: firestore.Client, settings: Settings) -> int:
    """How many runs have ended (one aggregation query: cheap enough to poll every 0.1 s)."""
    query = db.collection(settings.collection).where(
        filter=FieldFilter("status", "in", ["succeeded", "failed", "cancelled"]))
    result = query.count().get()
    return int(result[0][0].value)


def log_counts(path: Path) -> dict[str, Any]:
    """What one replica did, from its JSON log."""
    outcomes: Counter[str] = Counter()
    effects: Counter[str] = Counter()
    effect_ids: list[str] = []
    for line in path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        msg = rec.get("message")
        if msg == "message processed":
            outcomes[str(rec.get("outcome"))] += 1
        elif msg == "effect started":
            effects[str(rec.get("kind"))] += 1
            effect_ids.append(f"{rec.get('run_id')}/{rec.get('effect_id')}")
    return {"processed": dict(outcomes), "applied": outcomes.get("applied", 0),
            "effects_started": sum(effects.values()), "effects_by_kind": dict(effects), "_effect_ids": effect_ids}


def verify(db: firestore.Client, settings: Settings, run_ids: list[str]) -> dict[str, Any]:
    """Every run succeeded; applied versions are 1..version; no event id applied twice; effects done."""
    docs = {d.id: d.to_dict() or {} for d in db.collection(settings.collection).stream()}
    applied: dict[str, list[dict[str, Any]]] = defaultdict(list)
    outcomes: Counter[str] = Counter()
    for snap in db.collection_group("events").stream():
        rec = snap.to_dict() or {}
        outcomes[str(rec.get("outcome"))] += 1
        if rec.get("outcome") == "applied":
            applied[snap.reference.parent.parent.id].append(rec)
    effects_not_done: list[str] = []
    for snap in db.collection_group("effects").stream():
        rec = snap.to_dict() or {}
        if rec.get("status") != "done":
            effects_not_done.append(snap.reference.path)
    problems: list[str] = []
    kinds: Counter[str] = Counter()
    not_succeeded = [r for r in run_ids if docs.get(r, {}).get("status") != "succeeded"]
    kinds["not_succeeded"] = len(not_succeeded)
    versions_per_run = []
    for r in run_ids:
        doc = docs.get(r)
        if doc is None:
            problems.append(f"{r}: no document")
            kinds["no_document"] += 1
            continue
        recs = applied.get(r, [])
        versions = sorted(int(e["version"]) for e in recs if e.get("version") is not None)
        if versions != list(range(1, int(doc["version"]) + 1)):
            problems.append(f"{r}: applied versions {versions} != 1..{doc['version']}")
            kinds["version_gap_or_double"] += 1
        ids = [e["event_id"] for e in recs]
        doubled = [k for k, n in Counter(ids).items() if n > 1]
        if doubled:
            problems.append(f"{r}: event ids applied twice: {doubled}")
            kinds["event_id_applied_twice"] += 1
        versions_per_run.append(int(doc["version"]))
    problems += [f"{r}: status {docs.get(r, {}).get('status')} {docs.get(r, {}).get('error')}" for r in not_succeeded]
    kinds["effects_not_done"] = len(effects_not_done)
    return {
        "runs": len(run_ids),
        "succeeded": len(run_ids) - len(not_succeeded),
        "transitions": sum(versions_per_run),
        "transitions_per_run": {"min": min(versions_per_run, default=0), "max": max(versions_per_run, default=0),
                                "median": statistics.median(versions_per_run) if versions_per_run else 0},
        "audit_outcomes": dict(outcomes),
        "effects_not_done": len(effects_not_done),
        "ok": not problems and not effects_not_done,
        "problem_counts": dict(kinds),
        "problems": problems[:20] + [f"effect not done: {p}" for p in effects_not_done[:10]],
    }


def phase(name: str, runs: int, replicas: int, kill_fraction: float | None, timeout: float,
          logs_dir: Path) -> dict[str, Any]:
    settings = make_settings(name)
    ensure_daemon_plumbing(settings)
    db = firestore.Client(project=settings.project)
    procs = [DaemonProcess(settings, logs_dir / f"{name}-replica{i}.log").start() for i in range(replicas)]
    try:
        replica_ids = wait_started(procs)
        run_ids = [f"{name}-{i:04d}" for i in range(runs)]
        began = time.monotonic()
        publish_starts(settings, run_ids)
        published = time.monotonic() - began
        killed: dict[str, Any] | None = None
        ended = 0
        progress: list[tuple[float, int]] = []
        while time.monotonic() - began < timeout:
            ended = ended_count(db, settings)
            progress.append((round(time.monotonic() - began, 2), ended))
            if kill_fraction is not None and killed is None and ended >= kill_fraction * runs:
                procs[0].kill()
                killed = {"replica": 0, "replica_id": replica_ids[0], "at_s": round(time.monotonic() - began, 2),
                          "runs_ended_at_kill": ended}
                print(f"  {name}: SIGKILL replica 0 after {ended} of {runs} runs ended", flush=True)
            if ended >= runs:
                break
            time.sleep(0.1)
        wall = time.monotonic() - began
    finally:
        for p in procs:
            if p.alive:
                try:
                    p.terminate(timeout=15)
                except Exception:  # noqa: BLE001 - then kill it
                    p.kill()
    check = verify(db, settings, run_ids)
    shares: dict[str, Any] = {}
    all_effect_ids: Counter[str] = Counter()
    total_applied = 0
    for i, p in enumerate(procs):
        counts = log_counts(p.log_path)
        all_effect_ids.update(counts.pop("_effect_ids"))
        counts["replica_id"] = replica_ids[i]
        counts["killed"] = killed is not None and killed["replica"] == i
        shares[f"replica{i}"] = counts
        total_applied += counts["applied"]
    for counts in shares.values():
        counts["share_of_applied"] = round(counts["applied"] / max(total_applied, 1), 3)
    after_kill = None
    if killed is not None:
        after_kill = {
            "seconds_from_kill_to_last_run": round(wall - killed["at_s"], 2),
            "runs_after_kill": runs - killed["runs_ended_at_kill"],
        }
    result = {
        "phase": name,
        "replicas": replicas,
        "runs": runs,
        "complete": ended >= runs,
        "wall_seconds": round(wall, 2),
        "publish_seconds": round(published, 2),
        "runs_per_second": round(runs / wall, 2),
        "transitions_per_second": round(check["transitions"] / wall, 1),
        "killed": killed,
        "after_kill": after_kill,
        "replica_shares": shares,
        "log_lines_applied_total": total_applied,
        "effects_executed_more_than_once": sum(1 for n in all_effect_ids.values() if n > 1),
        "check": check,
        "progress": progress[:: max(len(progress) // 80, 1)],
        "logs": str(logs_dir),
    }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--kill-fraction", type=float, default=1 / 3, help="phase 2 kills a replica after this share")
    parser.add_argument("--timeout", type=float, default=900.0, help="per phase")
    parser.add_argument("--phases", default="single,steady,kill",
                        help="comma-separated: single (1 replica, the baseline), steady, kill")
    parser.add_argument("--output", default=str(RESULTS / "scaleout.json"))
    args = parser.parse_args()
    if not os.environ.get("PUBSUB_EMULATOR_HOST"):
        print("run under the emulators: python -m devtools.emulators run -- python bench/scaleout.py", file=sys.stderr)
        return 2
    logs_dir = RESULTS / "scaleout-logs"
    logs_dir.mkdir(parents=True, exist_ok=True)
    for old in logs_dir.glob("*.log"):
        old.unlink()
    results: dict[str, Any] = {"when": datetime.now(UTC).isoformat(), "cpus": os.cpu_count(), "tuning": TUNING,
                               "architecture": "testdata/architecture.yaml", "backend": "standin"}
    ok = True
    for name in [p.strip() for p in args.phases.split(",") if p.strip()]:
        kill = args.kill_fraction if name == "kill" else None
        replicas = 1 if name == "single" else args.replicas
        print(f"phase {name}: {replicas} replica(s), {args.runs} runs" + (" (one killed)" if kill else ""),
              flush=True)
        res = phase(name, args.runs, replicas, kill, args.timeout, logs_dir)
        results[name] = res
        ok = ok and res["check"]["ok"] and res["complete"]
        shares = ", ".join(f"{k} {v['share_of_applied'] * 100:.0f}%{' (killed)' if v['killed'] else ''}"
                           for k, v in res["replica_shares"].items())
        print(f"  {res['wall_seconds']} s, {res['runs_per_second']} runs/s, {res['transitions_per_second']} "
              f"transitions/s; applied shares: {shares}; checks {'ok' if res['check']['ok'] else 'FAILED'}",
              flush=True)
        for problem in res["check"]["problems"][:10]:
            print(f"    {problem}", flush=True)
    if "single" in results:
        base = results["single"]["runs_per_second"]
        for name in ("steady", "kill"):
            if name in results:
                results[name]["runs_per_second_vs_single"] = round(results[name]["runs_per_second"] / base, 2)
    results["ok"] = ok
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
