"""daemon/firestore_rpc.py sends the requests and metadata the generated Firestore client sends,
on the client's own channel, and turns gRPC errors into the ``google.api_core`` exceptions."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from google.api_core import exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore
from google.cloud.firestore_v1.types import firestore as firestore_types
from google.cloud.firestore_v1.types import write as write_types

from daemon.firestore_rpc import FirestoreRpc, rpc_of
from daemon.firestore_writes import _write

DOC = "projects/p/databases/(default)/documents/runs/r1"


class _Channel:
    """Records the methods made on it and every call."""

    def __init__(self, error: grpc.RpcError | None = None, errors: list[Any] | None = None) -> None:
        self.methods: dict[str, Any] = {}
        self.calls: list[tuple[str, bytes, Any, float]] = []
        self.error = error
        self.errors = errors or []  # per call: None, an error before the first response, or ("after", error)

    def _method(self, kind: str, path: str, request_serializer: Any, response_deserializer: Any) -> Any:
        self.methods[path] = kind

        def call(request: Any, metadata: Any, timeout: float) -> Any:
            self.calls.append((path, request_serializer(request), metadata, timeout))
            error = self.errors.pop(0) if self.errors else self.error
            if kind == "unary_stream":
                return self._stream(response_deserializer(b""), error)
            if error is not None:
                raise error
            return response_deserializer(b"")

        return call

    @staticmethod
    def _stream(response: Any, error: Any) -> Any:
        if isinstance(error, tuple):  # fails after its first response
            yield response
            raise error[1]
        if error is not None:
            raise error
        yield response

    def unary_stream(self, path: str, **kwargs: Any) -> Any:
        return self._method("unary_stream", path, **kwargs)

    def unary_unary(self, path: str, **kwargs: Any) -> Any:
        return self._method("unary_unary", path, **kwargs)


class _Aborted(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    status = grpc.StatusCode.ABORTED

    def code(self) -> grpc.StatusCode:
        return self.status

    def details(self) -> str:
        return f"{self.status.name} from the fake"

    def trailing_metadata(self) -> Any:
        return None


def _client(channel: _Channel) -> Any:
    client = firestore.Client(project="p", credentials=AnonymousCredentials())
    client._firestore_api_internal = SimpleNamespace(_transport=SimpleNamespace(grpc_channel=channel))
    return client


def test_the_requests_are_the_generated_clients_byte_for_byte() -> None:
    channel = _Channel()
    client = _client(channel)
    rpc = FirestoreRpc(client)
    list(rpc.batch_get([DOC], retry_id=b"tx-0", fields=["state", "version"]))
    write = _write(SimpleNamespace(_document_path=DOC), {"state": "building"})
    rpc.commit(b"tx-1", [write, write_types.Write(delete=DOC)])  # raw and proto-plus writes alike

    library_get = firestore_types.BatchGetDocumentsRequest(
        database=client._database_string, documents=[DOC], mask={"field_paths": ["state", "version"]},
        new_transaction={"read_write": {"retry_transaction": b"tx-0"}})
    library_commit = firestore_types.CommitRequest(
        database=client._database_string, writes=[write_types.Write.deserialize(write.SerializeToString()), write_types.Write(delete=DOC)],
        transaction=b"tx-1")
    (get_path, get_bytes, get_md, _), (commit_path, commit_bytes, commit_md, timeout) = channel.calls
    assert (get_path, commit_path) == ("/google.firestore.v1.Firestore/BatchGetDocuments",
                                       "/google.firestore.v1.Firestore/Commit")
    assert channel.methods == {get_path: "unary_stream", commit_path: "unary_unary"}
    assert get_bytes == firestore_types.BatchGetDocumentsRequest.serialize(library_get)
    assert commit_bytes == firestore_types.CommitRequest.serialize(library_commit)
    # the resource prefix and the routing header, as the generated client sends them
    assert get_md == commit_md
    assert ("google-cloud-resource-prefix", "projects/p/databases/(default)") in get_md
    assert ("x-goog-request-params", "database=projects/p/databases/%28default%29") in get_md
    assert timeout > 0


def test_a_read_write_transaction_is_begun_even_without_a_retry_id() -> None:
    channel = _Channel()
    list(FirestoreRpc(_client(channel)).batch_get([DOC], retry_id=None, fields=None))
    request = firestore_types.BatchGetDocumentsRequest.deserialize(channel.calls[0][1])
    assert "read_write" in request.new_transaction and not request.mask.field_paths


def test_grpc_errors_become_api_core_exceptions() -> None:
    rpc = FirestoreRpc(_client(_Channel(error=_Aborted())))
    with pytest.raises(exceptions.Aborted):
        rpc.commit(b"tx", [])
    with pytest.raises(exceptions.Aborted):
        list(rpc.batch_get([DOC], retry_id=None, fields=None))


def test_one_rpc_object_per_client() -> None:
    client = _client(_Channel())
    assert rpc_of(client) is rpc_of(client)
    assert rpc_of(_client(_Channel())) is not rpc_of(client)


class _Unavailable(_Aborted):  # type: ignore[misc]
    status = grpc.StatusCode.UNAVAILABLE


def test_a_read_failing_before_its_first_response_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("daemon.firestore_rpc.READ_BACKOFF_SECONDS", 0.0)
    channel = _Channel(errors=[_Unavailable(), _Unavailable()])
    assert len(list(FirestoreRpc(_client(channel)).batch_get([DOC], retry_id=None, fields=None))) == 1
    assert len(channel.calls) == 3

    channel = _Channel(error=_Unavailable())  # down for good: given up after the last attempt
    with pytest.raises(exceptions.ServiceUnavailable):
        list(FirestoreRpc(_client(channel)).batch_get([DOC], retry_id=None, fields=None))
    assert len(channel.calls) == 3


def test_a_read_failing_after_a_response_or_a_failed_commit_is_not_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("daemon.firestore_rpc.READ_BACKOFF_SECONDS", 0.0)
    channel = _Channel(errors=[("after", _Unavailable())])
    with pytest.raises(exceptions.ServiceUnavailable):
        list(FirestoreRpc(_client(channel)).batch_get([DOC], retry_id=None, fields=None))
    assert len(channel.calls) == 1  # the transaction may exist: the caller rolls it back
    channel = _Channel(error=_Unavailable())
    with pytest.raises(exceptions.ServiceUnavailable):
        FirestoreRpc(_client(channel)).commit(b"tx", [])
    assert len(channel.calls) == 1
