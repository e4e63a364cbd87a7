"""Pub/Sub plumbing shared by the daemon and the CLI: topic/subscription setup and publishing."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from typing import Any

import google.cloud.pubsub_v1 as pubsub_v1  # no py.typed: imported as a module, mypy reads it as Any
from google.api_core import exceptions as gexc
from google.protobuf import duration_pb2

from daemon.config import Settings
from machines.messages import Event


def topic_path(project: str, topic: str) -> str:
    return f"projects/{project}/topics/{topic}"


def sub_path(project: str, sub: str) -> str:
    return f"projects/{project}/subscriptions/{sub}"


def ensure_topic(publisher: pubsub_v1.PublisherClient, project: str, topic: str) -> None:
    with contextlib.suppress(gexc.AlreadyExists):
        publisher.create_topic(request={"name": topic_path(project, topic)})


def ensure_subscription(
    subscriber: pubsub_v1.SubscriberClient,
    project: str,
    topic: str,
    sub: str,
    *,
    dead_letter_topic: str | None = None,
    max_delivery_attempts: int = 5,
    ordering: bool = False,
    ack_deadline: int = 60,
) -> None:
    request: dict[str, Any] = {
        "name": sub_path(project, sub),
        "topic": topic_path(project, topic),
        "ack_deadline_seconds": ack_deadline,
        "enable_message_ordering": ordering,
        "retry_policy": {
            "minimum_backoff": duration_pb2.Duration(seconds=1),
            "maximum_backoff": duration_pb2.Duration(seconds=60),
        },
    }
    if dead_letter_topic:
        request["dead_letter_policy"] = {
            "dead_letter_topic": topic_path(project, dead_letter_topic),
            "max_delivery_attempts": max_delivery_attempts,
        }
    with contextlib.suppress(gexc.AlreadyExists):
        subscriber.create_subscription(request=request)


def ensure_daemon_plumbing(settings: Settings) -> None:
    """The daemon's own topics and subscriptions (DESIGN.md §3), created if missing."""
    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    try:
        p = settings.project
        for topic in (settings.commands_topic, settings.events_topic, settings.dead_letter_topic):
            ensure_topic(publisher, p, topic)
        if settings.notifications_topic:
            ensure_topic(publisher, p, settings.notifications_topic)
        ensure_subscription(subscriber, p, settings.dead_letter_topic, settings.dead_letter_subscription)
        ensure_subscription(
            subscriber, p, settings.commands_topic, settings.commands_subscription,
            dead_letter_topic=settings.dead_letter_topic, max_delivery_attempts=settings.max_delivery_attempts,
            ack_deadline=settings.ack_deadline_seconds,
        )
        ensure_subscription(
            subscriber, p, settings.events_topic, settings.events_subscription,
            dead_letter_topic=settings.dead_letter_topic, max_delivery_attempts=settings.max_delivery_attempts,
            ordering=settings.events_ordering, ack_deadline=settings.ack_deadline_seconds,
        )
        if settings.backend == "gcp":  # Cloud Build publishes here once its API is enabled
            ensure_topic(publisher, p, settings.cloud_builds_topic)
            ensure_subscription(
                subscriber, p, settings.cloud_builds_topic, settings.cloud_builds_subscription,
                dead_letter_topic=settings.dead_letter_topic, max_delivery_attempts=settings.max_delivery_attempts,
            )
    finally:
        subscriber.close()


class EventPublisher:
    """Publishes events (attribute ``run_id``; with ``ordered``, also the ordering key) and waits
    for the server's ack."""

    def __init__(self, project: str, topic: str, timeout: float = 30.0, *, ordered: bool = False) -> None:
        self.ordered = ordered
        self.client = pubsub_v1.PublisherClient(
            publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=ordered)
        )
        self.topic = topic_path(project, topic)
        self.timeout = timeout

    def publish(self, event: Event, attributes: Mapping[str, str]) -> str:
        attrs = {"run_id": event.run_id, **attributes}
        key = {"ordering_key": event.run_id} if self.ordered else {}
        try:
            future = self.client.publish(self.topic, event.to_json(), **key, **attrs)
            return str(future.result(timeout=self.timeout))
        except Exception:
            if self.ordered:  # an ordered key stops after a failure until resumed; the effect is retried later
                self.client.resume_publish(self.topic, event.run_id)
            raise

    def publish_json(self, topic: str, body: Mapping[str, Any], attributes: Mapping[str, str]) -> str:
        future = self.client.publish(topic, json.dumps(body).encode(), **attributes)
        return str(future.result(timeout=self.timeout))


def publish_command(settings: Settings, body: Mapping[str, Any], attributes: Mapping[str, str] | None = None) -> str:
    """What a user does: publish one command to the commands topic."""
    publisher = pubsub_v1.PublisherClient()
    future = publisher.publish(
        topic_path(settings.project, settings.commands_topic), json.dumps(body).encode(), **(attributes or {})
    )
    return str(future.result(timeout=30))
