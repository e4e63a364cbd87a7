"""Tracer publisher: publishes a small JSON tick every PUBLISH_INTERVAL_SECONDS.

The topic is the one under the lookup key ``tracer-topic-id`` in the ``resources.yaml`` written
beside this file by Podium's config generation. Until the topic exists the publisher keeps
retrying quietly (it may start before the ServiceDirector has created its dataflow).

Run: ``python main.py`` in this folder, with PORT, PROJECT_ID and (locally) PUBSUB_EMULATOR_HOST.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import google.cloud.pubsub_v1 as pubsub_v1  # no py.typed: imported as a module, mypy reads it as Any
import yaml
from google.api_core import exceptions

HERE = Path(__file__).resolve().parent
RESOURCES_FILE = HERE / "resources.yaml"
TOPIC_KEY = "tracer-topic-id"

log = logging.getLogger("publisher")


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


class Publisher:
    def __init__(self, project: str, topic: str, service: str) -> None:
        self.client = pubsub_v1.PublisherClient()
        self.topic_path = self.client.topic_path(project, topic)
        self.service = service
        self.published = 0
        self._waiting_logged = False

    def publish_one(self) -> None:
        body = {"service": self.service, "seq": self.published + 1, "sent_at": time.time()}
        try:
            self.client.publish(self.topic_path, json.dumps(body).encode()).result(timeout=30)
        except exceptions.NotFound:
            if not self._waiting_logged:
                log.info("topic %s does not exist yet; retrying quietly", self.topic_path)
                self._waiting_logged = True
            return
        except Exception as exc:  # emulator restarting, network blip: try again next tick
            log.warning("publish to %s failed (%s); retrying", self.topic_path, exc)
            return
        if self.published == 0:
            log.info("first message published to %s", self.topic_path)
        self.published += 1


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


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s publisher %(levelname)s %(message)s"
    )
    if not RESOURCES_FILE.is_file():
        sys.exit(f"publisher: no resources.yaml at {RESOURCES_FILE} (config generation writes it)")
    lookups = load_lookups()
    if TOPIC_KEY not in lookups:
        raise SystemExit(f"publisher: {RESOURCES_FILE} has no lookup key {TOPIC_KEY!r}")
    project = os.environ.get("PROJECT_ID") or sys.exit("publisher: PROJECT_ID is not set")
    service = os.environ.get("SERVICE_NAME", "publisher")
    interval = float(os.environ.get("PUBLISH_INTERVAL_SECONDS", "1.0"))
    publisher = Publisher(project, lookups[TOPIC_KEY], service)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = serve_http(
        int(os.environ.get("PORT", "8080")),
        {"/healthz": lambda: (200, {"service": service, "published": publisher.published})},
    )
    log.info("publishing to %s every %.2f s", publisher.topic_path, interval)
    while not stop.is_set():
        publisher.publish_one()
        stop.wait(interval)
    server.shutdown()
    publisher.client.stop()
    log.info("stopped after %d messages", publisher.published)


if __name__ == "__main__":
    main()
