"""Every transition is published to PODIUM_NOTIFICATIONS_TOPIC; a trace id given with the start
command travels on every message the daemon publishes for the run."""

from __future__ import annotations

import json

from google.cloud import pubsub_v1

from daemon.pubsub import ensure_daemon_plumbing, ensure_subscription
from tests.integration.conftest import publish, start_body, wait_status

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def _drain(subscriber: pubsub_v1.SubscriberClient, path: str, until: int = 200) -> list:
    messages, empty = [], 0
    while len(messages) < until and empty < 2:
        resp = subscriber.pull(request={"subscription": path, "max_messages": 100}, timeout=2)
        if not resp.received_messages:
            empty += 1
            continue
        subscriber.acknowledge(request={"subscription": path, "ack_ids": [m.ack_id for m in resp.received_messages]})
        messages += [m.message for m in resp.received_messages]
    return messages


def test_transitions_are_notified_and_the_trace_id_travels(settings, db, daemon_factory, unique):
    # Outcomes published (not applied eagerly, tests/integration/test_eager_outcomes.py): the
    # events topic then carries them, and the tap can check their trace id.
    settings = settings.model_copy(update={"notifications_topic": f"notify-{unique}", "eager_outcomes": False})
    ensure_daemon_plumbing(settings)
    subscriber = pubsub_v1.SubscriberClient()
    notify_sub = f"projects/{settings.project}/subscriptions/notify-tap-{unique}"
    events_tap = f"projects/{settings.project}/subscriptions/events-tap-{unique}"
    ensure_subscription(subscriber, settings.project, settings.notifications_topic, notify_sub.rsplit("/", 1)[1])
    ensure_subscription(subscriber, settings.project, settings.events_topic, events_tap.rsplit("/", 1)[1])
    daemon_factory(settings)

    publish(settings, start_body("notify-1"), traceparent=f"00-{TRACE}-00f067aa0ba902b7-01")
    doc = wait_status(db, settings, "notify-1")
    assert doc["status"] == "succeeded"
    assert doc["trace_id"] == TRACE

    notes = _drain(subscriber, notify_sub)
    bodies = [json.loads(m.data) for m in notes]
    assert bodies, "no notification published"
    assert all(set(b) >= {"run_id", "from", "to", "status", "version"} for b in bodies)
    assert bodies[-1]["to"] == "succeeded" or any(b["to"] == "succeeded" for b in bodies)
    assert all(b["from"] != b["to"] for b in bodies)  # transitions only, not recorded items
    assert all(m.attributes.get("trace_id") == TRACE for m in notes)

    events = _drain(subscriber, events_tap)
    assert events, "the tap saw no events"
    assert all(m.attributes.get("trace_id") == TRACE for m in events), [dict(m.attributes) for m in events][:3]
    subscriber.close()
