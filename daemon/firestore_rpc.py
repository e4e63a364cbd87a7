"""The two RPCs of every transition, BatchGetDocuments and Commit, sent as raw protobufs.

The generated client wraps each call in proto-plus messages (the request built from a dict, the
writes copied into it, every response wrapped), a retry and a timeout decorator and a logging
interceptor: about a tenth of the daemon's CPU per transition (issue 15.2). Here the same
requests go straight over the client's own gRPC channel (its target, credentials and options),
with the metadata the generated client sends (resource prefix, routing header, the emulator's
token). gRPC errors become the ``google.api_core`` exceptions the callers already handle
(``Aborted`` is retried by :mod:`daemon.firestore_tx`, transient ones are the message path's);
a read that fails before its first response is tried again here, briefly.
Everything else the store does still goes through the library.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import grpc
from google.api_core import exceptions
from google.api_core.gapic_v1 import routing_header
from google.cloud import firestore
from google.cloud.firestore_v1.types import firestore as firestore_types
from google.cloud.firestore_v1.types import write as write_types

_BatchGetRequest = firestore_types.BatchGetDocumentsRequest.pb()
_BatchGetResponse = firestore_types.BatchGetDocumentsResponse.pb()
_CommitRequest = firestore_types.CommitRequest.pb()
_CommitResponse = firestore_types.CommitResponse.pb()
_Write = write_types.Write.pb()

TIMEOUT_SECONDS = 60.0  # the generated client's default for Commit
# A read that failed before its first response is tried again (the generated client retries
# these codes for minutes; a longer outage is the message path's: nack, redelivery). A commit is
# not: whether a failed one was applied is unknown, and the next delivery finds out (dedup).
_RETRY_READ = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.DEADLINE_EXCEEDED})
READ_ATTEMPTS = 3
READ_BACKOFF_SECONDS = 0.1


class FirestoreRpc:
    """BatchGetDocuments and Commit on one client's channel."""

    def __init__(self, client: firestore.Client) -> None:
        channel = client._firestore_api._transport.grpc_channel
        self.database = client._database_string
        self.metadata = (*client._rpc_metadata, routing_header.to_grpc_metadata((("database", self.database),)))
        self._batch_get = channel.unary_stream(
            "/google.firestore.v1.Firestore/BatchGetDocuments",
            request_serializer=_BatchGetRequest.SerializeToString,
            response_deserializer=_BatchGetResponse.FromString,
        )
        self._commit = channel.unary_unary(
            "/google.firestore.v1.Firestore/Commit",
            request_serializer=_CommitRequest.SerializeToString,
            response_deserializer=_CommitResponse.FromString,
        )

    def batch_get(self, paths: Sequence[str], *, retry_id: bytes | None, fields: Sequence[str] | None) -> Iterator[Any]:
        """The documents at ``paths``, in a read-write transaction this read begins (the first
        response carries its id); only ``fields`` of them if given."""
        request = _BatchGetRequest(database=self.database, documents=paths)
        request.new_transaction.read_write.retry_transaction = retry_id or b""
        if fields is not None:
            request.mask.field_paths.extend(fields)
        for attempt in range(READ_ATTEMPTS):
            received = False
            try:
                for response in self._batch_get(request, metadata=self.metadata, timeout=TIMEOUT_SECONDS):
                    received = True
                    yield response
                return
            except grpc.RpcError as exc:
                # Before the first response nothing began on the server: try again, as the
                # generated client's retry would. After it, the transaction exists: the caller
                # rolls it back and the message path retries.
                code = exc.code() if isinstance(exc, grpc.Call) else None
                if received or code not in _RETRY_READ or attempt == READ_ATTEMPTS - 1:
                    raise _api_error(exc) from exc
            time.sleep(READ_BACKOFF_SECONDS * 2**attempt)

    def commit(self, transaction_id: bytes, writes: Sequence[Any]) -> None:
        """Commit ``writes`` (raw or proto-plus ``Write`` messages) in the transaction."""
        request = _CommitRequest(database=self.database, transaction=transaction_id)
        request.writes.extend(w if isinstance(w, _Write) else write_types.Write.pb(w) for w in writes)
        try:
            self._commit(request, metadata=self.metadata, timeout=TIMEOUT_SECONDS)
        except grpc.RpcError as exc:
            raise _api_error(exc) from exc


def _api_error(exc: grpc.RpcError) -> exceptions.GoogleAPICallError:
    return exceptions.from_grpc_error(exc)  # type: ignore[no-any-return]


_RPCS: weakref.WeakKeyDictionary[firestore.Client, FirestoreRpc] = weakref.WeakKeyDictionary()
_RPCS_LOCK = threading.Lock()


def rpc_of(client: firestore.Client) -> FirestoreRpc:
    """The raw RPCs of ``client``, made once per client."""
    rpc = _RPCS.get(client)
    if rpc is None:
        with _RPCS_LOCK:
            rpc = _RPCS.get(client) or _RPCS.setdefault(client, FirestoreRpc(client))
    return rpc
