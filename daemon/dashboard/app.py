"""The dashboard's routes, mounted by ``daemon/http.py`` on the daemon's one port.

``/dashboard/`` (the runs list) and ``/dashboard/runs/<id>`` (a run) are the same static page,
``static/index.html``; its script builds the DOM from JSON and follows these:

* ``GET /dashboard/api/graph``: the machine's definition and, with Graphviz, its SVG;
* ``GET /dashboard/api/runs/stream``: server-sent events ``runs`` (the list);
* ``GET /dashboard/api/runs/<id>/stream``: events ``run`` (the document, ``null`` while there
  is none) and ``events`` (the audit log, newest first);
* ``POST /dashboard/api/runs/<id>/cancel`` and ``…/retry``: publish the command ``podium
  cancel``/``retry`` publishes; 202 with its message id (the result shows in the streams).

Every path under ``/dashboard`` passes ``access.Gate`` first.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from daemon.config import Settings
from daemon.dashboard import graph
from daemon.dashboard.access import Gate, command_refusal
from daemon.dashboard.live import RUNS_KEY, FirestoreSource, Hub, Source, Subscriber, run_key
from machines.messages import RUN_ID_PATTERN

log = structlog.get_logger("podium.dashboard")

STATIC = Path(__file__).resolve().parent / "static"
KEEPALIVE_SECONDS = 15.0  # a comment line that keeps proxies from closing a quiet stream
RETRY_MILLISECONDS = 2000  # EventSource's reconnect delay after a dropped stream
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; "
                               "form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
COMMANDS = ("cancel", "retry")

Publish = Callable[[Mapping[str, Any]], str]


class Dashboard:
    def __init__(self, settings: Settings, *, source: Source | None = None, publish: Publish | None = None,
                 gate: Gate | None = None) -> None:
        self.settings = settings
        self.source: Source = source or FirestoreSource(settings)
        self.hub = Hub(self.source, settings.dashboard_max_streams)
        self.gate = gate or Gate(settings)
        self._publish = publish

    def publish(self, body: Mapping[str, Any]) -> str:
        if self._publish is not None:
            return self._publish(body)
        from daemon.pubsub import publish_command

        return publish_command(self.settings, body)

    def close(self) -> None:
        self.hub.close()

    def routes(self) -> list[BaseRoute]:
        inner = Starlette(routes=[
            Route("/", self.page),
            Route("/runs/{run_id}", self.page),
            Route("/api/graph", self.graph),
            Route("/api/runs/stream", self.runs_stream),
            Route("/api/runs/{run_id}/stream", self.run_stream),
            Route("/api/runs/{run_id}/{command}", self.command, methods=["POST"]),
            Mount("/static", app=StaticFiles(directory=STATIC)),
        ])
        return [
            Route("/", lambda _r: RedirectResponse("/dashboard/", status_code=307)),
            Mount("/dashboard", app=_Guarded(inner, self.gate)),
        ]

    # ---- pages and data ---------------------------------------------------------------------

    async def page(self, _request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers=SECURITY_HEADERS)

    async def graph(self, _request: Request) -> Response:
        svg = await run_in_threadpool(graph.svg)  # cached after the first call
        return JSONResponse(graph.definition() | {"svg": svg}, headers={"Cache-Control": "no-store"})

    async def runs_stream(self, request: Request) -> Response:
        return await self._stream(request, RUNS_KEY)

    async def run_stream(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        if not re.fullmatch(RUN_ID_PATTERN, run_id):
            return JSONResponse({"error": f"{run_id!r} is not a run id"}, status_code=400)
        return await self._stream(request, run_key(run_id))

    async def command(self, request: Request) -> Response:
        run_id, command = request.path_params["run_id"], request.path_params["command"]
        if command not in COMMANDS:
            return JSONResponse({"error": "not found"}, status_code=404)
        refused = command_refusal(request.headers)
        if refused:
            log.warning("dashboard command refused", run_id=run_id, command=command, reason=refused)
            return JSONResponse({"error": refused}, status_code=403)
        if not re.fullmatch(RUN_ID_PATTERN, run_id):
            return JSONResponse({"error": f"{run_id!r} is not a run id"}, status_code=400)
        if not await run_in_threadpool(self.source.exists, run_id):
            return JSONResponse({"error": f"no run {run_id!r}"}, status_code=404)
        try:
            message_id = await run_in_threadpool(self.publish, {"command": command, "run_id": run_id})
        except Exception as exc:  # noqa: BLE001 - Pub/Sub unreachable: say so, nothing was sent
            log.warning("dashboard command not published", run_id=run_id, command=command, error=repr(exc))
            return JSONResponse({"error": f"could not publish the {command} command: {exc}"}, status_code=503)
        log.info("dashboard command published", run_id=run_id, command=command, message_id=message_id,
                 identity=request.scope.get("podium_identity"))
        return JSONResponse({"command": command, "run_id": run_id, "message_id": message_id}, status_code=202)

    # ---- server-sent events -----------------------------------------------------------------

    async def _stream(self, request: Request, key: str) -> Response:
        import asyncio

        loop = asyncio.get_running_loop()
        sub = await run_in_threadpool(self.hub.subscribe, key, loop)
        if sub is None:
            return JSONResponse({"error": f"too many live streams open (at most {self.hub.max_streams}); "
                                          f"close a dashboard tab"},
                                status_code=503, headers={"Retry-After": "10"})
        return _EventStream(self.hub, sub)


class _EventStream(StreamingResponse):
    """``text/event-stream`` of one subscriber; its slot is given back however the response
    ends: the client went away (Starlette cancels the body), the hub closed, or it never started."""

    def __init__(self, hub: Hub, sub: Subscriber) -> None:
        self.hub, self.sub = hub, sub
        super().__init__(self._events(), media_type="text/event-stream",
                         headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def _events(self) -> AsyncIterator[str]:
        yield f"retry: {RETRY_MILLISECONDS}\n\n"
        while True:
            batch = await self.sub.next(KEEPALIVE_SECONDS)
            if batch is None:
                return
            if not batch:
                yield ": keepalive\n\n"
            for kind, data in batch:
                yield f"event: {kind}\ndata: {data}\n\n"  # the JSON is one line

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.hub.unsubscribe(self.sub)


class _Guarded:
    """The access check in front of every dashboard path (an ASGI wrapper, so streams and static
    files pass through untouched once admitted)."""

    def __init__(self, app: ASGIApp, gate: Gate) -> None:
        self.app, self.gate = app, gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            request = Request(scope)
            client = request.client.host if request.client else None
            if self.gate.identity_required:  # may fetch Google's keys: off the event loop
                verdict = await run_in_threadpool(self.gate.check, client, request.headers)
            else:
                verdict = self.gate.check(client, request.headers)
            if isinstance(verdict, tuple):
                status, reason = verdict
                await JSONResponse({"error": reason}, status_code=status, headers=SECURITY_HEADERS)(scope, receive, send)
                return
            scope["podium_identity"] = verdict
        await self.app(scope, receive, send)
