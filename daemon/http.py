"""HTTP surface of the daemon: ``GET /healthz``, ``POST /pubsub/push`` and the dashboard.

One ASGI app (Starlette) served by uvicorn, on the one port Cloud Run exposes, bound to
``settings.host`` (loopback unless ``PODIUM_HOST`` says otherwise). The push endpoint exists
only with ``PODIUM_DELIVERY=push`` (404 otherwise); the dashboard (``daemon/dashboard/``,
``/dashboard/``) only when one is given, behind its own access check.

Why ASGI rather than ``http.server``: the dashboard holds a server-sent-events stream open per
browser tab. On a threading ``http.server`` each stream pins a thread, and routing, request
bodies, streaming, disconnect detection and static files would all be hand-written; Starlette
does those, uvicorn serves them from one event loop, and the blocking work (the engine's
Firestore transaction, token verification) runs in Starlette's thread pool exactly as it ran
on the request threads before.

Push envelopes go through the same engine as pulled messages: 2xx only after commit (or
after a reject was recorded), 400 for an envelope that is not one (recorded too), 5xx for a
transient failure so Pub/Sub retries.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from daemon.config import Settings
from daemon.engine import Engine, Inbound, Verdict

if TYPE_CHECKING:
    from daemon.dashboard import Dashboard
    from daemon.push_auth import TokenVerifier

log = structlog.get_logger("podium.http")

STOP_TIMEOUT_SECONDS = 3.0


@dataclass(frozen=True)
class Listening:
    """Where the server listens; ``server_address`` as ``socketserver`` names it."""

    server_address: tuple[Any, ...]


class DaemonHTTP:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        healthy: Callable[[], bool],
        verify_token: TokenVerifier | None = None,
        port: int | None = None,
        dashboard: Dashboard | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.healthy = healthy
        self.verify_token = verify_token  # read on every request (tests swap it)
        self.dashboard = dashboard
        # Bound here, as before: a taken port fails the daemon's construction, and port 0's
        # ephemeral port is known before start().
        self._socket = _listen(settings.host, settings.port if port is None else port)
        self.server = Listening(self._socket.getsockname())
        self.app = Starlette(routes=self._routes(), exception_handlers={HTTPException: _http_error})
        # proxy_headers off: the peer address is the connection's (the dashboard's loopback check).
        config = uvicorn.Config(self.app, log_config=None, access_log=False, lifespan="off", http="h11", ws="none",
                                loop="asyncio", proxy_headers=False, timeout_graceful_shutdown=1,
                                timeout_keep_alive=5)
        config.load()  # its imports happen here, not in start(): starting stays as quick as it was
        self._uvicorn = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> None:
        """Serve from a thread of its own. Returns at once: the socket already listens, so a
        request that arrives before the event loop runs waits in the backlog, not refused."""
        self._thread = threading.Thread(target=self._serve, name="http", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            self._uvicorn.run(sockets=[self._socket])
        except BaseException as exc:  # the daemon goes on without HTTP: /healthz's silence tells
            log.critical("the HTTP server stopped", error=repr(exc))
            raise

    def stop(self) -> None:
        if self.dashboard is not None:
            self.dashboard.close()  # ends the event streams, so the server need not wait for them
        self._uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT_SECONDS)
        self._socket.close()

    def route_for(self, subscription: str) -> Callable[[Inbound], Verdict] | None:
        route = self.engine.routes().get(subscription.rsplit("/", 1)[-1])
        return route[1] if route else None

    # ---- the app ---------------------------------------------------------------------------

    def _routes(self) -> list[BaseRoute]:
        routes: list[BaseRoute] = [
            Route("/healthz", self._healthz, methods=["GET"]),
            Route("/pubsub/push", self._push, methods=["POST"]),
        ]
        if self.dashboard is not None:
            routes += self.dashboard.routes()
        return routes

    def _healthz(self, _request: Request) -> Response:  # sync: Starlette runs it in its thread pool
        if self.healthy():
            return JSONResponse({"status": "ok"})
        why = getattr(self.healthy, "why", None)  # daemon/server.py Health says why
        reason = (why() if callable(why) else None) or "unhealthy"
        return JSONResponse({"status": "starting" if reason == "starting" else "unhealthy", "reason": reason},
                            status_code=503)

    async def _push(self, request: Request) -> Response:
        # Served only in push delivery: a pulling daemon has no reason to accept messages
        # from whoever reaches its port (outside gcp mode nothing checks a token).
        if self.settings.delivery != "push":
            return _closing(404, {"error": "not found"})  # the body is not read
        try:
            length = int(request.headers.get("content-length") or 0)
        except ValueError:
            return _closing(400, {"error": "bad Content-Length"})
        if length < 0 or length > MAX_PUSH_BYTES:
            return _closing(413, {"error": f"body of {length} bytes is not a push envelope"})
        raw = await _read_body(request, MAX_PUSH_BYTES)
        if raw is None:  # chunked, and longer than any envelope
            return _closing(413, {"error": f"body over {MAX_PUSH_BYTES} bytes is not a push envelope"})
        status, body = await run_in_threadpool(self._push_checked, raw, request.headers.get("authorization"))
        return JSONResponse(body, status_code=status)

    def _push_checked(self, raw: bytes, authorization: str | None) -> tuple[int, dict[str, Any]]:
        try:
            verify = self.verify_token
            if verify is not None:
                refused = verify(authorization)
                if refused is not None:
                    log.warning("push refused", status=refused[0], reason=refused[1])
                    return refused[0], {"error": refused[1]}
            return self.push(raw)
        except Exception as exc:  # noqa: BLE001 - the boundary: answer, so Pub/Sub retries
            log.exception("push failed", error=repr(exc))
            return 500, {"error": "internal error; retry"}

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


def _listen(host: str, port: int) -> socket.socket:
    family, kind, proto, _name, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as http.server did
        sock.bind(address)
        sock.listen(128)  # connections queue even before the event loop runs
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(False)
    return sock


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The request body, or None once it passes ``limit`` bytes (what is left is not read)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _closing(status: int, body: dict[str, Any]) -> Response:
    """An answer after which the connection closes (its request body may be left unread)."""
    return JSONResponse(body, status_code=status, headers={"Connection": "close"})


async def _http_error(_request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    text = {404: "not found", 405: "method not allowed"}.get(status, str(getattr(exc, "detail", "error")))
    return JSONResponse({"error": text}, status_code=status, headers=getattr(exc, "headers", None))


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
