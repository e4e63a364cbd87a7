"""google.iam.v1.IAMPolicy for Pub/Sub topics and subscriptions, which the emulator lacks.

The Pub/Sub emulator (cloud-pubsub-emulator 0.8.20) answers UNIMPLEMENTED to
``google.iam.v1.IAMPolicy/{Get,Set}IamPolicy`` and ``TestIamPermissions``; started with
``--enable_iam_integration`` it forwards every call, CreateTopic included, to a separate IAM
emulator that the Cloud SDK does not ship (INTERNAL "IAM emulator might be unavailable").
So topic and subscription policies are served here, on their own endpoint::

    fake = start_pubsub_iam()
    publisher = insecure_client(pubsub_v1.PublisherClient, fake.endpoint)
    publisher.set_iam_policy(request={"resource": "projects/p/topics/t", "policy": policy})

Names follow https://cloud.google.com/pubsub/docs/reference/rpc/google.pubsub.v1 (resource
``projects/{project}/topics/{topic}`` and ``projects/{project}/subscriptions/{sub}``); any
other name is INVALID_ARGUMENT. ``exists`` (e.g. ``exists_in(publisher, subscriber)`` against
the emulator) makes a missing topic or subscription NOT_FOUND, as the real API does. Policy
rules (etag, version, members) come from ``PolicyStore``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import grpc
from google.api_core import exceptions

from .grpc_server import FakeError, FakeServer
from .iam_policy import PolicyStore

_NAME = re.compile(r"^projects/[^/]+/(topics|subscriptions)/[^/]+$")


class PubsubIamFake:
    """A loopback server answering ``google.iam.v1.IAMPolicy`` for topics and subscriptions."""

    def __init__(self, exists: Callable[[str], bool] | None = None) -> None:
        self.policies = PolicyStore(exists=exists, resolve=_checked_name)
        self._server = FakeServer()
        self._server.add("google.iam.v1.IAMPolicy", self.policies.methods())
        self.endpoint = self._server.start()

    def stop(self) -> None:
        self._server.stop()


def start_pubsub_iam(exists: Callable[[str], bool] | None = None) -> PubsubIamFake:
    """Serve topic/subscription policies; without ``exists`` every well-formed name exists."""
    return PubsubIamFake(exists)


def exists_in(publisher: Any, subscriber: Any) -> Callable[[str], bool]:
    """An ``exists`` that asks Pub/Sub (the emulator) whether the topic/subscription is there."""

    def exists(resource: str) -> bool:
        try:
            if "/topics/" in resource:
                publisher.get_topic(request={"topic": resource})
            else:
                subscriber.get_subscription(request={"subscription": resource})
        except exceptions.NotFound:
            return False
        return True

    return exists


def _checked_name(resource: str) -> str:
    if not _NAME.match(resource):
        raise FakeError(grpc.StatusCode.INVALID_ARGUMENT,
                        f"Invalid resource name given (name={resource}): not a topic or subscription.")
    return resource
