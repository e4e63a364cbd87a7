"""ServiceDirector: creates and deletes a dataflow's Pub/Sub resources on command.

Start-up: reads ``command-subscription-id`` and ``completion-topic-id`` from the ``resources.yaml``
written beside this file (the command topic is that subscription's ``topic``), creates the command
topic and subscription if missing, and streaming-pulls commands (docs/internals.md, "Director
protocol"). Each command is carried out first; its reply (an event envelope) is published to the
command's ``reply_to`` with ordering key = run_id; only then is the command acked, so a command is
answered at least once. A command_id already answered is answered again with the same reply,
without redoing the work. Transient errors nack the command (Pub/Sub redelivers it); anything else
is answered with ``director.failed``.

Run: ``python main.py`` in this folder, with PORT, PROJECT_ID and (locally) PUBSUB_EMULATOR_HOST.
``services.yaml`` (the whole architecture) may sit beside this file too: the payloads carry
everything the director needs, so it is not read.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import signal
import threading
from collections import OrderedDict
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import google.cloud.pubsub_v1 as pubsub_v1  # no py.typed: imported as a module, mypy reads it as Any
import yaml
from google.api_core import exceptions

HERE = Path(__file__).resolve().parent
RESOURCES_FILE = HERE / "resources.yaml"
COMMAND_SUBSCRIPTION_KEY = "command-subscription-id"
COMPLETION_TOPIC_KEY = "completion-topic-id"
COMMAND_ACK_DEADLINE_SECONDS = 20
MAX_REMEMBERED_COMMANDS = 10_000
RETRY_SECONDS = 1.0
PUBLISH_TIMEOUT_SECONDS = 30.0

# Errors worth a redelivery: the command is nacked and tried again.
TRANSIENT = (
    exceptions.ServiceUnavailable,
    exceptions.DeadlineExceeded,
    exceptions.InternalServerError,
    exceptions.TooManyRequests,
    exceptions.Aborted,
    exceptions.RetryError,
    concurrent.futures.TimeoutError,
)

log = logging.getLogger("director")


def load_lookups(path: Path = RESOURCES_FILE) -> dict[str, str]:
    """``resources.yaml`` as ``{lookup.key: resource name}`` (e.g. tracer-topic-id -> tracer-topic)."""
    doc = yaml.safe_load(path.read_text()) or {}
    lookups: dict[str, str] = {}
    for resources in doc.values():  # topics, subscriptions, ...
        for resource in resources if isinstance(resources, list) else []:
            for link in resource.values():  # producer_service, consumer_service, ...
                for item in link if isinstance(link, list) else [link]:
                    lookup = item.get("lookup") if isinstance(item, dict) else None
                    if (
                        isinstance(lookup, dict)
                        and lookup.get("key")
                        and lookup.get("method", "yaml") in ("yaml", "", None)
                    ):
                        lookups[lookup["key"]] = resource["name"]
    return lookups


class CommandError(Exception):
    """A command that cannot be carried out as given; it is answered with director.failed."""


class Director:
    def __init__(self, project: str) -> None:
        self.project = project
        options = pubsub_v1.types.PublisherOptions(enable_message_ordering=True)
        self.publisher = pubsub_v1.PublisherClient(publisher_options=options)
        self.subscriber = pubsub_v1.SubscriberClient()
        self.service_urls: dict[str, dict[str, str]] = {}  # dataflow -> {service: url}
        self._answered: OrderedDict[str, dict[str, Any]] = OrderedDict()  # command_id -> reply
        self._lock = threading.Lock()
        self.instructions: dict[str, Callable[[dict[str, Any]], tuple[str, dict[str, Any]]]] = {
            "ping": self.ping,
            "dataflow-setup": self.dataflow_setup,
            "dependent-resource-setup": self.dependent_setup,
            "teardown": self.teardown,
        }

    # -- resources (idempotent) ------------------------------------------------------------

    def topic_path(self, name: str) -> str:
        return (
            name if name.startswith("projects/") else self.publisher.topic_path(self.project, name)
        )

    def subscription_path(self, name: str) -> str:
        if name.startswith("projects/"):
            return name
        return self.subscriber.subscription_path(self.project, name)

    def ensure_topic(self, name: str) -> bool:
        """Create the topic; False if it already existed."""
        try:
            self.publisher.create_topic(name=self.topic_path(name))
        except exceptions.AlreadyExists:
            return False
        log.info("created topic %s", name)
        return True

    def ensure_subscription(self, name: str, topic: str, ack_deadline: int | None = None) -> bool:
        """Create the subscription on ``topic``; False if it already existed."""
        request: dict[str, Any] = {
            "name": self.subscription_path(name),
            "topic": self.topic_path(topic),
        }
        if ack_deadline:
            request["ack_deadline_seconds"] = int(ack_deadline)
        try:
            self.subscriber.create_subscription(request=request)
        except exceptions.AlreadyExists:
            return False
        except exceptions.NotFound as exc:
            raise CommandError(f"subscription {name}: its topic {topic} does not exist") from exc
        log.info("created subscription %s on %s", name, topic)
        return True

    def delete_topic(self, name: str) -> bool:
        try:
            self.publisher.delete_topic(topic=self.topic_path(name))
        except exceptions.NotFound:
            return False
        log.info("deleted topic %s", name)
        return True

    def delete_subscription(self, name: str) -> bool:
        try:
            self.subscriber.delete_subscription(subscription=self.subscription_path(name))
        except exceptions.NotFound:
            return False
        log.info("deleted subscription %s", name)
        return True

    # -- instructions: each returns (event type, data) ------------------------------------

    def ping(self, command: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return "director.ready", {}

    def dataflow_setup(self, command: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        topics, subscriptions, ignored = dataflow_resources(command)
        created: list[str] = []
        existed: list[str] = []
        for topic in topics:  # topics first: subscriptions need them
            (created if self.ensure_topic(topic["name"]) else existed).append(topic["name"])
        for sub in subscriptions:
            made = self.ensure_subscription(
                sub["name"], sub["topic"], sub.get("ack_deadline_seconds")
            )
            (created if made else existed).append(sub["name"])
        dataflow = str(command.get("dataflow"))
        # What now exists for the dataflow, in the shape the daemon records (outputs.resources).
        resources = [{"kind": "pubsub_topic", "name": t["name"], "dataflow": dataflow, "location": "global"}
                     for t in topics]
        resources += [{"kind": "pubsub_subscription", "name": s["name"], "dataflow": dataflow,
                       "location": "global"} for s in subscriptions]
        data: dict[str, Any] = {"created": created, "existed": existed, "resources": resources}
        if ignored:
            data["ignored"] = ignored
        return "director.dataflow_complete", data

    def dependent_setup(self, command: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        # Locally there are no Cloud Scheduler jobs to point at the services: remember the URLs.
        urls = command["payload"].get("service_urls") or {}
        if not isinstance(urls, dict):
            raise CommandError("payload.service_urls must be a map of service name to URL")
        with self._lock:
            self.service_urls[str(command.get("dataflow"))] = {
                str(k): str(v) for k, v in urls.items()
            }
        return "director.dependent_complete", {"services": sorted(urls)}

    def teardown(self, command: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        topics, subscriptions, _ = dataflow_resources(command)
        deleted: list[str] = []
        missing: list[str] = []
        for sub in subscriptions:  # subscriptions first, then their topics
            (deleted if self.delete_subscription(sub["name"]) else missing).append(sub["name"])
        for topic in topics:
            (deleted if self.delete_topic(topic["name"]) else missing).append(topic["name"])
        data = {"instruction": "teardown", "deleted": deleted, "missing": missing}
        return "director.dataflow_complete", data

    # -- commands ---------------------------------------------------------------------------

    def reply_for(self, command_id: str, command: dict[str, Any]) -> dict[str, Any]:
        """The reply envelope: remembered for a command_id already answered, else do the work."""
        with self._lock:
            if command_id in self._answered:
                log.info("command %s already answered; sending the same reply", command_id)
                return self._answered[command_id]
        instruction = command.get("instruction")
        command = {**command, "payload": command.get("payload") or {}}
        try:
            handler = self.instructions.get(str(instruction))
            if handler is None:
                raise CommandError(
                    f"unknown instruction {instruction!r}; expected one of {sorted(self.instructions)}"
                )
            if not isinstance(command["payload"], dict):
                raise CommandError("payload must be a JSON object")
            event_type, data = handler(command)
        except TRANSIENT:
            raise
        except Exception as exc:  # anything else is an answer, not a crash
            log.warning("command %s (%s) failed: %s", command_id, instruction, exc)
            event_type, data = "director.failed", {"error": f"{instruction}: {exc}"}
        envelope = {
            "run_id": command["run_id"],
            "event_id": f"director~{command_id}~{event_type.removeprefix('director.')}",
            "type": event_type,
            "item": "director" if instruction == "ping" else command.get("dataflow") or "director",
            "data": {"command_id": command_id, **data},
        }
        with self._lock:  # a concurrent duplicate may have answered first: keep one answer
            envelope = self._answered.setdefault(command_id, envelope)
            while len(self._answered) > MAX_REMEMBERED_COMMANDS:
                self._answered.popitem(last=False)
        return envelope

    def on_message(self, message: Any) -> None:
        """Streaming-pull callback: work, publish the reply, then ack. Never raises."""
        try:
            command = json.loads(message.data)
            if not isinstance(command, dict):
                raise ValueError("a command is a JSON object")
        except ValueError as exc:  # also UnicodeDecodeError
            log.error(
                "unreadable command (message %s: %s), acked: %.200r",
                message.message_id,
                exc,
                message.data,
            )
            message.ack()
            return
        run_id, reply_to = command.get("run_id"), command.get("reply_to")
        if not (isinstance(run_id, str) and run_id and isinstance(reply_to, str) and reply_to):
            log.error(
                "command without run_id or reply_to cannot be answered, acked: %.200r", message.data
            )
            message.ack()
            return
        command_id = str(command.get("command_id") or f"message-{message.message_id}")
        try:
            envelope = self.reply_for(command_id, command)
            self.publish_reply(reply_to, envelope)
        except (exceptions.NotFound, exceptions.InvalidArgument) as exc:
            log.error(
                "run %s: cannot reply to %s (%s); command %s acked",
                run_id,
                reply_to,
                exc,
                command_id,
            )
            message.ack()
        except Exception as exc:
            log.warning("run %s: command %s will be redelivered: %s", run_id, command_id, exc)
            message.nack()
        else:
            log.info("run %s: command %s answered %s", run_id, command_id, envelope["type"])
            message.ack()

    def publish_reply(self, reply_to: str, envelope: dict[str, Any]) -> None:
        topic, run_id = self.topic_path(reply_to), envelope["run_id"]
        body = json.dumps(envelope).encode()
        try:
            self.publisher.publish(topic, body, ordering_key=run_id, run_id=run_id).result(
                timeout=PUBLISH_TIMEOUT_SECONDS
            )
        except Exception:
            self.publisher.resume_publish(topic, run_id)  # an ordering key pauses on failure
            raise


def dataflow_resources(command: dict[str, Any]) -> tuple[list[dict], list[dict], list[str]]:
    """(topics, subscriptions, other kinds present) from ``payload.resources``."""
    resources = command["payload"].get("resources") or {}
    if not isinstance(resources, dict):
        raise CommandError("payload.resources must be a map like the architecture's resources")
    topics = resources.get("topics") or []
    subscriptions = resources.get("subscriptions") or []
    for kind, items, fields in (
        ("topics", topics, ("name",)),
        ("subscriptions", subscriptions, ("name", "topic")),
    ):
        for item in items:
            if not (
                isinstance(item, dict)
                and all(isinstance(item.get(f), str) and item[f] for f in fields)
            ):
                raise CommandError(
                    f"each of payload.resources.{kind} needs {' and '.join(fields)}: {item!r}"
                )
    ignored = sorted(k for k, v in resources.items() if v and k not in ("topics", "subscriptions"))
    if ignored:
        log.warning("the local director only manages Pub/Sub; ignoring %s", ignored)
    return topics, subscriptions, ignored


def serve_http(
    port: int, routes: dict[str, Callable[[], tuple[int, dict[str, Any]]]]
) -> ThreadingHTTPServer:
    """Answer ``GET <path>`` with the JSON its route returns, on a daemon thread."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            route = routes.get(self.path.split("?")[0])
            if route is None:
                self.send_error(404)
                return
            status, payload = route()
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # keep health probes quiet
            pass

    server = ThreadingHTTPServer((os.environ.get("HOST", "0.0.0.0"), port), Handler)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server


def read_startup_config() -> tuple[str, str, str, int]:
    """(project, command topic, command subscription, its ack deadline) or exit with why not."""
    project = os.environ.get("PROJECT_ID")
    if not project:
        raise SystemExit("director: PROJECT_ID is not set")
    if not RESOURCES_FILE.is_file():
        raise SystemExit(f"director: no resources.yaml at {RESOURCES_FILE}")
    lookups = load_lookups()
    missing = [k for k in (COMMAND_SUBSCRIPTION_KEY, COMPLETION_TOPIC_KEY) if k not in lookups]
    if missing:
        raise SystemExit(f"director: {RESOURCES_FILE} has no lookup key(s) {missing}")
    subscription = lookups[COMMAND_SUBSCRIPTION_KEY]
    doc = yaml.safe_load(RESOURCES_FILE.read_text())
    subs = doc.get("subscriptions") or []
    entry: dict[str, Any] = next((s for s in subs if s.get("name") == subscription), {})
    if not entry.get("topic"):
        raise SystemExit(f"director: subscription {subscription} in {RESOURCES_FILE} has no topic")
    ack = int(entry.get("ack_deadline_seconds") or COMMAND_ACK_DEADLINE_SECONDS)
    return project, entry["topic"], subscription, ack


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s director %(levelname)s %(message)s")
    project, command_topic, command_subscription, ack_deadline = read_startup_config()
    director = Director(project)
    subscription_path = director.subscription_path(command_subscription)
    ready = threading.Event()

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    service = os.environ.get("SERVICE_NAME", "director")

    def health() -> tuple[int, dict[str, Any]]:
        status = {"service": service, "ready": ready.is_set(), "commands": command_subscription}
        return (200 if ready.is_set() else 503), status

    server = serve_http(int(os.environ.get("PORT", "8080")), {"/healthz": health})
    while not stop.is_set():
        try:
            director.ensure_topic(command_topic)
            director.ensure_subscription(command_subscription, command_topic, ack_deadline)
            future = director.subscriber.subscribe(subscription_path, callback=director.on_message)
        except Exception as exc:  # the emulator may still be starting
            log.warning("start-up: %s; retrying", exc)
            stop.wait(RETRY_SECONDS)
            continue
        ready.set()
        log.info("listening for commands on %s (topic %s)", command_subscription, command_topic)
        while not stop.is_set() and not future.done():
            stop.wait(0.2)
        ready.clear()
        if stop.is_set():
            future.cancel()
            break
        try:
            future.result()
        except Exception as exc:
            log.warning("streaming pull ended (%s); subscribing again", exc)
        stop.wait(RETRY_SECONDS)
    server.shutdown()
    director.subscriber.close()
    director.publisher.stop()
    log.info("stopped")


if __name__ == "__main__":
    main()
