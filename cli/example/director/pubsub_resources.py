"""Pub/Sub topics and subscriptions (the emulator locally, Pub/Sub on Google Cloud: one client)."""

from __future__ import annotations

import logging
from typing import Any

import google.cloud.pubsub_v1 as pubsub_v1  # no py.typed: imported as a module
from google.api_core import exceptions
from resource_kinds import CommandError, Spec, seconds

log = logging.getLogger("director")


class Topics:
    kind, section = "pubsub_topic", "topics"

    def __init__(self, project: str, publisher: pubsub_v1.PublisherClient) -> None:
        self.project, self.publisher = project, publisher

    def path(self, name: str) -> str:
        return name if name.startswith("projects/") else self.publisher.topic_path(self.project, name)

    def name(self, spec: Spec) -> str:
        return str(spec["name"])

    def location(self, spec: Spec) -> str:
        return "global"

    def ensure(self, spec: Spec) -> bool:
        try:
            self.publisher.create_topic(request={"name": self.path(spec["name"]),
                                                 "labels": dict(spec.get("labels") or {})})
        except exceptions.AlreadyExists:
            return False
        log.info("created topic %s", spec["name"])
        return True

    def delete(self, spec: Spec) -> bool:
        try:
            self.publisher.delete_topic(topic=self.path(spec["name"]))
        except exceptions.NotFound:
            return False
        log.info("deleted topic %s", spec["name"])
        return True


class Subscriptions:
    kind, section = "pubsub_subscription", "subscriptions"

    def __init__(self, topics: Topics, subscriber: pubsub_v1.SubscriberClient) -> None:
        self.topics, self.subscriber = topics, subscriber

    def path(self, name: str) -> str:
        if name.startswith("projects/"):
            return name
        return self.subscriber.subscription_path(self.topics.project, name)

    def name(self, spec: Spec) -> str:
        return str(spec["name"])

    def location(self, spec: Spec) -> str:
        return "global"

    def request(self, spec: Spec) -> dict[str, Any]:
        """The CreateSubscription request: the architecture's ack deadline, retention, backoff."""
        request: dict[str, Any] = {"name": self.path(spec["name"]), "topic": self.topics.path(spec["topic"]),
                                   "labels": dict(spec.get("labels") or {})}
        if spec.get("ack_deadline_seconds"):
            request["ack_deadline_seconds"] = int(spec["ack_deadline_seconds"])
        if spec.get("message_retention_duration"):
            request["message_retention_duration"] = {"seconds": int(seconds(spec["message_retention_duration"]))}
        retry = spec.get("retry_policy") or {}
        if retry:
            request["retry_policy"] = {
                key: {"seconds": int(seconds(retry[key]))}
                for key in ("minimum_backoff", "maximum_backoff") if retry.get(key)
            }
        return request

    def ensure(self, spec: Spec) -> bool:
        try:
            self.subscriber.create_subscription(request=self.request(spec))
        except exceptions.AlreadyExists:
            return False
        except exceptions.NotFound as exc:
            raise CommandError(f"its topic {spec['topic']} does not exist") from exc
        log.info("created subscription %s on %s", spec["name"], spec["topic"])
        return True

    def delete(self, spec: Spec) -> bool:
        try:
            self.subscriber.delete_subscription(subscription=self.path(spec["name"]))
        except exceptions.NotFound:
            return False
        log.info("deleted subscription %s", spec["name"])
        return True
