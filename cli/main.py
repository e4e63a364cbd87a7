"""The ``podium`` command line (DESIGN.md §8).

Exit codes: 0 success; 1 the run failed/was cancelled (or a command's target is in a bad
state); 2 bad usage or input (invalid file, unknown run); 3 timeout waiting; 4 environment
problem (emulator, Java, cloud access).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from daemon.config import Settings

EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE, EXIT_TIMEOUT, EXIT_ENV = 0, 1, 2, 3, 4


def _settings() -> Settings:
    return Settings()


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def cmd_serve(args: argparse.Namespace) -> int:
    from daemon.server import serve

    serve(_settings())
    return EXIT_OK


def cmd_start(args: argparse.Namespace) -> int:
    from daemon.pubsub import publish_command

    settings = _settings()
    path = Path(args.file).resolve()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        print(f"podium start: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    if not args.no_validate:
        from machines.architecture import load_architecture
        from machines.errors import InvalidArchitecture

        try:
            load_architecture(text, source=str(path))
        except InvalidArchitecture as exc:
            print(exc.message, file=sys.stderr)
            return EXIT_USAGE
    source_root = str(path.parent)
    if args.upload:
        from cli.upload import upload_source

        try:
            source_root = upload_source(path.parent, args.upload, settings)
        except ValueError as exc:
            print(f"podium start: --upload: {exc}", file=sys.stderr)
            return EXIT_USAGE
        print(f"sources uploaded: {source_root}", file=sys.stderr)
    body: dict[str, Any] = {"command": "start", "architecture_yaml": text, "source_root": source_root}
    if args.run_id:
        body["run_id"] = args.run_id
    if args.skip_preflight:
        body["skip_preflight"] = True
    message_id = publish_command(settings, body)
    run_id = args.run_id or message_id
    if args.json:
        _print_json({"run_id": run_id, "message_id": message_id})
    else:
        print(f"start published: run {run_id} (message {message_id})")
        print(f"follow it with: podium watch {run_id}")
    if args.wait:
        from cli.watch import wait_for_end

        return wait_for_end(settings, run_id, timeout=args.timeout, quiet=args.json)
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from cli.status import show_run, show_runs

    settings = _settings()
    if args.run_id:
        return show_run(settings, args.run_id, events=args.events, as_json=args.json)
    return show_runs(settings, status=args.status, limit=args.limit, as_json=args.json)


def _send(args: argparse.Namespace, command: str) -> int:
    """Publish cancel/retry, then wait for the daemon's audit record of that very message.

    The record says what the machine did with it: ``applied`` (print the transition; exit 0 if
    the run is now cancelled/running again, else 1) or ``ignored`` (e.g. a retry of a run that
    has not failed: exit 1 at once, with the machine's reason). No record in time: exit 3.
    """
    from cli.status import store_for
    from daemon.pubsub import publish_command

    settings = _settings()
    store = store_for(settings)
    before = store.get(args.run_id)
    if before is None:
        print(f"podium {command}: no run {args.run_id!r}", file=sys.stderr)
        return EXIT_USAGE
    message_id = publish_command(settings, {"command": command, "run_id": args.run_id})
    record = _wait_for_record(settings, args.run_id, message_id, timeout=args.timeout)
    after = store.get(args.run_id) if record is not None else None
    result = {
        "run_id": args.run_id,
        "message_id": message_id,
        "from": (record or {}).get("from_state") or before.get("state"),
        "to": ((record or {}).get("to_state") or (record or {}).get("from_state")) if record else None,
        "status": (after or before).get("status"),
        "outcome": (record or {}).get("outcome"),
        "detail": (record or {}).get("detail"),
    }
    if args.json:
        _print_json(result)
    elif record is None:
        print(f"{command} published ({message_id}); the daemon did not record it within {args.timeout:.0f} s "
              f"(state {before.get('state')}: see `podium status {args.run_id} --events`)")
    elif record.get("outcome") != "applied":
        print(f"{args.run_id}: {command} {record.get('outcome')} in state {result['from']} "
              f"({result['status']}): {record.get('detail')}")
    else:
        print(f"{args.run_id}: {result['from']} -> {result['to']} ({result['status']})")
    if record is None:
        return EXIT_TIMEOUT
    wanted = "cancelled" if command == "cancel" else "running"  # teardown runs on: watch it end
    applied = record.get("outcome") == "applied"
    return EXIT_OK if applied and result["status"] == wanted else EXIT_RUN_FAILED


def _wait_for_record(settings: Settings, run_id: str, message_id: str, *, timeout: float) -> dict[str, Any] | None:
    """The run's audit record of this message (``on_snapshot``, no polling); None on timeout."""
    import threading

    from google.cloud import firestore
    from google.cloud.firestore_v1.base_query import FieldFilter

    client = firestore.Client(project=settings.project)
    query = (client.collection(settings.collection).document(run_id).collection("events")
             .where(filter=FieldFilter("message_id", "==", message_id)))
    found: list[dict[str, Any]] = []
    seen = threading.Event()

    def on_snapshot(snaps: list[Any], _changes: Any, _read_time: Any) -> None:
        records = [s.to_dict() or {} for s in snaps]
        if records:
            # a redelivered message adds a 'duplicate' record after the first one: report the first
            found[:] = sorted(records, key=lambda r: r.get("outcome") != "applied")[:1]
            seen.set()

    watch = query.on_snapshot(on_snapshot)
    try:
        return dict(found[0]) if seen.wait(timeout) and found else None
    finally:
        watch.unsubscribe()


def cmd_cancel(args: argparse.Namespace) -> int:
    return _send(args, "cancel")


def cmd_retry(args: argparse.Namespace) -> int:
    return _send(args, "retry")


def cmd_teardown(args: argparse.Namespace) -> int:
    return _send(args, "teardown")


def cmd_watch(args: argparse.Namespace) -> int:
    from cli.watch import watch_run

    return watch_run(_settings(), args.run_id, timeout=args.timeout, as_json=args.json)


def cmd_graph(args: argparse.Namespace) -> int:
    from cli.graph import render

    current = None
    if args.run_id:
        from cli.status import store_for

        doc = store_for(_settings()).get(args.run_id)
        if doc is None:
            print(f"podium graph: no run {args.run_id!r}", file=sys.stderr)
            return EXIT_USAGE
        current = str(doc.get("state"))
    out = render(args.format, current)
    if isinstance(out, bytes):
        target = Path(args.output or "podium-machine.png")
        target.write_bytes(out)
        print(f"wrote {target}")
    elif args.output:
        Path(args.output).write_text(out)
        print(f"wrote {args.output}")
    else:
        print(out)
    return EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    from cli.plan import cmd_plan as plan

    return plan(_settings(), args.file, as_json=args.json)


def cmd_up(args: argparse.Namespace) -> int:
    from cli.up import up

    return up(Path(args.file) if args.file else None, run_id=args.run_id, timeout=args.timeout, keep=args.keep)


def cmd_down(args: argparse.Namespace) -> int:
    from handlers.deploy.local import stop_all

    settings = _settings()
    stopped = stop_all(settings, args.project)
    if args.json:
        _print_json({"stopped": stopped})
    else:
        print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
    return EXIT_OK


def _add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="podium", description="Deploy a microservice architecture as a durable state machine.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the daemon (Cloud Run entrypoint)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("start", help="publish a start command for an architecture file")
    p.add_argument("file", help="the architecture YAML")
    p.add_argument("--run-id", help="run id (default: the start message's id)")
    p.add_argument("--wait", action="store_true", help="wait until the run ends; exit code by its status")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait with --wait")
    p.add_argument("--no-validate", action="store_true", help="skip local validation before publishing")
    p.add_argument(
        "--skip-preflight",
        action="store_true",
        help="run no service's own tests before building (each is recorded as skipped)",
    )
    p.add_argument(
        "--upload",
        metavar="gs://BUCKET/OBJECT.tar.gz",
        help="pack the architecture file's folder, upload it there and deploy from it (a daemon on "
        "Cloud Run has no checkout of your code)",
    )
    _add_json(p)
    p.set_defaults(func=cmd_start)

    p = sub.add_parser("status", help="list runs, or show one run")
    p.add_argument("run_id", nargs="?", help="a run id")
    p.add_argument("--status", choices=["running", "succeeded", "failed", "cancelled", "torn_down"],
                   help="filter the list")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--events", action="store_true", help="with RUN: show the audit log")
    _add_json(p)
    p.set_defaults(func=cmd_status)

    for name, func, text in (
        ("cancel", cmd_cancel, "cancel a run"),
        ("retry", cmd_retry, "redrive a failed run from the state that failed"),
        ("teardown", cmd_teardown, "remove what a finished run created (its services, the resources of its "
         "ephemeral dataflows, the accounts Podium made), durably; the run ends torn_down. Not `down`, "
         "which only stops local processes"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("run_id")
        p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the transition")
        _add_json(p)
        p.set_defaults(func=func)

    p = sub.add_parser("watch", help="follow a run live until it ends (exit code by its status)")
    p.add_argument("run_id")
    p.add_argument("--timeout", type=float, default=3600.0)
    _add_json(p)
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("plan", help="dry run: validate and show what a run would create (nothing is created)")
    p.add_argument("file", help="the architecture YAML")
    _add_json(p)
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("up", help="emulators + daemon + deploy the architecture locally, with live progress")
    p.add_argument("file", nargs="?", help="architecture YAML (default: the embedded example, testdata/architecture.yaml in the repository)")
    p.add_argument("--run-id")
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--keep", action="store_true", help="keep everything running until Ctrl-C")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("down", help="stop the services the local backend started (processes only; "
                       "`podium teardown RUN` removes what a run created)")
    p.add_argument("--project", help="only this architecture project's services (default: all)")
    _add_json(p)
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("graph", help="draw the state machine from its definition")
    p.add_argument("run_id", nargs="?", help="highlight this run's current state")
    p.add_argument("--format", choices=["mermaid", "dot", "png"], default="mermaid")
    p.add_argument("-o", "--output", help="write to this file")
    p.set_defaults(func=cmd_graph)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from machines.errors import EmulatorError, PodiumError

    try:
        return int(args.func(args))
    except EmulatorError as exc:
        print(f"podium: {exc.message}", file=sys.stderr)
        return EXIT_ENV
    except PodiumError as exc:
        print(f"podium: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
