"""``podium rejected`` and ``podium replay``: list rejected messages, replay dead letters.

``cli/main.py`` wires them in with ``dead_letters.add_parsers(sub)``. Exit codes as the rest of
the CLI: 0 ok; 1 some message could not be replayed; 2 bad usage or an unknown message id;
4 environment (no emulator variables nor credentials, Firestore or Pub/Sub unreachable).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from daemon.config import Settings

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ENV = 0, 1, 2, 4

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``30m``, ``2h``, ``1d12h``, ``1w`` (that long ago) or an ISO date/time (UTC unless it
    says otherwise: ``2026-12-04``, ``2026-12-04T10:00``, ``2026-12-04T10:00:00+01:00``)."""
    value = text.strip()
    if re.fullmatch(r"(\d+[smhdw])+", value):
        seconds = sum(int(n) * _UNITS[u] for n, u in re.findall(r"(\d+)([smhdw])", value))
        return (now or datetime.now(UTC)) - timedelta(seconds=seconds)
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a duration (30m, 2h, 7d, 1d12h) nor an ISO date/time (2026-12-04T10:00Z)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``rejected`` and ``replay`` on the ``podium`` sub-command parser."""
    p = sub.add_parser("rejected", help="list rejected and dead-lettered messages (rejected_messages), newest first")
    p.add_argument("--since", type=parse_since, metavar="DURATION|ISO",
                   help="only those received since then: 30m, 2h, 7d, or an ISO date/time (UTC by default)")
    p.add_argument("--reason", help="only this reason (dead_lettered, invalid_message, unknown_run, ...)")
    p.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_rejected, cloud=True)  # cloud: main() checks the emulator variables

    p = sub.add_parser("replay", help="republish rejected messages to their original topic (the event-id "
                       "dedup applies a replayed event once)")
    p.add_argument("message_ids", nargs="*", metavar="MESSAGE_ID", help="record ids, as `podium rejected` lists them")
    p.add_argument("--all-dead-lettered", action="store_true",
                   help="every dead-lettered message not replayed yet (with --force: every one)")
    p.add_argument("--force", action="store_true", help="replay again what was already replayed")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_replay, cloud=True)


def cmd_rejected(args: argparse.Namespace, settings: Settings | None = None) -> int:
    from daemon.replay import list_rejected

    def run() -> int:
        from google.cloud import firestore

        s = settings or Settings()
        client = firestore.Client(project=s.project)
        try:
            records = list_rejected(client, since=args.since, reason=args.reason, limit=args.limit)
        finally:
            client.close()
        if args.json:
            print(json.dumps([_jsonable(r) for r in records], indent=2, sort_keys=True, default=str))
        else:
            print_records(records)
        return EXIT_OK

    return _environment_guard("rejected", run)


def cmd_replay(args: argparse.Namespace, settings: Settings | None = None) -> int:
    from daemon.replay import replay

    if not args.message_ids and not args.all_dead_lettered:
        print("podium replay: name MESSAGE_ID... (as `podium rejected` lists them) or --all-dead-lettered",
              file=sys.stderr)
        return EXIT_USAGE

    def run() -> int:
        from google.cloud import firestore

        s = settings or Settings()
        client = firestore.Client(project=s.project)
        try:
            results = replay(s, args.message_ids, all_dead_lettered=args.all_dead_lettered, force=args.force,
                             client=client)
        finally:
            client.close()
        if args.json:
            print(json.dumps([r.to_json() for r in results], indent=2, sort_keys=True))
        elif not results:
            print("nothing to replay: no dead-lettered message waits for a replay")
        else:
            for r in results:
                print(describe(r))
        if any(r.outcome == "failed" for r in results):
            return EXIT_FAILED
        return EXIT_USAGE if any(r.outcome == "not_found" for r in results) else EXIT_OK

    return _environment_guard("replay", run)


def describe(r: Any) -> str:
    """One line per replayed record: what happened to it."""
    if r.outcome == "replayed":
        return f"{r.record_id}: replayed as message {r.replay_message_id} ({r.detail})"
    if r.outcome == "already_replayed":
        return f"{r.record_id}: skipped, {r.detail}"
    if r.outcome == "not_found":
        return f"{r.record_id}: not found ({r.detail})"
    return f"{r.record_id}: FAILED: {r.detail}"


def print_records(records: Sequence[dict[str, Any]]) -> None:
    if not records:
        print("no rejected messages")
        return
    header = ("id", "received (UTC)", "reason", "source", "size", "replayed")
    rows = [header] + [
        (
            str(r.get("id")),
            _utc(r.get("received_at")),
            str(r.get("reason") or "-"),
            str(r.get("source") or "-"),
            human_size(r.get("body_bytes")),
            f"yes, as {r.get('replay_message_id')}" if r.get("replayed_at") else "no",
        )
        for r in records
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    for row in rows:  # ids printed whole: they are what `podium replay` takes
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1])


def human_size(n: Any) -> str:
    if not isinstance(n, int):
        return "?"
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / (1024 * 1024):.1f} MiB"


def _utc(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return "-" if value is None else str(value)


def _jsonable(record: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.astimezone(UTC).isoformat() if isinstance(v, datetime) else v) for k, v in record.items()}


def _environment_guard(verb: str, run: Callable[[], int]) -> int:
    """Exit 4 with one line, not a traceback, when Firestore or Pub/Sub cannot be reached."""
    from google.api_core import exceptions as gexc
    from google.auth.exceptions import DefaultCredentialsError

    try:
        return run()
    except DefaultCredentialsError:
        missing = " and ".join(n for n in ("PUBSUB_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST") if not os.environ.get(n))
        print(f"podium {verb}: no Google Cloud access: set {missing or 'the emulator variables'} for the emulators "
              "(`podium up` prints the export line), or Google credentials (`gcloud auth application-default login`)",
              file=sys.stderr)
        return EXIT_ENV
    except (gexc.ServiceUnavailable, gexc.DeadlineExceeded, gexc.RetryError, gexc.PermissionDenied,
            gexc.Unauthenticated) as exc:
        print(f"podium {verb}: cannot use Firestore/Pub/Sub: {type(exc).__name__}: {str(exc)[:300]}",
              file=sys.stderr)
        return EXIT_ENV
