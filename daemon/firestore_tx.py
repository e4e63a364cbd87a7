"""Firestore transactions that begin with their first read: one round trip fewer per transition.

``firestore.transactional`` sends BeginTransaction, then the reads, then Commit. The Firestore
API lets the first read begin the transaction itself (``BatchGetDocuments.new_transaction``)
and return its id with the documents. :func:`run_transaction` does that and otherwise behaves
like ``transactional``: the body may read more through the transaction before its first write,
writes are buffered and sent by one Commit, an ``Aborted`` commit re-runs the whole body (the
retry names the first attempt's id, keeping its place in line), any other error rolls back.

It drives the client's transaction through the same private members the library's own
``transactional`` uses (``_id``, ``_commit``, ``_rollback``, ``_clean_up``); the behaviour is
pinned against the emulator by tests/integration/test_firestore_tx.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from google.api_core.exceptions import Aborted
from google.cloud import firestore
from google.cloud.firestore_v1.base_client import _parse_batch_get
from google.cloud.firestore_v1.types import TransactionOptions

from devtools.faults import transaction_window

T = TypeVar("T")
Snapshots = dict[str, Any]  # document path -> DocumentSnapshot
Body = Callable[[firestore.Transaction, Snapshots], T]

MAX_ATTEMPTS = 5  # as firestore.transactional


def run_transaction(client: firestore.Client, refs: Sequence[Any], body: Body[T],
                    max_attempts: int = MAX_ATTEMPTS) -> T:
    """Read ``refs`` (beginning the transaction), run ``body(transaction, snapshots)``, commit."""
    with transaction_window():  # crash tests only (devtools/faults.py); nothing otherwise
        return _run(client, refs, body, max_attempts)


def _run(client: firestore.Client, refs: Sequence[Any], body: Body[T], max_attempts: int) -> T:
    retry_id: bytes | None = None
    last: Aborted | None = None
    transaction = client.transaction()
    try:
        for _ in range(max_attempts):
            transaction._clean_up()
            snapshots = begin_with_read(client, transaction, refs, retry_id)
            retry_id = retry_id or transaction._id
            result = body(transaction, snapshots)
            try:
                transaction._commit()
                return result
            except Aborted as exc:  # contention: run the body again on fresh reads
                last = exc
        raise ValueError(f"transaction aborted {max_attempts} times") from last
    except BaseException:
        if transaction.in_progress:
            transaction._rollback()
        raise


def begin_with_read(client: firestore.Client, transaction: firestore.Transaction, refs: Sequence[Any],
                    retry_id: bytes | None = None) -> Snapshots:
    """One BatchGetDocuments that begins ``transaction`` and returns the documents by path."""
    reference_map = {ref._document_path: ref for ref in refs}
    options = TransactionOptions(read_write=TransactionOptions.ReadWrite(retry_transaction=retry_id or b""))
    request = {"database": client._database_string, "documents": list(reference_map), "new_transaction": options}
    snapshots: Snapshots = {}
    for response in client._firestore_api.batch_get_documents(request=request, metadata=client._rpc_metadata):
        if response.transaction:
            transaction._id = response.transaction
        if response._pb.WhichOneof("result"):
            snap = _parse_batch_get(response, reference_map, client)
            snapshots[snap.reference.path] = snap
    if not transaction._id:
        raise RuntimeError("Firestore began no transaction with the read")  # the API promises one
    return snapshots
