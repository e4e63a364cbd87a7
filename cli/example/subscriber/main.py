"""Tracer subscriber: counts (and acks) the messages on its subscription.

The subscription is the one under the lookup key ``tracer-subscription-id`` in the
``resources.yaml`` written beside this file by Podium's config generation. Until the subscription
exists the subscriber keeps retrying quietly. ``GET /stats`` answers ``{"received": N}``.

Run: ``python main.py`` in this folder, with PORT, PROJECT_ID and (locally) PUBSUB_EMULATOR_HOST.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import google.cloud.pubsub_v1 as pubsub_v1  # no py.typed: imported as a module, mypy reads it as Any
import yaml
from google.api_core import exceptions

HERE = Path(__file__).resolve().parent
RESOURCES_FILE = HERE / "resources.yaml"
SUBSCRIPTION_KEY = "tracer-subscription-id"
RETRY_SECONDS = 1.0

log = logging.getLogger("subscriber")


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


class Counter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.received = 0

    def __call__(self, message: Any) -> None:  # the streaming-pull callback
        with self._lock:
            self.received += 1
            first = self.received == 1
        message.ack()
        if first:
            log.info("first message received: %s", message.data[:200])


def receive_until(stop: threading.Event, subscription_path: str, counter: Counter) -> None:
    """Streaming pull until ``stop`` is set; (re)subscribe while the subscription is missing."""
    client = pubsub_v1.SubscriberClient()
    waiting_logged = False
    while not stop.is_set():
        future = client.subscribe(subscription_path, callback=counter)
        while not stop.is_set() and not future.done():
            stop.wait(0.2)
        if stop.is_set():
            future.cancel()
            break
        try:
            future.result()
        except exceptions.NotFound:
            if not waiting_logged:
                log.info("subscription %s does not exist yet; retrying quietly", subscription_path)
                waiting_logged = True
        except Exception as exc:  # emulator restarting, network blip: subscribe again
            log.warning("streaming pull on %s ended (%s); retrying", subscription_path, exc)
        stop.wait(RETRY_SECONDS)
    client.close()


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
        level=logging.INFO, format="%(asctime)s subscriber %(levelname)s %(message)s"
    )
    if not RESOURCES_FILE.is_file():
        sys.exit(f"subscriber: no resources.yaml at {RESOURCES_FILE} (config generation writes it)")
    lookups = load_lookups()
    if SUBSCRIPTION_KEY not in lookups:
        raise SystemExit(f"subscriber: {RESOURCES_FILE} has no lookup key {SUBSCRIPTION_KEY!r}")
    project = os.environ.get("PROJECT_ID") or sys.exit("subscriber: PROJECT_ID is not set")
    service = os.environ.get("SERVICE_NAME", "subscriber")
    subscription_path = pubsub_v1.SubscriberClient.subscription_path(
        project, lookups[SUBSCRIPTION_KEY]
    )
    counter = Counter()

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = serve_http(
        int(os.environ.get("PORT", "8080")),
        {
            "/healthz": lambda: (200, {"service": service, "received": counter.received}),
            "/stats": lambda: (200, {"received": counter.received}),
        },
    )
    log.info("receiving from %s", subscription_path)
    receive_until(stop, subscription_path, counter)
    server.shutdown()
    log.info("stopped after %d messages", counter.received)


if __name__ == "__main__":
    main()
