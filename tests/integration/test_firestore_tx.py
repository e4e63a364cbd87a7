"""daemon/firestore_tx.py against the Firestore emulator: the read begins the transaction (no
BeginTransaction), contention retries, an error rolls back and releases the documents."""

from __future__ import annotations

import threading
import time

import pytest
from google.cloud import firestore

from daemon.firestore_tx import run_transaction


def _count_begins(client: firestore.Client) -> list[int]:
    begins: list[int] = []
    api = client._firestore_api
    real = api.begin_transaction

    def counting(*args, **kwargs):
        begins.append(1)
        return real(*args, **kwargs)

    api.begin_transaction = counting
    return begins


def test_the_first_read_begins_the_transaction_and_the_commit_writes(firestore_client):
    begins = _count_begins(firestore_client)
    present, absent = firestore_client.collection("tx").document("present"), firestore_client.collection("tx").document("absent")
    present.set({"n": 1})

    def body(transaction, snaps):
        assert snaps[present.path].exists and snaps[present.path].get("n") == 1
        assert not snaps[absent.path].exists
        more = list(transaction.get_all([firestore_client.collection("tx").document("other")]))  # a later read
        transaction.update(present, {"n": 2})
        transaction.create(absent, {"n": 0})
        return len(more)

    assert run_transaction(firestore_client, [present, absent], body) == 1
    assert present.get().get("n") == 2 and absent.get().exists
    assert begins == []


def test_concurrent_transactions_on_one_document_lose_no_update(firestore_client):
    counter = firestore_client.collection("tx").document("counter")
    counter.set({"n": 0})

    def increment(transaction, snaps):
        transaction.update(counter, {"n": snaps[counter.path].get("n") + 1})

    def worker() -> None:  # kept small: each conflict waits out the emulator's 2 s lock timeout
        for _ in range(2):
            run_transaction(firestore_client, [counter], increment, max_attempts=20)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert counter.get().get("n") == 4


def test_an_error_in_the_body_rolls_back_and_releases_the_document(firestore_client):
    doc = firestore_client.collection("tx").document("rolled-back")
    doc.set({"n": 1})

    def failing(transaction, snaps):
        transaction.update(doc, {"n": 99})
        raise KeyError("the body failed")

    with pytest.raises(KeyError):
        run_transaction(firestore_client, [doc], failing)
    assert doc.get().get("n") == 1
    began = time.monotonic()  # the read lock was released by the rollback: no wait on it
    run_transaction(firestore_client, [doc], lambda t, s: t.update(doc, {"n": 2}))
    assert doc.get().get("n") == 2
    assert time.monotonic() - began < 1.5


def test_the_store_client_runs_its_reads_on_the_calling_thread(firestore_client, project):
    from daemon.firestore_tx import store_client

    client = store_client(project)
    stub = client._firestore_api._transport.batch_get_documents
    assert type(stub).__name__ == "_SingleThreadedUnaryStreamMultiCallable"
    doc = client.collection("tx").document("store-client")
    doc.set({"n": 1})
    run_transaction(client, [doc], lambda t, s: t.update(doc, {"n": s[doc.path].get("n") + 1}))
    assert firestore_client.collection("tx").document("store-client").get().get("n") == 2
    assert [d.id for d in client.collection("tx").stream()] == ["store-client"]  # a query streams too
    client.close()
