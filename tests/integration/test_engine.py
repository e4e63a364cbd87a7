"""The engine end to end through the real Pub/Sub and Firestore emulators (stand-in handlers)."""

from __future__ import annotations

import json

from tests.integration.conftest import (
    assert_consistent,
    audit,
    publish,
    rejected,
    run_doc,
    start_body,
    wait_for,
    wait_status,
)

HAPPY_PATH = [
    "generating_config",
    "preflight",
    "provisioning_iam",
    "verifying_iam",
    "building",
    "deploying_director",
    "awaiting_director",
    "provisioning_dataflows",
    "verifying_dataflow_iam",
    "deploying_services",
    "dependent_setup",
    "succeeded",
]


def test_run_from_start_to_succeeded_with_ordered_audit_log(settings, db, daemon_factory):
    daemon_factory(settings)
    publish(settings, start_body("happy-1"))
    doc = wait_status(db, settings, "happy-1")
    assert doc["status"] == "succeeded", doc.get("error")
    assert doc["state"] == "succeeded"
    assert doc["error"] is None
    assert set(doc["outputs"]["images"]) == {"director", "publisher", "subscriber"}
    assert set(doc["outputs"]["urls"]) >= {"publisher", "subscriber"}
    applied = assert_consistent(db, settings, "happy-1")
    states = [e["to_state"] for e in sorted(applied, key=lambda e: e["version"])]
    visited = [s for i, s in enumerate(states) if i == 0 or s != states[i - 1]]
    # builds may all land before IAM is verified: then 'building' is passed through in one step
    assert [s for s in visited if s != "building"] == [s for s in HAPPY_PATH if s != "building"]
    effects = db.collection(settings.collection).document("happy-1").collection("effects").stream()
    assert all(e.to_dict()["status"] == "done" for e in effects)


def test_duplicate_start_and_duplicate_event_change_nothing(settings, db, daemon_factory):
    daemon_factory(settings)
    publish(settings, start_body("dup-1"))
    doc = wait_status(db, settings, "dup-1")
    assert doc["status"] == "succeeded"
    version = doc["version"]
    # the same start again (a new message), and an already-applied event delivered again
    publish(settings, start_body("dup-1"))
    first = next(e for e in audit(db, settings, "dup-1") if e["type"] == "build.succeeded")
    replay = {"run_id": "dup-1", "event_id": first["event_id"], "type": "build.succeeded", "item": first["item"],
              "data": {"image": "elsewhere"}}
    publish(settings, replay, topic=settings.events_topic, run_id="dup-1")
    publish(settings, replay, topic=settings.events_topic, run_id="dup-1")

    def duplicates() -> list[dict]:
        return [e for e in audit(db, settings, "dup-1") if e["outcome"] == "duplicate"]

    wait_for(lambda: len(duplicates()) >= 3, 20, "three duplicates recorded")
    after = run_doc(db, settings, "dup-1")
    assert after["version"] == version
    assert after["outputs"] == doc["outputs"]
    assert_consistent(db, settings, "dup-1")


def test_out_of_order_event_is_ignored_and_run_is_not_corrupted(settings, db, daemon_factory):
    # a fan-in item's event arrives while the run is still in preflight (held there by the test)
    import threading

    from handlers import standin

    release = threading.Event()

    def held_preflight(ctx):
        release.wait(30)
        return standin.HANDLERS["preflight"](ctx)

    daemon = daemon_factory(settings)
    daemon.effects.handlers["preflight"] = held_preflight
    publish(settings, start_body("ooo-1"))
    wait_for(lambda: (run_doc(db, settings, "ooo-1") or {}).get("state") == "preflight", 20, "preflight")
    early = {"run_id": "ooo-1", "event_id": "early-deploy", "type": "deploy.succeeded", "item": "publisher",
             "data": {"url": "http://wrong"}}
    publish(settings, early, topic=settings.events_topic, run_id="ooo-1")
    wait_for(lambda: any(e["event_id"] == "early-deploy" for e in audit(db, settings, "ooo-1")), 20, "early event")
    release.set()
    doc = wait_status(db, settings, "ooo-1")
    assert doc["status"] == "succeeded"
    assert doc["outputs"]["urls"]["publisher"] != "http://wrong"
    records = [e for e in audit(db, settings, "ooo-1") if e["event_id"] == "early-deploy"]
    assert [r["outcome"] for r in records] == ["ignored"]
    assert records[0]["detail"]
    assert_consistent(db, settings, "ooo-1")


def test_every_kind_of_bad_input_is_recorded_and_the_daemon_keeps_serving(settings, db, daemon_factory):
    daemon_factory(settings)
    bad = {
        "not-json": (b"{nope", settings.commands_topic, "invalid_message", "not JSON"),
        "not-utf8": (b"\xff\xfe\x00", settings.commands_topic, "invalid_message", "UTF-8"),
        "unknown-cmd": (json.dumps({"command": "explode", "run_id": "x"}).encode(), settings.commands_topic,
                        "invalid_message", "unknown command"),
        "schema": (json.dumps({"command": "cancel"}).encode(), settings.commands_topic, "invalid_message", "run_id"),
        "unknown-run-cmd": (json.dumps({"command": "cancel", "run_id": "ghost"}).encode(), settings.commands_topic,
                            "unknown_run", "ghost"),
        "unknown-run-event": (json.dumps({"run_id": "ghost", "event_id": "e1", "type": "build.succeeded"}).encode(),
                              settings.events_topic, "unknown_run", "ghost"),
        "bad-event-type": (json.dumps({"run_id": "r", "event_id": "e1", "type": "build.exploded"}).encode(),
                           settings.events_topic, "invalid_message", "unknown event type"),
    }
    ids = {name: publish(settings, body, topic=topic) for name, (body, topic, _r, _m) in bad.items()}
    records = wait_for(lambda: (r := rejected(db)) and all(i in r for i in ids.values()) and r, 30,
                       "every bad message recorded")
    for name, (body, _topic, reason, needle) in bad.items():
        record = records[ids[name]]
        assert record["reason"] == reason, (name, record)
        assert needle.lower() in record["message"].lower(), (name, record["message"])
        assert (record["body"] or "").encode() == body or record["body_base64"], name
    # still serving
    publish(settings, start_body("after-bad"))
    assert wait_status(db, settings, "after-bad")["status"] == "succeeded"


def test_invalid_architecture_fails_the_run_with_every_problem(settings, db, daemon_factory):
    daemon_factory(settings)
    broken = "name: demo\nproject_id: podium-local\ndataflows:\n  d:\n    services:\n      s:\n        name: s\n"
    publish(settings, start_body("bad-arch", broken))
    doc = wait_status(db, settings, "bad-arch")
    assert doc["status"] == "failed"
    assert doc["error"]["reason"] == "invalid_architecture"
    assert "service_account" in doc["error"]["message"]


def test_cancel_command(settings, db, daemon_factory):
    # a director that never answers keeps the run in awaiting_director: cancel it there
    daemon = daemon_factory(settings)
    daemon.effects.handlers["director.command"] = lambda ctx: []
    publish(settings, start_body("cancel-1"))
    wait_for(lambda: (run_doc(db, settings, "cancel-1") or {}).get("state") == "awaiting_director", 30,
             "awaiting_director")
    publish(settings, {"command": "cancel", "run_id": "cancel-1"})
    doc = wait_status(db, settings, "cancel-1")
    assert (doc["state"], doc["status"]) == ("cancelled", "cancelled")
    assert doc["wake_at"] is None
    assert_consistent(db, settings, "cancel-1")


def test_silent_director_fails_after_its_budget_then_retry_finishes(settings, db, daemon_factory):
    from handlers import standin

    settings = settings.model_copy(update={"director_ready_budget_seconds": 3.0})
    daemon = daemon_factory(settings)
    daemon.effects.handlers["director.command"] = lambda ctx: []
    publish(settings, start_body("silent-1"))
    doc = wait_status(db, settings, "silent-1")
    assert doc["status"] == "failed"
    assert doc["error"]["state"] == "awaiting_director"
    assert doc["error"]["reason"] == "timeout"
    assert "ServiceDirector" in doc["error"]["message"]
    builds_before = [e for e in audit(db, settings, "silent-1") if e["type"] == "build.succeeded"]

    daemon.effects.handlers["director.command"] = standin.director_reply
    publish(settings, {"command": "retry", "run_id": "silent-1"})
    wait_for(lambda: (run_doc(db, settings, "silent-1") or {}).get("status") == "succeeded", 30, "retry to finish")
    builds_after = [e for e in audit(db, settings, "silent-1") if e["type"] == "build.succeeded"]
    assert len(builds_after) == len(builds_before)  # nothing that succeeded was redone
    doc = run_doc(db, settings, "silent-1")
    assert doc["attempt"] == 1
    assert_consistent(db, settings, "silent-1")


def test_a_message_that_keeps_failing_transiently_is_dead_lettered_and_recorded(settings, db, daemon_factory):
    from google.api_core.exceptions import ServiceUnavailable

    daemon = daemon_factory(settings)
    real_start = daemon.store.start
    attempts: list[str] = []

    def flaky_start(run_id, *args, **kwargs):
        if run_id == "always-down":
            attempts.append(run_id)
            raise ServiceUnavailable("firestore is away")
        return real_start(run_id, *args, **kwargs)

    daemon.store.start = flaky_start
    publish(settings, start_body("always-down"))

    def dead_letter():  # the dead-letter topic gives the message a new id; the body is the original
        return next((r for r in rejected(db).values() if r["reason"] == "dead_lettered"), None)

    record = wait_for(dead_letter, 60, "the dead letter to be recorded")
    assert record["reason"] == "dead_lettered"
    assert record["attributes"]["CloudPubSubDeadLetterSourceDeliveryCount"] == str(settings.max_delivery_attempts)
    assert "always-down" in record["body"]
    assert len(attempts) >= settings.max_delivery_attempts
    # and the daemon still serves
    publish(settings, start_body("after-dlq"))
    assert wait_status(db, settings, "after-dlq")["status"] == "succeeded"
