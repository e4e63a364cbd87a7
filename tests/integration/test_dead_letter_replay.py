"""Dead letters are kept whole, listed and replayed (issue 14 point 2), against the emulators.

A start command of about 1 MB (over the 64 KiB preview, over one 900 KiB chunk) fails
transiently until Pub/Sub dead-letters it; its record holds the whole body in chunks, with the
topic it came from. ``podium rejected`` lists it, ``podium replay`` republishes it and the run
starts; the run's ``config.generated`` event is then dead-lettered the same way and replayed with
``--all-dead-lettered``; the run succeeds. Replaying both again with ``--force``: the audit log
has one applied transition and one duplicate for each (the start's run id and the event's id
deduplicate them). The verbs run as a subprocess through ``add_parsers``, as ``podium`` will.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from google.api_core.exceptions import ServiceUnavailable

from daemon.rejected import CHUNK_BYTES, MAX_RAW_BODY, read_full_body
from tests.integration.conftest import (
    ARCHITECTURE_YAML,
    REPO,
    assert_consistent,
    audit,
    publish,
    rejected,
    run_doc,
    settings_env,
    start_body,
    wait_for,
    wait_status,
)

RUN = "dl-big"
CLI = (
    "import argparse, sys\n"
    "from cli import dead_letters\n"
    "parser = argparse.ArgumentParser(prog='podium')\n"
    "dead_letters.add_parsers(parser.add_subparsers(dest='command', required=True))\n"
    "args = parser.parse_args(sys.argv[1:])\n"
    "sys.exit(args.func(args))\n"
)


def podium(settings: Any, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", CLI, *argv], env=settings_env(settings), cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_a_dead_letter_is_stored_whole_listed_replayed_and_applied_once(settings, db, daemon_factory):
    # A long lease: the config effect's outcome is not re-driven while it waits in the dead letters.
    s = settings.model_copy(update={"effect_lease_seconds": 600.0})
    daemon = daemon_factory(s)
    down = {"start": True, "event": True}
    real_start, real_apply_many = daemon.store.start, daemon.store.apply_many

    def flaky_start(run_id, *args, **kwargs):
        if run_id == RUN and down["start"]:
            raise ServiceUnavailable("firestore is away")
        return real_start(run_id, *args, **kwargs)

    def flaky_apply_many(run_id, items):  # every apply, eager or from the events topic
        if run_id == RUN and any(e.type == "config.generated" for e, _ in items) and down["event"]:
            raise ServiceUnavailable("firestore is away")
        return real_apply_many(run_id, items)

    daemon.store.start, daemon.store.apply_many = flaky_start, flaky_apply_many
    yaml_text = ARCHITECTURE_YAML + "".join(f"# padding line {i:06d} {'x' * 80}\n" for i in range(9_500))
    assert len(yaml_text) < 1024 * 1024  # an architecture's limit
    body = json.dumps(start_body(RUN, yaml_text)).encode()
    assert len(body) > CHUNK_BYTES
    publish(s, body)
    commands_topic = f"projects/{s.project}/topics/{s.commands_topic}"
    events_topic = f"projects/{s.project}/topics/{s.events_topic}"

    def dead_letter_from(topic: str) -> tuple[str, dict[str, Any]] | None:
        return next(((i, r) for i, r in rejected(db).items()
                     if r["reason"] == "dead_lettered" and r.get("topic") == topic), None)

    # stored whole: the contract's preview, and every byte in the chunks
    start_id, record = wait_for(lambda: dead_letter_from(commands_topic), 60, "the start to be dead-lettered")
    assert record["truncated"] is True and len(record["body"]) == MAX_RAW_BODY
    assert record["body_bytes"] == len(body) and record["chunks"] == 2
    assert read_full_body(db, start_id, record) == body
    assert record["attributes"]["CloudPubSubDeadLetterSourceDeliveryCount"] == str(s.max_delivery_attempts)
    assert run_doc(db, s, RUN) is None

    # listed
    listed = podium(s, "rejected", "--reason", "dead_lettered", "--since", "1h", "--json")
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)
    assert (row["id"], row["body_bytes"], row["topic"], row.get("replayed_at")) == (
        start_id, len(body), commands_topic, None)
    table = podium(s, "rejected")
    assert table.returncode == 0 and start_id in table.stdout and "dead_lettered" in table.stdout
    assert str(record["received_at"].date()) in table.stdout and "no" in table.stdout.splitlines()[1]

    # replayed to its topic: the run starts; its first outcome is dead-lettered in turn
    down["start"] = False
    first = podium(s, "replay", start_id)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"{start_id}: replayed as message" in first.stdout
    event_id, event_record = wait_for(lambda: dead_letter_from(events_topic), 60, "config.generated dead-lettered")
    event_body = read_full_body(db, event_id, event_record)
    assert json.loads(event_body)["type"] == "config.generated"
    assert (run_doc(db, s, RUN) or {}).get("state") == "generating_config"

    # --all-dead-lettered takes only what was not replayed yet: the event
    down["event"] = False
    every = podium(s, "replay", "--all-dead-lettered", "--json")
    assert every.returncode == 0, every.stdout + every.stderr
    [result] = json.loads(every.stdout)
    assert (result["record_id"], result["outcome"], result["topic"]) == (event_id, "replayed", events_topic)
    assert wait_status(db, s, RUN)["status"] == "succeeded"

    # a second replay needs --force; with it, the dedup applies each message once
    again = podium(s, "replay", event_id)
    assert again.returncode == 0 and "skipped, already replayed" in again.stdout
    forced = podium(s, "replay", event_id, start_id, "--force", "--json")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    second = {r["record_id"]: r["replay_message_id"] for r in json.loads(forced.stdout)}

    the_event = json.loads(event_body)["event_id"]

    def records_of(event: str) -> list[dict[str, Any]]:
        return [e for e in audit(db, s, RUN) if e["event_id"] == event]

    def both_duplicates() -> bool:
        return any(e["outcome"] == "duplicate" for e in records_of(the_event)) and any(
            e["outcome"] == "duplicate" and e["type"] == "command.start" for e in audit(db, s, RUN))

    wait_for(both_duplicates, 30, "the forced replays to be recorded as duplicates")
    outcomes = sorted((e["outcome"], e["message_id"]) for e in records_of(the_event))
    assert outcomes == sorted([("applied", result["replay_message_id"]), ("duplicate", second[event_id])])
    starts = [e for e in audit(db, s, RUN) if e["type"] == "command.start"]
    assert sorted(e["outcome"] for e in starts) == ["applied", "duplicate"]
    assert [e["message_id"] for e in starts if e["outcome"] == "duplicate"] == [second[start_id]]
    assert_consistent(db, s, RUN)
    marks = rejected(db)
    assert marks[event_id]["replay_count"] == marks[start_id]["replay_count"] == 2
    assert marks[event_id]["replay_message_id"] == second[event_id]
