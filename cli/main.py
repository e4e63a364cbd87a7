"""The ``podium`` command line (DESIGN.md §8).

Exit codes: 0 success; 1 the run failed/was cancelled (or a command's target is in a bad
state); 2 bad usage or input (invalid file, unknown run); 3 timeout waiting; 4 environment
problem (emulator, Java, cloud access, Graphviz), said in one line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cli import dead_letters
from daemon.config import Settings

EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE, EXIT_TIMEOUT, EXIT_ENV = 0, 1, 2, 3, 4
EMULATOR_VARIABLES = ("PUBSUB_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST")
# How long ``start --run-id`` of an existing run waits for the daemon's record of the duplicate.
DUPLICATE_WAIT_SECONDS = 5.0


def _settings() -> Settings:
    return Settings()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("podium")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def _unreachable_emulator(environ: Mapping[str, str] | None = None) -> str | None:
    """An emulator variable that is set to an address nobody answers on (a ``podium up`` that
    has ended, a typo): one line saying so, or None. Unset variables are not checked here."""
    import socket

    env = os.environ if environ is None else environ
    for name in EMULATOR_VARIABLES:
        address = env.get(name, "").strip()
        if not address:
            continue
        host, _, port = address.removeprefix("http://").rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "localhost", int(port)), timeout=2):
                pass
        except (OSError, ValueError):
            return (f"nothing answers at {name}={address}: start the emulators (`podium up --keep` starts them "
                    f"and prints the variables to export) or unset {name} to use Google Cloud")
    return None


def _no_credentials(exc: BaseException) -> str:
    """One line for google.auth's DefaultCredentialsError: what to set."""
    missing = [n for n in EMULATOR_VARIABLES if not os.environ.get(n)]
    emulators = " and ".join(missing) if missing else "STORAGE_EMULATOR_HOST"
    line = (f"no Google Cloud access: set {emulators} for the emulators (`podium up` prints the export line), "
            "or Google credentials (`gcloud auth application-default login`, or GOOGLE_APPLICATION_CREDENTIALS "
            "naming a key file)")
    if os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
        line += f"; GOOGLE_APPLICATION_CREDENTIALS: {' '.join(str(exc).split())[:200]}"
    return line


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
    body: dict[str, Any] = {"command": "start", "architecture_yaml": text, "source_root": source_root,
                            "if_busy": args.if_busy}
    if args.run_id:
        body["run_id"] = args.run_id
    if args.skip_preflight:
        body["skip_preflight"] = True
    existing = _existing_run(settings, args.run_id) if args.run_id else None
    deadline = time.monotonic() + args.timeout
    message_id = publish_command(settings, body)
    run_id = args.run_id or message_id
    if existing is None:
        if args.json:
            _print_json({"run_id": run_id, "message_id": message_id})
        else:
            print(f"start published: run {run_id} (message {message_id})")
            print(f"follow it with: podium watch {run_id}")
        if not args.wait:
            return EXIT_OK
    # The daemon's record of this very message says what became of it: applied, a duplicate
    # (the run id is taken: the run is left as it is), or rejected (with the reason).
    wait = args.timeout if args.wait else min(args.timeout, DUPLICATE_WAIT_SECONDS)
    record = _wait_for_record(settings, run_id, message_id, timeout=wait)
    outcome = (record or {}).get("outcome") or ("duplicate" if existing is not None else None)
    if outcome == "duplicate":
        return _duplicate_start(args, run_id, message_id, existing, record)
    if record is not None and outcome not in ("applied", "queued"):
        detail = record.get("detail") or ""
        if args.json:
            _print_json({"run_id": run_id, "message_id": message_id, "outcome": outcome, "detail": detail})
        print(f"podium start: run {run_id}: the daemon {outcome} the start: {detail}", file=sys.stderr)
        return EXIT_USAGE if outcome == "rejected" else EXIT_RUN_FAILED
    if record is None:
        print(f"podium start: the daemon has not recorded the start of run {run_id} within {args.timeout:.0f} s "
              f"(is `podium serve` running on topic {settings.commands_topic}?)", file=sys.stderr)
        return EXIT_TIMEOUT
    from cli.watch import wait_for_end

    return wait_for_end(settings, run_id, timeout=max(deadline - time.monotonic(), 0.0), quiet=args.json)


def _existing_run(settings: Settings, run_id: str) -> dict[str, Any] | None:
    """The run document, if the run exists. Without credentials: None, and the publish that
    follows fails with the one-line hint (that is where a start needs them first)."""
    from google.auth.exceptions import DefaultCredentialsError

    from cli.status import store_for

    try:
        return store_for(settings).get(run_id)
    except DefaultCredentialsError:
        return None


def _duplicate_start(args: argparse.Namespace, run_id: str, message_id: str, existing: dict[str, Any] | None,
                     record: dict[str, Any] | None) -> int:
    """``start --run-id X`` when run X exists: say so (the daemon records it as a duplicate and
    changes nothing), exit 2 (the run id is taken)."""
    state = (existing or {}).get("state") or (record or {}).get("from_state")
    status = (existing or {}).get("status")
    detail = (f"run {run_id} already exists (state {state}" + (f", status {status}" if status else "") +
              "): this start is a duplicate and changed nothing" +
              ("; the daemon recorded it as such" if record else
               " (the daemon records it as a duplicate when it reads the message)"))
    if args.json:
        _print_json({"run_id": run_id, "message_id": message_id, "outcome": "duplicate", "detail": detail})
    print(f"podium start: {detail}. See `podium status {run_id}`; a new run needs another --run-id "
          "(or none: the message id is used)", file=sys.stderr)
    return EXIT_USAGE


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
    if command == "cancel" and before.get("status") in ENDED:
        return _cancel_of_an_ended_run(args, before)
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


# Statuses a run does not leave by itself: ``cancel`` has nothing to stop (the machine refuses it).
ENDED = ("succeeded", "failed", "cancelled", "torn_down")


def _cancel_of_an_ended_run(args: argparse.Namespace, doc: dict[str, Any]) -> int:
    """``cancel`` of a run that has ended publishes nothing: exit 0 if it is already cancelled
    (a second cancel is idempotent), else 1 (the target is in a state that refuses it)."""
    status, state = doc.get("status"), doc.get("state")
    if status == "cancelled":
        outcome, detail, code = "already_cancelled", f"already cancelled (state {state})", EXIT_OK
    else:
        outcome, detail, code = ("refused", f"the run has ended ({status}, state {state}): nothing to cancel",
                                 EXIT_RUN_FAILED)
    if args.json:
        _print_json({"run_id": args.run_id, "message_id": None, "from": state, "to": state, "status": status,
                     "outcome": outcome, "detail": detail})
    elif code == EXIT_OK:
        print(f"{args.run_id}: {detail}")
    else:
        print(f"podium cancel: {args.run_id}: {detail}", file=sys.stderr)
    return code


def _wait_for_record(settings: Settings, run_id: str, message_id: str, *, timeout: float) -> dict[str, Any] | None:
    """The daemon's record of this message (``on_snapshot``, no polling); None on timeout.

    Either the run's audit record of it (``applied``, ``ignored``, ``duplicate`` …) or, if the
    daemon refused the message itself, its ``rejected_messages`` record, returned as outcome
    ``rejected`` with the reason as detail."""
    import threading

    from google.cloud import firestore
    from google.cloud.firestore_v1.base_query import FieldFilter

    from daemon.rejected import REJECTED, rejected_doc_id

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

    def on_rejected(snaps: list[Any], _changes: Any, _read_time: Any) -> None:
        for snap in snaps:
            if snap.exists and not seen.is_set():
                data = snap.to_dict() or {}
                found[:] = [{"outcome": "rejected", "message_id": message_id, "from_state": None,
                             "detail": f"{data.get('reason')}: {data.get('message')}"}]
                seen.set()

    watches = [query.on_snapshot(on_snapshot),
               client.collection(REJECTED).document(rejected_doc_id(message_id)).on_snapshot(on_rejected)]
    try:
        return dict(found[0]) if seen.wait(timeout) and found else None
    finally:
        for watch in watches:
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


def cmd_logs(args: argparse.Namespace) -> int:
    from cli.logs import show_logs

    return show_logs(_settings(), args.run_id, args.service, follow=args.follow, as_json=args.json)


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
    parser = argparse.ArgumentParser(
        prog="podium", description="Deploy a microservice architecture as a durable state machine.",
        epilog="exit codes: 0 ok, 1 the run failed or was cancelled (or the command's target refuses it), "
        "2 bad input or unknown run, 3 timed out waiting, 4 environment problem (emulators, credentials, "
        "Java, Graphviz)")
    parser.add_argument("--version", action="version", version=f"podium {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the daemon (Cloud Run entrypoint)")
    p.set_defaults(func=cmd_serve, cloud=True)

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
    p.add_argument(
        "--if-busy",
        choices=["queue", "fail"],
        default="queue",
        help="when another run of the same target (project_id + architecture name) is active: wait for it "
        "(queue, the default) or refuse this start (fail); either way it is in the run's audit log",
    )
    _add_json(p)
    p.set_defaults(func=cmd_start, cloud=True)

    p = sub.add_parser("status", help="list runs, or show one run")
    p.add_argument("run_id", nargs="?", help="a run id")
    p.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "cancelled", "torn_down"],
                   help="filter the list")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--events", action="store_true", help="with RUN: show the audit log")
    _add_json(p)
    p.set_defaults(func=cmd_status, cloud=True)

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
        p.set_defaults(func=func, cloud=True)

    p = sub.add_parser("watch", help="follow a run live until it ends (exit code by its status)")
    p.add_argument("run_id")
    p.add_argument("--timeout", type=float, default=3600.0)
    _add_json(p)
    p.set_defaults(func=cmd_watch, cloud=True)

    p = sub.add_parser("logs", help="the output of a run's services (local backend: their log files; "
                       "gcp: the Cloud Logging query and gcloud command to read them)")
    p.add_argument("run_id", metavar="RUN")
    p.add_argument("service", nargs="?", metavar="SERVICE", help="only this service")
    p.add_argument("-f", "--follow", action="store_true", help="local: keep printing new output until Ctrl-C")
    _add_json(p)
    p.set_defaults(func=cmd_logs, cloud=True)

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
    p.set_defaults(func=cmd_down, cloud=True)

    p = sub.add_parser("graph", help="draw the state machine from its definition")
    p.add_argument("run_id", nargs="?", help="highlight this run's current state")
    p.add_argument("--format", choices=["mermaid", "dot", "png"], default="mermaid")
    p.add_argument("-o", "--output", help="write to this file")
    p.set_defaults(func=cmd_graph)
    dead_letters.add_parsers(sub)  # podium rejected, podium replay
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from google.auth.exceptions import DefaultCredentialsError, RefreshError

    from machines.errors import EmulatorError, PodiumError

    # Verbs that talk to Pub/Sub or Firestore (graph only for a run): an emulator variable
    # pointing nowhere is said in one line at once, not after a client's retries time out. Not
    # for `serve`: a daemon started before its emulators waits for them, as it always did.
    needs_cloud = getattr(args, "cloud", False) and args.command != "serve"
    if needs_cloud or (args.command == "graph" and args.run_id):
        problem = _unreachable_emulator()
        if problem:
            print(f"podium {args.command}: {problem}", file=sys.stderr)
            return EXIT_ENV
    try:
        return int(args.func(args))
    except DefaultCredentialsError as exc:  # no emulator variables and no Application Default Credentials
        print(f"podium {args.command}: {_no_credentials(exc)}", file=sys.stderr)
        return EXIT_ENV
    except RefreshError as exc:
        print(f"podium {args.command}: Google refused the credentials ({' '.join(str(exc).split())[:200]}): "
              "renew them with `gcloud auth application-default login`, or use the emulators "
              "(PUBSUB_EMULATOR_HOST, FIRESTORE_EMULATOR_HOST)", file=sys.stderr)
        return EXIT_ENV
    except EmulatorError as exc:
        print(f"podium: {exc.message}", file=sys.stderr)
        return EXIT_ENV
    except PodiumError as exc:
        print(f"podium: {exc.message}", file=sys.stderr)
        return EXIT_ENV if exc.reason == "environment" else EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
