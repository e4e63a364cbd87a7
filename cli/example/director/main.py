"""ServiceDirector: creates and deletes a dataflow's resources on command.

``dataflow-setup`` creates the dataflow's Pub/Sub topics and subscriptions, GCS buckets, BigQuery
datasets and tables, Firestore databases and collections (one module per family beside this file:
pubsub_resources, storage_buckets, bigquery_tables, firestore_stores); ``dependent-resource-setup``
creates its Cloud Scheduler jobs once the services they call have URLs (scheduler_jobs);
``teardown`` deletes what the payload lists, in the reverse order (jobs first, topics last). Each
reply lists what exists as ``resources`` (``{kind, name, dataflow, location}``); a failure names the
resource. Every step is get-or-create or delete-if-present, so a redelivered command changes
nothing. The same code runs on Google Cloud and locally, where the clients find the emulators
(``PUBSUB_``, ``FIRESTORE_``, ``STORAGE_EMULATOR_HOST``), BigQuery is SQLite files under
``LOCAL_BIGQUERY_DIR`` and scheduler jobs run in this process.

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
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import bigquery_tables
import google.cloud.pubsub_v1 as pubsub_v1  # no py.typed: imported as a module, mypy reads it as Any
import yaml
from firestore_stores import Collections, Databases
from google.api_core import exceptions
from pubsub_resources import Subscriptions, Topics
from resource_kinds import CommandError, Kind, Spec, entry
from scheduler_jobs import LocalScheduler, scheduler_for
from storage_buckets import Buckets

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


class Director:
    def __init__(self, project: str, region: str = "", local: bool | None = None) -> None:
        self.project, self.region = project, region
        options = pubsub_v1.types.PublisherOptions(enable_message_ordering=True)
        self.publisher = pubsub_v1.PublisherClient(publisher_options=options)
        self.subscriber = pubsub_v1.SubscriberClient()
        self.local = bool(os.environ.get("FIRESTORE_EMULATOR_HOST")) if local is None else local
        self.topics = Topics(project, self.publisher)
        self.subscriptions = Subscriptions(self.topics, self.subscriber)
        datasets, tables = bigquery_tables.kinds(project, region)
        # In creation order: a subscription needs its topic, a table its dataset, a collection its database.
        self.setup_kinds: Sequence[Kind] = (
            self.topics, self.subscriptions, Buckets(project, region),
            datasets, tables, Databases(project, region), Collections(project, region),
        )
        self.scheduler = scheduler_for(project, region, self.local)
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

    def ensure_topic(self, name: str) -> bool:
        """Create the topic; False if it already existed."""
        return self.topics.ensure({"name": name})

    def ensure_subscription(self, name: str, topic: str, ack_deadline: int | None = None) -> bool:
        """Create the subscription on ``topic``; False if it already existed."""
        spec: Spec = {"name": name, "topic": topic, "ack_deadline_seconds": ack_deadline}
        return self.subscriptions.ensure(spec)

    def subscription_path(self, name: str) -> str:
        return self.subscriptions.path(name)

    def topic_path(self, name: str) -> str:
        return self.topics.path(name)

    def apply(self, kinds: Sequence[Kind], command: dict[str, Any], *, remove: bool = False) -> dict[str, Any]:
        """Ensure (or delete) each resource of ``kinds`` the payload lists, in order; the reply data."""
        resources = payload_resources(command)
        self.use_region(str(command["payload"].get("region") or ""))
        dataflow = str(command.get("dataflow"))
        done: list[str] = []
        untouched: list[str] = []
        entries: list[dict[str, str]] = []
        for kind in kinds:
            for spec in resources.get(kind.section) or []:
                spec = self.with_target(kind, spec, dataflow) if not remove else spec
                name = kind.name(spec)
                try:
                    changed = kind.delete(spec) if remove else kind.ensure(spec)
                except TRANSIENT:
                    raise
                except Exception as exc:  # the reply names the resource that failed
                    raise CommandError(f"{kind.kind} {name}: {exc}") from exc
                (done if changed else untouched).append(name)
                entries.append(entry(kind, spec, dataflow))
        if remove:
            return {"instruction": "teardown", "deleted": done, "missing": untouched, "removed": entries}
        return {"created": done, "existed": untouched, "resources": entries}

    def use_region(self, region: str) -> None:
        """The architecture's region (sent with each command): where resources go by default."""
        if region and region != self.region:
            self.region = region
            for kind in (*self.setup_kinds, self.scheduler):
                if hasattr(kind, "region"):
                    kind.region = region

    def with_target(self, kind: Kind, spec: Spec, dataflow: str) -> Spec:
        """A scheduler job's spec with its target service's URL (from dependent-resource-setup)."""
        if kind.section != "cloud_scheduler_jobs":
            return spec
        with self._lock:
            urls = self.service_urls.get(dataflow, {})
        return {**spec, "uri": urls.get(str(spec.get("target_service")), "")}

    # -- instructions: each returns (event type, data) ------------------------------------

    def ping(self, command: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return "director.ready", {}

    def dataflow_setup(self, command: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return "director.dataflow_complete", self.apply(self.setup_kinds, command)

    def dependent_setup(self, command: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        urls = command["payload"].get("service_urls") or {}
        if not isinstance(urls, dict):
            raise CommandError("payload.service_urls must be a map of service name to URL")
        with self._lock:
            self.service_urls[str(command.get("dataflow"))] = {str(k): str(v) for k, v in urls.items()}
        data = self.apply((self.scheduler,), command)
        return "director.dependent_complete", {"services": sorted(urls), **data}

    def teardown(self, command: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        kinds = (self.scheduler, *reversed(self.setup_kinds))  # jobs first, topics last
        return "director.dataflow_complete", self.apply(kinds, command, remove=True)

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


REQUIRED_FIELDS = {
    "topics": ("name",), "subscriptions": ("name", "topic"), "gcs_buckets": ("name",),
    "bigquery_datasets": ("name",), "bigquery_tables": ("name", "dataset"),
    "firestore_databases": ("name",), "firestore_collections": ("name",),
    "cloud_scheduler_jobs": ("name", "schedule", "target_service"),
}


def payload_resources(command: dict[str, Any]) -> dict[str, list[Spec]]:
    """``payload.resources`` checked: a map of known sections, each a list of entries with their
    required string fields."""
    resources = command["payload"].get("resources") or {}
    if not isinstance(resources, dict):
        raise CommandError("payload.resources must be a map like the architecture's resources")
    unknown = sorted(set(resources) - set(REQUIRED_FIELDS))
    if unknown:
        raise CommandError(f"payload.resources has unknown kinds {unknown}; expected {sorted(REQUIRED_FIELDS)}")
    for kind, fields in REQUIRED_FIELDS.items():
        items = resources.get(kind) or []
        if not isinstance(items, list):
            raise CommandError(f"payload.resources.{kind} must be a list")
        for item in items:
            if not (isinstance(item, dict) and all(isinstance(item.get(f), str) and item[f] for f in fields)):
                raise CommandError(f"each of payload.resources.{kind} needs {' and '.join(fields)}: {item!r}")
    return resources


Route = Callable[[str], tuple[int, dict[str, Any]]]  # the path -> (HTTP status, JSON body)


def serve_http(get: dict[str, Route], post: dict[str, Route] | None = None) -> ThreadingHTTPServer:
    """Answer ``GET``/``POST`` on the routes (matched by path prefix) with JSON, on a daemon
    thread, on ``HOST`` (loopback locally) and ``PORT``."""
    posts = post or {}

    class Handler(BaseHTTPRequestHandler):
        def answer(self, routes: dict[str, Route]) -> None:
            path = self.path.split("?")[0]
            route = next((r for prefix, r in routes.items() if path == prefix or path.startswith(prefix + "/")), None)
            if route is None:
                self.send_error(404)
                return
            status, payload = route(path)
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self.answer(get)

        def do_POST(self) -> None:  # noqa: N802
            self.answer(posts)

        def log_message(self, format: str, *args: Any) -> None:  # keep health probes quiet
            pass

    port = int(os.environ.get("PORT", "8080"))
    server = ThreadingHTTPServer((os.environ.get("HOST", "0.0.0.0"), port), Handler)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server


def scheduler_routes(scheduler: LocalScheduler) -> tuple[dict[str, Route], dict[str, Route]]:
    """``GET /jobs`` lists the local jobs; ``POST /jobs/<name>:run`` fires one now (RunJob)."""

    def jobs(_path: str) -> tuple[int, dict[str, Any]]:
        return 200, {"jobs": {name: {k: v for k, v in job.items() if k != "last_attempt_time"}
                              for name, job in scheduler.jobs().items()}}

    def run(path: str) -> tuple[int, dict[str, Any]]:
        name = path.removeprefix("/jobs/").removesuffix(":run")
        if not path.endswith(":run") or "/" in name:
            return 404, {"error": "POST /jobs/<name>:run"}
        try:
            return 200, {"job": name, "status": scheduler.run_now(name)}
        except KeyError:
            return 404, {"error": f"no scheduler job {name}"}

    return {"/jobs": jobs}, {"/jobs": run}


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

    def health(_path: str) -> tuple[int, dict[str, Any]]:
        status = {"service": service, "ready": ready.is_set(), "commands": command_subscription}
        return (200 if ready.is_set() else 503), status

    get: dict[str, Route] = {"/healthz": health}
    post: dict[str, Route] = {}
    if isinstance(director.scheduler, LocalScheduler):  # jobs run here: serve them, fire them
        jobs, run = scheduler_routes(director.scheduler)
        get, post = {**get, **jobs}, run
        threading.Thread(target=director.scheduler.run_forever, args=(stop,), name="scheduler",
                         daemon=True).start()
    server = serve_http(get, post)
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
