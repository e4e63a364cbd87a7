"""Firestore transactions that begin with their first read: one round trip fewer per transition.

``firestore.transactional`` sends BeginTransaction, then the reads, then Commit. The Firestore
API lets the first read begin the transaction itself (``BatchGetDocuments.new_transaction``)
and return its id with the documents. :func:`run_transaction` does that and otherwise behaves
like ``transactional``: the body may read more through the transaction before its first write,
writes are buffered and sent by one Commit, an ``Aborted`` commit re-runs the whole body (the
retry names the first attempt's id, keeping its place in line), any other error rolls back.

It drives the client's transaction through the same private members the library's own
``transactional`` uses (``_id``, ``_write_pbs``, ``_rollback``, ``_clean_up``), and sends the read
and the commit as raw protobufs (:mod:`daemon.firestore_rpc`); the behaviour is pinned against
the emulator by tests/integration/test_firestore_tx.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import grpc
from google.api_core.datetime_helpers import DatetimeWithNanoseconds
from google.api_core.exceptions import Aborted
from google.cloud import firestore
from google.cloud.firestore_v1 import _helpers
from google.cloud.firestore_v1.base_client import _DEFAULT_CHANNEL_OPTIONS, _GRPC_MSG_SIZE_OPTIONS
from google.cloud.firestore_v1.services.firestore.client import FirestoreClient
from google.cloud.firestore_v1.services.firestore.transports.grpc import FirestoreGrpcTransport

from daemon.firestore_rpc import rpc_of
from devtools.faults import transaction_window

T = TypeVar("T")
Snapshots = dict[str, "ReadDoc"]  # document path -> the document read
Body = Callable[[firestore.Transaction, Snapshots], T]

MAX_ATTEMPTS = 5  # as firestore.transactional


def run_transaction(client: firestore.Client, refs: Sequence[Any], body: Body[T],
                    max_attempts: int = MAX_ATTEMPTS, fields: Sequence[str] | None = None) -> T:
    """Read ``refs`` (beginning the transaction; only ``fields`` of them if given), run
    ``body(transaction, snapshots)``, commit."""
    with transaction_window():  # crash tests only (devtools/faults.py); nothing otherwise
        return _run(client, refs, body, max_attempts, fields)


def _run(client: firestore.Client, refs: Sequence[Any], body: Body[T], max_attempts: int,
         fields: Sequence[str] | None) -> T:
    retry_id: bytes | None = None
    last: Aborted | None = None
    transaction = client.transaction()
    try:
        for _ in range(max_attempts):
            transaction._clean_up()
            snapshots = begin_with_read(client, transaction, refs, retry_id, fields)
            retry_id = retry_id or transaction._id
            result = body(transaction, snapshots)
            try:
                rpc_of(client).commit(cast(bytes, transaction._id), transaction._write_pbs)
                transaction._clean_up()
                return result
            except Aborted as exc:  # contention: run the body again on fresh reads
                last = exc
        raise ValueError(f"transaction aborted {max_attempts} times") from last
    except BaseException:
        if transaction.in_progress:
            transaction._rollback()
        raise


@dataclass(frozen=True, slots=True)
class ReadDoc:
    """One document of the transaction's first read: the part of ``DocumentSnapshot`` the store
    uses, without the snapshot's two deep copies of the data (the reader owns it)."""

    reference: Any
    exists: bool
    data: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any] | None:
        return self.data

    def get(self, field: str) -> Any:
        return (self.data or {}).get(field)


def begin_with_read(client: firestore.Client, transaction: firestore.Transaction, refs: Sequence[Any],
                    retry_id: bytes | None = None, fields: Sequence[str] | None = None) -> Snapshots:
    """One BatchGetDocuments that begins ``transaction`` and returns the documents by path;
    with ``fields``, only those top-level fields of each document (a Firestore field mask)."""
    reference_map = {ref._document_path: ref for ref in refs}
    snapshots: Snapshots = {}
    for pb in rpc_of(client).batch_get(list(reference_map), retry_id=retry_id, fields=fields):
        if pb.transaction:
            transaction._id = pb.transaction
        result = pb.WhichOneof("result")
        if result == "found":
            ref = reference_map[pb.found.name]
            snapshots[ref.path] = ReadDoc(ref, True, decode_fields(pb.found.fields, client))
        elif result == "missing":
            ref = reference_map[pb.missing]
            snapshots[ref.path] = ReadDoc(ref, False, None)
    if not transaction._id:
        raise RuntimeError("Firestore began no transaction with the read")  # the API promises one
    return snapshots


def decode_fields(fields: Any, client: firestore.Client) -> dict[str, Any]:
    """A document's raw ``fields`` as Python values, as ``_helpers.decode_dict`` decodes them
    (the same types: ``DatetimeWithNanoseconds``, lists, dicts) at about half its cost. A map
    that may be one of the library's special encodings (a vector, a BSON value: one key, or
    ``__type__``) and every rarer type are left to the library itself."""
    if len(fields) == 1 or "__type__" in fields:
        return cast(dict[str, Any], _helpers.decode_dict(fields, client))
    return {key: _decode(value, client) for key, value in fields.items()}


def _decode(value: Any, client: firestore.Client) -> Any:
    kind = value.WhichOneof("value_type")
    if kind == "string_value":
        return value.string_value
    if kind == "map_value":
        return decode_fields(value.map_value.fields, client)
    if kind == "integer_value":
        return value.integer_value
    if kind == "timestamp_value":
        return DatetimeWithNanoseconds.from_timestamp_pb(value.timestamp_value)
    if kind == "null_value":
        return None
    if kind == "boolean_value":
        return value.boolean_value
    if kind == "double_value":
        return value.double_value
    if kind == "array_value":
        return [_decode(item, client) for item in value.array_value.values]
    return _helpers.decode_value(value, client)  # bytes, references, geo points


def store_client(project: str) -> firestore.Client:
    """The Firestore client of the run store: the library's, on a channel that runs unary-stream
    calls (BatchGetDocuments, queries) on the calling thread. gRPC's default hands every response
    of such a call to its channel-spin thread and back, which cost ≈17 % of the client's CPU per
    transaction here (issue 15.2). Same target, credentials and options as the library's own
    channel (``base_client._firestore_api_helper``), plus that one option."""
    client = firestore.Client(project=project)
    single = (grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1)
    if client._emulator_host is not None:
        channel = grpc.insecure_channel(
            client._emulator_host, options=[("Authorization", "Bearer owner"), *_GRPC_MSG_SIZE_OPTIONS, single])
    else:
        channel = FirestoreGrpcTransport.create_channel(
            client._target, credentials=client._credentials, options=[*_DEFAULT_CHANNEL_OPTIONS, single])
    transport = FirestoreGrpcTransport(host=client._target, channel=channel)
    client._firestore_api_internal = FirestoreClient(transport=transport, client_options=client._client_options)
    return client
