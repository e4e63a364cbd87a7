"""HTTP surface of the daemon: ``GET /healthz`` and ``POST /pubsub/push``.

Bound to ``settings.host`` (loopback unless ``PODIUM_HOST`` says otherwise); the push endpoint
exists only with ``PODIUM_DELIVERY=push`` (404 otherwise).

Push envelopes go through the same engine as pulled messages: 2xx only after commit (or
after a reject was recorded), 400 for an envelope that is not one (recorded too), 5xx for a
transient failure so Pub/Sub retries.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
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
        address = (settings.host, settings.port if port is None else port)
        self.server = ThreadingHTTPServer(address, self._handler())
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
        route = self.engine.routes().get(subscription.rsplit("/", 1)[-1])
        return route[1] if route else None

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
                    if outer.healthy():
                        return self._send(200, {"status": "ok"})
                    why = getattr(outer.healthy, "why", None)  # daemon/server.py Health says why
                    reason = (why() if callable(why) else None) or "unhealthy"
                    self._send(503, {"status": "starting" if reason == "starting" else "unhealthy", "reason": reason})
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self) -> None:  # noqa: N802
                # Served only in push delivery: a pulling daemon has no reason to accept messages
                # from whoever reaches its port (outside gcp mode nothing checks a token).
                if self.path.split("?")[0] != "/pubsub/push" or outer.settings.delivery != "push":
                    self.close_connection = True  # the body is not read
                    return self._send(404, {"error": "not found"})
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                except ValueError:
                    self.close_connection = True
                    return self._send(400, {"error": "bad Content-Length"})
                if length < 0 or length > MAX_PUSH_BYTES:
                    self.close_connection = True
                    return self._send(413, {"error": f"body of {length} bytes is not a push envelope"})
                # Read the body before any answer: closing with unread bytes resets the connection.
                raw = self.rfile.read(length) if length else b""
                try:
                    if outer.verify_token is not None:
                        refused = outer.verify_token(self.headers.get("Authorization"))
                        if refused is not None:
                            log.warning("push refused", status=refused[0], reason=refused[1])
                            return self._send(refused[0], {"error": refused[1]})
                    status, body = outer.push(raw)
                except Exception as exc:  # noqa: BLE001 - the boundary: answer, so Pub/Sub retries
                    log.exception("push failed", error=repr(exc))
                    status, body = 500, {"error": "internal error; retry"}
                self._send(status, body)

        return Handler

    def push(self, raw: bytes) -> tuple[int, dict[str, Any]]:
        """Handle one push envelope; returns (HTTP status, JSON body).

        The envelope (wrapped delivery, the default) is ``{"message": {"data": base64,
        "attributes": {...}, "messageId": "...", "message_id": "...", "publishTime": "...",
        "orderingKey": "..."}, "subscription": "projects/P/subscriptions/S",
        "deliveryAttempt": N}``; ``data`` or ``attributes`` may be absent, ``deliveryAttempt``
        is only there with a dead-letter policy. 200 after the commit (or after the message
        was recorded as rejected), 400 for an envelope that is not one (recorded), 503 for a
        transient failure, so Pub/Sub redelivers and finally dead-letters.
        """
        try:
            envelope = parse_envelope(raw)
        except InvalidEnvelope as exc:
            reason = f"not a Pub/Sub push envelope: {exc}"
            fallback_id = "push-" + hashlib.sha256(raw).hexdigest()[:32]
            verdict = self.engine.reject(Inbound(fallback_id, raw, {}, None, "push"), "invalid_envelope", reason)
            if verdict is not Verdict.ACK:
                return 503, {"error": "could not record the invalid envelope; retry"}
            return 400, {"error": reason, "recorded_as": fallback_id}
        route = self.route_for(envelope.subscription)
        if route is None:
            verdict = self.engine.reject(envelope.inbound, "unknown_subscription",
                                         f"pushed from subscription {envelope.subscription!r}, which is not one "
                                         f"of this daemon's")
            if verdict is not Verdict.ACK:
                return 503, {"error": "could not record the message; retry"}
            return 400, {"error": f"unknown subscription {envelope.subscription!r}"}
        verdict = route(envelope.inbound)
        if verdict is Verdict.ACK:
            return 200, {"status": "ok", "message_id": envelope.inbound.message_id}
        return 503, {"error": "transient failure; retry"}


MAX_PUSH_BYTES = 16 * 1024 * 1024  # a 10 MB message is ~13.4 MB in base64, plus the envelope


class InvalidEnvelope(ValueError):
    pass


@dataclass(frozen=True)
class Envelope:
    subscription: str
    inbound: Inbound


def parse_envelope(raw: bytes) -> Envelope:
    """Validate a wrapped push body; raises InvalidEnvelope saying what is wrong."""
    if not raw.strip():
        raise InvalidEnvelope("empty body")
    try:
        envelope = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidEnvelope(f"body is not JSON ({exc})") from None
    if not isinstance(envelope, dict):
        raise InvalidEnvelope(f"body is a JSON {type(envelope).__name__}, not an object")
    message = envelope.get("message")
    if not isinstance(message, dict):
        raise InvalidEnvelope("no 'message' object")
    subscription = envelope.get("subscription")
    if not isinstance(subscription, str) or not subscription:
        raise InvalidEnvelope("no 'subscription' name")
    message_id = message.get("messageId", message.get("message_id"))
    if isinstance(message_id, int) and not isinstance(message_id, bool):
        message_id = str(message_id)
    if not isinstance(message_id, str) or not message_id or "/" in message_id or message_id in (".", ".."):
        raise InvalidEnvelope(f"message has no usable 'messageId' ({message_id!r})")
    data_b64 = message.get("data", "")
    if data_b64 is None:
        data_b64 = ""
    if not isinstance(data_b64, str):
        raise InvalidEnvelope("'message.data' is not a base64 string")
    try:
        data = base64.b64decode(data_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidEnvelope(f"'message.data' is not valid base64 ({exc})") from None
    attributes = message.get("attributes") or {}
    if not isinstance(attributes, dict) or not all(isinstance(v, str) for v in attributes.values()):
        raise InvalidEnvelope("'message.attributes' is not a map of strings")
    attempt = envelope.get("deliveryAttempt")
    delivery_attempt = attempt if isinstance(attempt, int) and not isinstance(attempt, bool) else None
    inbound = Inbound(message_id, data, {str(k): v for k, v in attributes.items()}, delivery_attempt, "push")
    return Envelope(subscription, inbound)
