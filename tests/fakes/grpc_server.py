"""The gRPC plumbing every fake shares: unary methods by full name, and long-running operations.

A fake registers plain functions ``(request, context) -> response`` under the API's service
name; this module serializes whichever message flavour the client library uses (proto-plus
types have ``serialize``/``deserialize``, protobuf types ``SerializeToString``/``FromString``).
Long-running operations follow ``google.longrunning.Operations``: the client polls
``GetOperation`` until ``done``; a fake decides when an operation finishes and with what.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from google.longrunning import operations_pb2
from google.protobuf import any_pb2, empty_pb2
from google.rpc import status_pb2


class FakeError(Exception):
    """Raise inside a fake method to answer with a gRPC status (e.g. ALREADY_EXISTS)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _codec(message_type: Any) -> tuple[Callable[[bytes], Any], Callable[[Any], bytes]]:
    if hasattr(message_type, "deserialize"):  # proto-plus
        return message_type.deserialize, message_type.serialize
    return message_type.FromString, lambda message: message.SerializeToString()


def pack(message: Any) -> any_pb2.Any:
    """An ``Any`` holding a proto-plus or protobuf message (what an operation's response is)."""
    raw = type(message).pb(message) if hasattr(type(message), "pb") else message
    packed = any_pb2.Any()
    packed.Pack(raw)
    return packed


@dataclass(frozen=True)
class Unary:
    request: Any
    response: Any
    call: Callable[[Any, grpc.ServicerContext], Any]


class Operations:
    """Long-running operations: each finishes when its ``finish`` callback says so.

    ``finish(elapsed_seconds)`` returns ``None`` while the work is still running, a message
    (the operation's response) when it succeeded, or raises ``FakeError`` for a failure.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ops: dict[str, tuple[operations_pb2.Operation, float, Callable[[float], Any] | None]] = {}
        self._ids = itertools.count(1)

    def start(self, parent: str, finish: Callable[[float], Any], metadata: Any = None) -> operations_pb2.Operation:
        name = f"{parent}/operations/op-{next(self._ids)}"
        op = operations_pb2.Operation(name=name, done=False)
        if metadata is not None:
            op.metadata.CopyFrom(pack(metadata))
        with self._lock:
            self._ops[name] = (op, time.monotonic(), finish)
        return self.get(name)

    def get(self, name: str) -> operations_pb2.Operation:
        with self._lock:
            if name not in self._ops:
                raise FakeError(grpc.StatusCode.NOT_FOUND, f"operation {name} not found")
            op, started, finish = self._ops[name]
            if not op.done and finish is not None:
                try:
                    result = finish(time.monotonic() - started)
                except FakeError as exc:
                    op.done = True
                    op.error.CopyFrom(status_pb2.Status(code=exc.code.value[0], message=exc.message))
                else:
                    if result is not None:
                        op.done = True
                        op.response.CopyFrom(pack(result))
            copy = operations_pb2.Operation()
            copy.CopyFrom(op)
            return copy

    def methods(self) -> dict[str, Unary]:
        return {
            "GetOperation": Unary(operations_pb2.GetOperationRequest, operations_pb2.Operation,
                                  lambda request, _: self.get(request.name)),
            "DeleteOperation": Unary(operations_pb2.DeleteOperationRequest, empty_pb2.Empty,
                                     lambda request, _: empty_pb2.Empty()),
        }


class FakeServer:
    """One gRPC server on loopback hosting one fake API (plus its operations)."""

    def __init__(self) -> None:
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self.operations = Operations()
        self.endpoint = ""
        self.add("google.longrunning.Operations", self.operations.methods())

    def add(self, service: str, methods: dict[str, Unary]) -> None:
        handlers = {}
        for method, unary in methods.items():
            decode, _ = _codec(unary.request)
            _, encode = _codec(unary.response)
            handlers[method] = grpc.unary_unary_rpc_method_handler(
                _answering(unary.call), request_deserializer=decode, response_serializer=encode
            )
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))

    def start(self) -> str:
        port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()
        self.endpoint = f"127.0.0.1:{port}"
        return self.endpoint

    def stop(self) -> None:
        self._server.stop(grace=None)


class ServedFake:
    """A fake API on a loopback server of its own: subclasses name ``SERVICE`` and give ``methods``."""

    SERVICE: str = ""
    _server: FakeServer | None = None

    def methods(self, server: FakeServer) -> dict[str, Unary]:
        raise NotImplementedError

    def start(self) -> str:
        """Serve on a loopback port; returns the endpoint (``127.0.0.1:<port>``)."""
        server = FakeServer()
        server.add(self.SERVICE, self.methods(server))
        self._server = server
        return server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    @property
    def endpoint(self) -> str:
        return self._server.endpoint if self._server else ""


def _answering(call: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[[Any, grpc.ServicerContext], Any]:
    def handler(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return call(request, context)
        except FakeError as exc:
            context.abort(exc.code, exc.message)

    return handler


def insecure_client(client_class: Any, endpoint: str) -> Any:
    """A real GAPIC client talking plaintext gRPC to ``endpoint`` with anonymous credentials."""
    from google.auth.credentials import AnonymousCredentials

    transport_class = client_class.get_transport_class("grpc")
    channel = grpc.insecure_channel(endpoint)
    return client_class(transport=transport_class(channel=channel, credentials=AnonymousCredentials()))
