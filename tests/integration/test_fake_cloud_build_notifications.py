"""The Cloud Build fake publishes the real ``cloud-builds`` notifications on the Pub/Sub emulator.

Each test uses a project of its own (``fake-cb-<unique>``), so its ``cloud-builds`` topic is
fresh on the emulator, which has no reset. The message shape is that of "Subscribe to build
notifications" (https://cloud.google.com/build/docs/subscribe-build-notifications): data = the
Build resource as JSON, attributes ``buildId`` and ``status``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1  # type: ignore[attr-defined,unused-ignore]
from google.cloud.devtools import cloudbuild_v1 as cb

from handlers.image_builds.gcp import build_request
from machines.cloud_builds import event_from_cloud_build
from tests.fakes.cloud_build import BuildFakes, start_build_fakes

LOCATION = "europe-west1"


@pytest.fixture
def cb_project(unique: str) -> str:
    return f"fake-cb-{unique}"


@pytest.fixture
def fakes(publisher: pubsub_v1.PublisherClient, cb_project: str) -> Iterator[BuildFakes]:
    with start_build_fakes(
        cb_project, build_delay=0.05, queue_delay=0.02, repositories=[(LOCATION, "podium")], publisher=publisher
    ) as started:
        yield started


def _request(project: str, image_repo: str = "podium") -> cb.Build:
    return build_request(
        image=f"{LOCATION}-docker.pkg.dev/{project}/{image_repo}/svc:abc123def456",
        bucket=f"{project}_cloudbuild",
        object_name="source/svc-0123.tar.gz",
        module="",
        dockerfile=True,
        run_id="run-1",
        effect_id="build:svc:a0",
        service="svc",
    )


def _wait_final(fakes: BuildFakes, build_id: str, timeout: float = 10.0) -> cb.Build:
    deadline = time.monotonic() + timeout
    while (build := fakes.cloud_build.get(build_id)).status in (cb.Build.Status.QUEUED, cb.Build.Status.WORKING):
        assert time.monotonic() < deadline, f"build {build_id} did not finish"
        time.sleep(0.02)
    return build


def _pull_until(
    subscriber: pubsub_v1.SubscriberClient, subscription: str, final: str, timeout: float = 30.0
) -> list[Any]:
    messages: list[Any] = []
    deadline = time.monotonic() + timeout
    while not any(m.attributes.get("status") == final for m in messages):
        assert time.monotonic() < deadline, f"no {final} notification; got {[dict(m.attributes) for m in messages]}"
        response = subscriber.pull(request={"subscription": subscription, "max_messages": 10}, timeout=5)
        if response.received_messages:
            subscriber.acknowledge(
                request={"subscription": subscription, "ack_ids": [m.ack_id for m in response.received_messages]}
            )
            messages += [m.message for m in response.received_messages]
    return messages


def _tap(publisher: pubsub_v1.PublisherClient, subscriber: pubsub_v1.SubscriberClient, project: str) -> str:
    topic = publisher.topic_path(project, "cloud-builds")
    publisher.create_topic(name=topic)
    subscription = subscriber.subscription_path(project, "cloud-builds-tap")
    subscriber.create_subscription(name=subscription, topic=topic)
    return subscription


def test_each_status_change_is_published_on_cloud_builds(
    fakes: BuildFakes,
    publisher: pubsub_v1.PublisherClient,
    subscriber_client: pubsub_v1.SubscriberClient,
    cb_project: str,
) -> None:
    subscription = _tap(publisher, subscriber_client, cb_project)
    client = fakes.cloud_build_client()
    build_id = client.create_build(project_id=cb_project, build=_request(cb_project)).metadata.build.id
    assert _wait_final(fakes, build_id).status == cb.Build.Status.SUCCESS
    fakes.cloud_build.flush()
    assert fakes.cloud_build.publish_errors == []

    messages = _pull_until(subscriber_client, subscription, "SUCCESS")
    assert sorted(m.attributes["status"] for m in messages) == ["QUEUED", "SUCCESS", "WORKING"]
    for message in messages:
        assert dict(message.attributes) == {"buildId": build_id, "status": json.loads(message.data)["status"]}
    success = next(m for m in messages if m.attributes["status"] == "SUCCESS")
    doc = json.loads(success.data)
    assert doc["id"] == build_id and doc["projectId"] == cb_project
    assert doc["results"]["images"][0]["digest"].startswith("sha256:")
    event = event_from_cloud_build(success.data, dict(success.attributes))
    assert event is not None and event.type == "build.succeeded" and event.run_id == "run-1"


def test_a_failed_build_is_published_with_its_failure(
    fakes: BuildFakes,
    publisher: pubsub_v1.PublisherClient,
    subscriber_client: pubsub_v1.SubscriberClient,
    cb_project: str,
) -> None:
    subscription = _tap(publisher, subscriber_client, cb_project)
    client = fakes.cloud_build_client()
    request = _request(cb_project, image_repo="missing")
    build_id = client.create_build(project_id=cb_project, build=request).metadata.build.id
    assert _wait_final(fakes, build_id).status == cb.Build.Status.FAILURE

    messages = _pull_until(subscriber_client, subscription, "FAILURE")
    failure = next(m for m in messages if m.attributes["status"] == "FAILURE")
    doc = json.loads(failure.data)
    assert doc["failureInfo"]["type"] == "PUSH_FAILED"
    assert 'Repository "missing" not found' in doc["statusDetail"]
    event = event_from_cloud_build(failure.data, dict(failure.attributes))
    assert event is not None and event.type == "build.failed"


def test_without_the_topic_the_build_still_runs_and_the_publish_error_is_kept(
    fakes: BuildFakes, cb_project: str
) -> None:
    client = fakes.cloud_build_client()
    build_id = client.create_build(project_id=cb_project, build=_request(cb_project)).metadata.build.id
    assert _wait_final(fakes, build_id).status == cb.Build.Status.SUCCESS
    fakes.cloud_build.flush()
    assert fakes.cloud_build.publish_errors
    assert all(isinstance(e, gexc.NotFound) for e in fakes.cloud_build.publish_errors)
