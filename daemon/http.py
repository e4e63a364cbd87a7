"""HTTP surface of the daemon: ``GET /healthz`` and ``POST /pubsub/push``.

Push envelopes go through the same engine as pulled messages: 2xx only after commit (or
after a reject was recorded), 400 for an envelope that is not one (recorded too), 5xx for a
transient failure so Pub/Sub retries.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog

from daemon.config import Settings
from daemon.engine import Engine, Inbound, Verdict

log = structlog.get_logger("podium.http")

TokenVerifier = Callable[[str | None], tuple[int, str] | None]  # None = ok, else (status, reason)


class DaemonHTTP:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        healthy: Callable[[], bool],
        verify_token: TokenVerifier | None = None,
        port: int | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.healthy = healthy
        self.verify_token = verify_token
        self.server = ThreadingHTTPServer(("0.0.0.0", settings.port if port is None else port), self._handler())
        self.server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(target=self.server.serve_forever, name="http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def route_for(self, subscription: str) -> Callable[[Inbound], Verdict] | None:
        name = subscription.rsplit("/", 1)[-1]
        s = self.settings
        return {
            s.commands_subscription: self.engine.on_command,
            s.events_subscription: self.engine.on_event,
            s.dead_letter_subscription: self.engine.on_dead_letter,
        }.get(name)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
                return

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - stdlib naming
                if self.path.split("?")[0] == "/healthz":
                    ok = outer.healthy()
                    self._send(200 if ok else 503, {"status": "ok" if ok else "starting"})
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self) -> None:  # noqa: N802
                if self.path.split("?")[0] != "/pubsub/push":
                    return self._send(404, {"error": "not found"})
                if outer.verify_token is not None:
                    refused = outer.verify_token(self.headers.get("Authorization"))
                    if refused is not None:
                        return self._send(refused[0], {"error": refused[1]})
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                status, body = outer.push(raw)
                self._send(status, body)

        return Handler

    def push(self, raw: bytes) -> tuple[int, dict[str, Any]]:
        """Handle one push envelope; returns (HTTP status, JSON body)."""
        try:
            envelope = json.loads(raw)
            message = envelope["message"]
            subscription = str(envelope["subscription"])
            data = base64.b64decode(message.get("data", ""), validate=True)
            message_id = str(message.get("messageId") or message.get("message_id"))
            if message_id in ("", "None"):
                raise KeyError("messageId")
            attributes = {str(k): str(v) for k, v in (message.get("attributes") or {}).items()}
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            reason = f"not a Pub/Sub push envelope: {exc!r}"
            fallback_id = f"push-{abs(hash(raw)) % 10**12}"
            self.engine.reject(Inbound(fallback_id, raw, {}, None, "push"), "invalid_envelope", reason)
            return 400, {"error": reason}
        route = self.route_for(subscription)
        if route is None:
            self.engine.reject(Inbound(message_id, data, attributes, None, "push"), "unknown_subscription",
                                f"no route for subscription {subscription!r}")
            return 400, {"error": f"unknown subscription {subscription!r}"}
        attempt = envelope.get("deliveryAttempt")
        verdict = route(Inbound(message_id, data, attributes, attempt, "push"))
        if verdict is Verdict.ACK:
            return 200, {"status": "ok"}
        return 503, {"error": "transient failure; retry"}
