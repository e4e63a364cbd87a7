"""The testdata services as real processes against the real emulators.

The ServiceDirector's protocol (docs/internals.md), the tracer flow publisher -> subscriber through
a dataflow the director created, and each service's own preflight test (through
handlers.preflight, on tmp copies of the folders with a generated-style ``resources.yaml``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from google.api_core import exceptions
from google.cloud import pubsub_v1

from devtools.emulators import Emulators, free_port
from handlers.preflight import run_preflight

TESTDATA = Path(__file__).resolve().parents[2] / "testdata"
GENERATED = ("resources.yaml", "services.yaml", "__pycache__", ".pytest_cache", "*.log")


# --------------------------------------------------------------------------- helpers


def copy_service(name: str, dest_root: Path, resources: dict[str, Any] | None) -> Path:
    """A tmp copy of ``testdata/<name>`` with ``resources`` written as its resources.yaml."""
    dest = dest_root / name
    shutil.copytree(TESTDATA / name, dest, ignore=shutil.ignore_patterns(*GENERATED))
    if resources is not None:
        (dest / "resources.yaml").write_text(yaml.safe_dump(resources, sort_keys=False))
    return dest


def link(service: str, key: str) -> dict[str, Any]:
    return {"name": service, "lookup": {"key": key, "method": "yaml"}}


def director_resources(command_topic: str, completion_topic: str) -> dict[str, Any]:
    """The director's resources.yaml as config generation writes it (the `<director>-infra` flow)."""
    return {
        "topics": [
            {"name": completion_topic, "producer_service": link("director", "completion-topic-id")}
        ],
        "subscriptions": [
            {
                "name": f"{command_topic}-sub",
                "topic": command_topic,
                "consumer_service": link("director", "command-subscription-id"),
            }
        ],
    }


def tracer_resources(topic: str, subscription: str) -> dict[str, dict[str, Any]]:
    """resources.yaml of the publisher and of the subscriber."""
    return {
        "publisher": {
            "topics": [{"name": topic, "producer_service": link("publisher", "tracer-topic-id")}]
        },
        "subscriber": {
            "subscriptions": [
                {
                    "name": subscription,
                    "topic": topic,
                    "consumer_service": link("subscriber", "tracer-subscription-id"),
                }
            ]
        },
    }


@dataclass
class Service:
    """A testdata service started as ``python main.py`` in its folder."""

    name: str
    folder: Path
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def log(self) -> str:
        return (self.folder / "service.log").read_text(errors="replace")[-4000:]

    def get(self, path: str) -> requests.Response:
        return requests.get(f"http://127.0.0.1:{self.port}{path}", timeout=5)

    def json(self, path: str) -> dict[str, Any]:
        resp = self.get(path)
        assert resp.status_code == 200, (resp.status_code, resp.text, self.log)
        body: dict[str, Any] = resp.json()
        return body

    def wait_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"{self.name} exited early:\n{self.log}"
            try:
                if self.get("/healthz").status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{self.name} not healthy within {timeout} s:\n{self.log}")

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then the exit code (SIGKILL and a failure if it does not exit in time)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"{self.name} ignored SIGTERM for {timeout} s:\n{self.log}"
            ) from None


def start_service(name: str, folder: Path, project: str, **env: str) -> Service:
    port = free_port()
    full_env = {
        **os.environ,
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "PROJECT_ID": project,
        "SERVICE_NAME": name,
        "DATAFLOW_NAME": "tracer",
        "PYTHONUNBUFFERED": "1",
        **env,
    }
    with open(folder / "service.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "main.py"],
            cwd=folder,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    service = Service(name, folder, port, proc)
    try:
        service.wait_healthy()
    except BaseException:
        service.proc.kill()
        service.proc.wait()
        raise
    return service


@dataclass
class Reply:
    envelope: dict[str, Any]
    attributes: dict[str, str]
    ordering_key: str


@dataclass
class DirectorHarness:
    """The running director, a way to send it commands and the inbox its replies land in."""

    director: Service
    project: str
    command_topic: str
    command_subscription: str
    reply_topic: str
    reply_subscription: str
    publisher: pubsub_v1.PublisherClient
    subscriber: pubsub_v1.SubscriberClient
    inbox: dict[str, list[Reply]] = field(default_factory=lambda: defaultdict(list))

    def send_raw(self, data: bytes) -> None:
        topic = self.publisher.topic_path(self.project, self.command_topic)
        self.publisher.publish(topic, data).result(timeout=30)

    def send(
        self,
        instruction: str,
        *,
        command_id: str | None = None,
        run_id: str = "run-it",
        dataflow: str = "tracer",
        payload: dict[str, Any] | None = None,
    ) -> str:
        command_id = command_id or f"cmd-{uuid.uuid4().hex[:8]}"
        command = {
            "instruction": instruction,
            "command_id": command_id,
            "run_id": run_id,
            "dataflow": dataflow,
            "reply_to": self.reply_topic,
            "payload": payload or {},
        }
        self.send_raw(json.dumps(command).encode())
        return command_id

    def replies(self, command_id: str, count: int = 1, timeout: float = 30.0) -> list[Reply]:
        """Wait until ``count`` replies to ``command_id`` arrived (others are kept for later)."""
        subscription = self.subscriber.subscription_path(self.project, self.reply_subscription)
        deadline = time.monotonic() + timeout
        while len(self.inbox[command_id]) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{len(self.inbox[command_id])} of {count} replies to {command_id} within "
                    f"{timeout} s; replies seen for {sorted(self.inbox)}\n{self.director.log}"
                )
            try:
                resp = self.subscriber.pull(subscription=subscription, max_messages=50, timeout=3)
            except exceptions.DeadlineExceeded:
                continue
            for received in resp.received_messages:
                msg = received.message
                envelope = json.loads(msg.data)
                reply = Reply(envelope, dict(msg.attributes), msg.ordering_key)
                self.inbox[envelope["data"]["command_id"]].append(reply)
            if resp.received_messages:
                self.subscriber.acknowledge(
                    subscription=subscription,
                    ack_ids=[r.ack_id for r in resp.received_messages],
                )
        return self.inbox[command_id]

    def reply(self, command_id: str, timeout: float = 30.0) -> Reply:
        return self.replies(command_id, 1, timeout)[0]

    def topic_exists(self, name: str) -> bool:
        try:
            self.publisher.get_topic(topic=self.publisher.topic_path(self.project, name))
        except exceptions.NotFound:
            return False
        return True

    def get_subscription(self, name: str) -> pubsub_v1.types.Subscription | None:
        try:
            return self.subscriber.get_subscription(
                subscription=self.subscriber.subscription_path(self.project, name)
            )
        except exceptions.NotFound:
            return None


@pytest.fixture(scope="module")
def harness(
    emulators: Emulators, project: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DirectorHarness]:
    suffix = uuid.uuid4().hex[:8]
    command_topic = f"director-commands-{suffix}"
    reply_topic = f"podium-events-{suffix}"
    folder = copy_service(
        "director",
        tmp_path_factory.mktemp("director"),
        director_resources(command_topic, f"director-completions-{suffix}"),
    )
    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    publisher.create_topic(name=publisher.topic_path(project, reply_topic))
    subscriber.create_subscription(
        request={
            "name": subscriber.subscription_path(project, f"{reply_topic}-it"),
            "topic": publisher.topic_path(project, reply_topic),
            "enable_message_ordering": True,  # like the daemon's events subscription
        }
    )
    director = start_service("director", folder, project, DATAFLOW_NAME="conductor")
    harness = DirectorHarness(
        director=director,
        project=project,
        command_topic=command_topic,
        command_subscription=f"{command_topic}-sub",
        reply_topic=reply_topic,
        reply_subscription=f"{reply_topic}-it",
        publisher=publisher,
        subscriber=subscriber,
    )
    try:
        yield harness
        assert director.proc.poll() is None, f"the director died:\n{director.log}"
        assert director.stop() == 0, (
            f"the director did not exit cleanly on SIGTERM:\n{director.log}"
        )
    finally:
        if director.proc.poll() is None:
            director.proc.kill()
            director.proc.wait()
        publisher.stop()
        subscriber.close()


def tracer_payload(topic: str, subscription: str, ack_deadline: int = 30) -> dict[str, Any]:
    """``dataflow-setup``'s payload: the dataflow's resources as in the architecture."""
    return {
        "resources": {
            "topics": [{"name": topic, "producer_service": link("publisher", "tracer-topic-id")}],
            "subscriptions": [
                {
                    "name": subscription,
                    "topic": topic,
                    "ack_deadline_seconds": ack_deadline,
                    "consumer_service": link("subscriber", "tracer-subscription-id"),
                }
            ],
        }
    }


# --------------------------------------------------------------------------- the director


def test_director_creates_its_command_topic_and_subscription(harness: DirectorHarness) -> None:
    assert harness.topic_exists(harness.command_topic)
    sub = harness.get_subscription(harness.command_subscription)
    assert sub is not None
    assert sub.topic.endswith(f"/topics/{harness.command_topic}")
    assert sub.ack_deadline_seconds == 20
    assert harness.director.json("/healthz")["ready"] is True


def test_ping_is_answered_ready_on_reply_to_ordered_by_run(harness: DirectorHarness) -> None:
    command_id = harness.send("ping", run_id="run-ping")

    reply = harness.reply(command_id)

    assert reply.envelope == {
        "run_id": "run-ping",
        "event_id": f"director~{command_id}~ready",
        "type": "director.ready",
        "item": "director",
        "data": {"command_id": command_id},
    }
    assert reply.attributes == {"run_id": "run-ping"}
    assert reply.ordering_key == "run-ping"


def test_dataflow_setup_is_idempotent_per_command_and_per_resource(
    harness: DirectorHarness, unique: str
) -> None:
    topic, sub = f"tracer-topic-{unique}", f"tracer-sub-{unique}"
    payload = tracer_payload(topic, sub, ack_deadline=30)

    first = harness.send("dataflow-setup", run_id="run-setup", payload=payload)
    reply = harness.reply(first)
    resources = [  # what exists for the dataflow, as outputs.resources records it
        {"kind": "pubsub_topic", "name": topic, "dataflow": "tracer", "location": "global"},
        {"kind": "pubsub_subscription", "name": sub, "dataflow": "tracer", "location": "global"},
    ]

    assert reply.envelope == {
        "run_id": "run-setup",
        "event_id": f"director~{first}~dataflow_complete",
        "type": "director.dataflow_complete",
        "item": "tracer",
        "data": {"command_id": first, "created": [topic, sub], "existed": [], "resources": resources},
    }
    assert harness.topic_exists(topic)
    created_sub = harness.get_subscription(sub)
    assert created_sub is not None
    assert created_sub.ack_deadline_seconds == 30

    # The same command again: the same reply, the work is not redone.
    harness.send("dataflow-setup", command_id=first, run_id="run-setup", payload=payload)
    again = harness.replies(first, count=2)[1]
    assert again.envelope == reply.envelope
    assert again.ordering_key == "run-setup"

    # A new command for the same resources: nothing is created twice.
    second = harness.send("dataflow-setup", run_id="run-setup", payload=payload)
    assert harness.reply(second).envelope["data"] == {
        "command_id": second,
        "created": [],
        "existed": [topic, sub],
        "resources": resources,
    }
    topics = [
        t.name
        for t in harness.publisher.list_topics(project=f"projects/{harness.project}")
        if t.name.endswith(unique)
    ]
    assert topics == [harness.publisher.topic_path(harness.project, topic)]


def test_bad_commands_are_answered_or_dropped_never_fatal(
    harness: DirectorHarness, unique: str
) -> None:
    harness.send_raw(b"this is not json")
    harness.send_raw(b"[1, 2, 3]")
    harness.send_raw(json.dumps({"instruction": "ping", "command_id": "no-reply-to"}).encode())

    unknown = harness.send("explode", run_id="run-bad")
    reply = harness.reply(unknown)
    assert reply.envelope["type"] == "director.failed"
    assert reply.envelope["event_id"] == f"director~{unknown}~failed"
    assert "unknown instruction 'explode'" in reply.envelope["data"]["error"]

    orphan = {"name": f"orphan-sub-{unique}", "topic": f"no-such-topic-{unique}"}
    no_topic = harness.send(
        "dataflow-setup", run_id="run-bad", payload={"resources": {"subscriptions": [orphan]}}
    )
    error = harness.reply(no_topic).envelope["data"]["error"]
    assert f"no-such-topic-{unique} does not exist" in error

    malformed = harness.send("dataflow-setup", run_id="run-bad", payload={"resources": ["x"]})
    assert "payload.resources must be a map" in harness.reply(malformed).envelope["data"]["error"]

    # Still alive and answering.
    alive = harness.send("ping", run_id="run-bad")
    assert harness.reply(alive).envelope["type"] == "director.ready"
    assert harness.director.proc.poll() is None
    assert "no-reply-to" not in harness.inbox


def test_dependent_setup_records_urls_and_teardown_deletes_only_the_payload(
    harness: DirectorHarness, unique: str
) -> None:
    topic, sub = f"tracer-topic-{unique}", f"tracer-sub-{unique}"
    bystander = f"bystander-{unique}"
    harness.publisher.create_topic(name=harness.publisher.topic_path(harness.project, bystander))
    setup = harness.send("dataflow-setup", run_id="run-td", payload=tracer_payload(topic, sub))
    assert harness.reply(setup).envelope["type"] == "director.dataflow_complete"

    dependent = harness.send(
        "dependent-resource-setup",
        run_id="run-td",
        payload={"service_urls": {"subscriber": "http://127.0.0.1:1", "publisher": "http://x"}},
    )
    reply = harness.reply(dependent).envelope
    assert reply["type"] == "director.dependent_complete"
    assert reply["event_id"] == f"director~{dependent}~dependent_complete"
    assert reply["data"] == {"command_id": dependent, "services": ["publisher", "subscriber"],
                             "created": [], "existed": [], "resources": []}  # no scheduler job here

    teardown = harness.send("teardown", run_id="run-td", payload=tracer_payload(topic, sub))
    reply = harness.reply(teardown).envelope
    assert reply["type"] == "director.dataflow_complete"
    removed = reply["data"].pop("removed")
    assert reply["data"] == {
        "command_id": teardown,
        "instruction": "teardown",
        "deleted": [sub, topic],
        "missing": [],
    }
    assert [(r["kind"], r["name"]) for r in removed] == [("pubsub_subscription", sub), ("pubsub_topic", topic)]
    assert not harness.topic_exists(topic)
    assert harness.get_subscription(sub) is None
    assert harness.topic_exists(bystander)
    assert harness.topic_exists(harness.command_topic)


# --------------------------------------------------------------------------- the tracer flow


def test_tracer_messages_reach_the_subscriber_once_the_director_made_the_dataflow(
    harness: DirectorHarness, tmp_path: Path, unique: str
) -> None:
    topic, sub = f"tracer-topic-{unique}", f"tracer-sub-{unique}"
    files = tracer_resources(topic, sub)
    pub = start_service(
        "publisher",
        copy_service("publisher", tmp_path, files["publisher"]),
        harness.project,
        PUBLISH_INTERVAL_SECONDS="0.2",
    )
    subscriber = start_service(
        "subscriber", copy_service("subscriber", tmp_path, files["subscriber"]), harness.project
    )
    try:
        # Both started before their topic and subscription exist: they wait quietly.
        time.sleep(1.0)
        assert pub.json("/healthz") == {"service": "publisher", "published": 0}
        assert subscriber.json("/stats") == {"received": 0}

        setup = harness.send(
            "dataflow-setup", run_id="run-tracer", payload=tracer_payload(topic, sub)
        )
        assert harness.reply(setup).envelope["data"]["created"] == [topic, sub]

        counts: list[int] = []
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and not (len(counts) >= 2 and counts[-1] > counts[0] > 0):
            received = subscriber.json("/stats")["received"]
            if received > 0 and (not counts or received > counts[-1]):
                counts.append(received)
            time.sleep(0.3)
        assert len(counts) >= 2 and counts[-1] > counts[0] > 0, (
            f"the subscriber's count did not grow: {counts}\n"
            f"publisher:\n{pub.log}\nsubscriber:\n{subscriber.log}"
        )
        assert pub.json("/healthz")["published"] > 0
        assert subscriber.json("/healthz")["service"] == "subscriber"
        assert pub.get("/nope").status_code == 404
    finally:
        pub_code, sub_code = pub.stop(), subscriber.stop()
    assert pub_code == 0, pub.log
    assert sub_code == 0, subscriber.log
    assert "Traceback" not in pub.log, pub.log
    assert "Traceback" not in subscriber.log, subscriber.log


# --------------------------------------------------------------------------- preflight


PREFLIGHT_CASES = {
    "publisher": (
        tracer_resources("tracer-topic", "tracer-sub")["publisher"],
        ["tracer-topic-id"],
    ),
    "subscriber": (
        tracer_resources("tracer-topic", "tracer-sub")["subscriber"],
        ["tracer-subscription-id"],
    ),
    "director": (
        director_resources("director-commands", "director-completions"),
        ["command-subscription-id", "completion-topic-id"],
    ),
}


@pytest.mark.parametrize("service", sorted(PREFLIGHT_CASES))
def test_service_preflight_passes_with_its_keys(service: str, tmp_path: Path) -> None:
    resources, _ = PREFLIGHT_CASES[service]
    folder = copy_service(service, tmp_path, resources)

    result = run_preflight(service, folder, timeout=120)

    assert result.passed, result.output_tail
    assert result.reason == "passed"


@pytest.mark.parametrize(
    ("service", "missing"),
    [(s, key) for s, (_, keys) in sorted(PREFLIGHT_CASES.items()) for key in keys],
)
def test_service_preflight_names_the_missing_key_and_the_file(
    service: str, missing: str, tmp_path: Path
) -> None:
    resources, _ = PREFLIGHT_CASES[service]
    text = yaml.safe_dump(resources).replace(f"key: {missing}", "key: something-else")
    folder = copy_service(service, tmp_path, yaml.safe_load(text))

    result = run_preflight(service, folder, timeout=120)

    assert result.reason == "failed", result.output_tail
    assert (
        f"lookup key {missing!r} is missing from {folder / 'resources.yaml'}" in result.output_tail
    )


@pytest.mark.parametrize("service", sorted(PREFLIGHT_CASES))
def test_service_preflight_without_resources_yaml_says_so(service: str, tmp_path: Path) -> None:
    folder = copy_service(service, tmp_path, None)

    result = run_preflight(service, folder, timeout=120)

    assert result.reason == "failed"
    assert f"no resources.yaml at {folder / 'resources.yaml'}" in result.output_tail
