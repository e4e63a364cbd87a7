"""Records of rejected messages: what was refused, why, and the message itself, whole.

A message the daemon refuses (it cannot be decoded or applied, or Pub/Sub dead-lettered it)
is acked only after its record is written to ``rejected_messages``, keyed by its message id.
Apart from the run repository: it touches no run document and needs no transaction.

The record keeps a readable preview (``body``/``body_base64``, cut at 64 KiB: the contract's
fields) and, beside it, the full body up to Pub/Sub's 10 MB message limit, in sub-documents
``rejected_messages/{id}/chunks/{n:04d}`` of at most 900 KiB each (``data``, bytes). The record
itself says ``chunks`` (how many), ``body_bytes`` and ``body_sha256``, so a reader can check
what it reassembles (:func:`read_full_body`). The chunks are written before the record or in
the same batch, so a record never names chunks that are not there; ``topic`` is the topic the
message was published to (for a dead letter: the topic its source subscription reads), which
``daemon/replay.py`` republishes it to.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from google.cloud import firestore

from machines.errors import clip

if TYPE_CHECKING:
    from daemon.config import Settings

REJECTED = "rejected_messages"
CHUNKS = "chunks"
MAX_RAW_BODY = 64 * 1024  # the readable preview in the record itself (contract)
CHUNK_BYTES = 900 * 1024  # one chunk document stays well under Firestore's 1 MiB per document
# Pub/Sub refuses messages over 10 MB; a pushed envelope is bounded by daemon/http.py
# (MAX_PUSH_BYTES), so anything larger did not come through Pub/Sub and is kept as a preview only.
MAX_FULL_BODY = 10 * 1024 * 1024
# Firestore takes a commit of up to 10 MiB and 500 writes, but its emulator refuses any request
# over 4 MiB (gRPC's default): chunks go in batches of at most this many bytes (three chunks),
# the record in the last one.
BATCH_BYTES = 3 * 1024 * 1024 + 512 * 1024
RECORD_BYTES = 256 * 1024  # the most a record takes: the preview in base64 and 100 attributes

DEAD_LETTER_SOURCE_SUBSCRIPTION = "CloudPubSubDeadLetterSourceSubscription"

# The topic a message being handled came from, set by the engine around each entry point (see
# :func:`origin_topic`): the store passes record_rejected's fixed arguments through unchanged.
_ORIGIN_TOPIC: ContextVar[str | None] = ContextVar("podium_rejected_origin_topic", default=None)


@contextlib.contextmanager
def origin_topic(topic: str | None) -> Iterator[None]:
    """While the block runs, records written by :func:`record_rejected` in this thread (or task)
    name ``topic`` as the message's original topic, unless the call passes ``topic`` itself."""
    token = _ORIGIN_TOPIC.set(topic)
    try:
        yield
    finally:
        _ORIGIN_TOPIC.reset(token)


def record_rejected(
    client: firestore.Client,
    message_id: str,
    body: bytes,
    attributes: Mapping[str, str],
    reason: str,
    message: str,
    source: str,
    *,
    topic: str | None = None,
) -> None:
    """Write the record of one rejected message: the preview as text if it is UTF-8, else
    base64; the full body in chunks (written first); its topic, if known."""
    raw = body[:MAX_RAW_BODY]
    try:
        text: str | None = raw.decode("utf-8")
        encoded = None
    except UnicodeDecodeError:
        text, encoded = None, base64.b64encode(raw).decode()
    doc_ref = client.collection(REJECTED).document(rejected_doc_id(message_id))
    kept = len(body) <= MAX_FULL_BODY
    parts = split_chunks(body) if kept else []
    fields: dict[str, Any] = {
        "message_id": clip(message_id, 1500),
        "source": source,
        "reason": reason,
        "message": clip(message, 2000),
        "body": text,
        "body_base64": encoded,
        "body_bytes": len(body),
        "truncated": len(body) > MAX_RAW_BODY,
        "attributes": bounded_attributes(attributes),
        "received_at": datetime.now(UTC),
        # the full body: None when it was over MAX_FULL_BODY (only a preview was kept)
        "chunks": len(parts) if kept else None,
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "topic": topic if topic is not None else _ORIGIN_TOPIC.get(),
    }
    writes: list[tuple[Any, dict[str, Any], int]] = [
        (doc_ref.collection(CHUNKS).document(chunk_id(n)), {"data": part}, len(part) + 200)
        for n, part in enumerate(parts)
    ]
    # Top-level fields only: a redelivered message rewrites its record but keeps what a replay
    # wrote there (replayed_at, replay_message_id, ...).
    writes.append((doc_ref, fields, RECORD_BYTES))
    for group in batches(writes):
        batch = client.batch()
        for ref, data, _size in group:
            if ref is doc_ref:
                batch.set(ref, data, merge=list(data))
            else:
                batch.set(ref, data)
        batch.commit()


def split_chunks(body: bytes, size: int = CHUNK_BYTES) -> list[bytes]:
    """The body in pieces of at most ``size`` bytes (none for an empty body)."""
    return [body[i : i + size] for i in range(0, len(body), size)]


def chunk_id(n: int) -> str:
    return f"{n:04d}"


def batches(
    writes: list[tuple[Any, dict[str, Any], int]], budget: int = BATCH_BYTES, max_writes: int = 500
) -> list[list[tuple[Any, dict[str, Any], int]]]:
    """Consecutive groups of writes (ref, data, estimated bytes), each within one commit's limits,
    in order: the last write (the record) commits with or after every chunk before it."""
    groups: list[list[tuple[Any, dict[str, Any], int]]] = [[]]
    used = 0
    for write in writes:
        if groups[-1] and (used + write[2] > budget or len(groups[-1]) >= max_writes):
            groups.append([])
            used = 0
        groups[-1].append(write)
        used += write[2]
    return groups


class BodyUnavailable(Exception):
    """The full body of a record cannot be read back (missing, incomplete or corrupt)."""


def read_full_body(client: firestore.Client, doc_id: str, record: Mapping[str, Any]) -> bytes:
    """The whole body of a rejected message, checked against ``body_bytes`` and ``body_sha256``.

    Records written before full bodies were kept have no ``chunks``: their preview is the body
    when it was not truncated."""
    chunks = record.get("chunks")
    if "chunks" not in record or "body_sha256" not in record:
        if record.get("truncated"):
            raise BodyUnavailable("only a 64 KiB preview was kept (a record from before full bodies were stored)")
        body = preview_bytes(record)
    elif chunks is None:
        raise BodyUnavailable(f"the body ({record.get('body_bytes')} bytes) was over the "
                              f"{MAX_FULL_BODY}-byte limit: only a preview was kept")
    else:
        parent = client.collection(REJECTED).document(doc_id)
        parts = []
        for n in range(int(chunks)):  # one at a time: each read stays under 1 MiB
            snap = parent.collection(CHUNKS).document(chunk_id(n)).get()
            data = snap.get("data") if snap.exists else None
            if not isinstance(data, bytes):
                raise BodyUnavailable(f"chunk {chunk_id(n)} of {chunks} is missing")
            parts.append(data)
        body = b"".join(parts)
    check_body(body, record)
    return body


def check_body(body: bytes, record: Mapping[str, Any]) -> None:
    """Raise :class:`BodyUnavailable` unless ``body`` is the one the record describes."""
    size = record.get("body_bytes")
    if size is not None and len(body) != size:
        raise BodyUnavailable(f"reassembled {len(body)} bytes, the record says {size}")
    digest = record.get("body_sha256")
    if digest is not None and hashlib.sha256(body).hexdigest() != digest:
        raise BodyUnavailable("the reassembled body does not match body_sha256")


def preview_bytes(record: Mapping[str, Any]) -> bytes:
    if record.get("body_base64"):
        return base64.b64decode(record["body_base64"])
    return str(record.get("body") or "").encode("utf-8")


def subscription_topics(settings: Settings) -> dict[str, str]:
    """The daemon's subscriptions (short names) → the full path of the topic each one reads."""
    p = settings.project
    return {
        settings.commands_subscription: f"projects/{p}/topics/{settings.commands_topic}",
        settings.events_subscription: f"projects/{p}/topics/{settings.events_topic}",
        settings.cloud_builds_subscription: f"projects/{p}/topics/{settings.cloud_builds_topic}",
    }


def dead_letter_origin(settings: Settings, attributes: Mapping[str, str]) -> str | None:
    """The topic a dead letter was first published to: the one its source subscription (the
    ``CloudPubSubDeadLetterSourceSubscription`` attribute, a name or a full path) reads, if that
    subscription is one of this daemon's; else None."""
    source = attributes.get(DEAD_LETTER_SOURCE_SUBSCRIPTION, "")
    project, _, name = source.rpartition("/subscriptions/")
    if project and project != f"projects/{settings.project}":
        return None
    return subscription_topics(settings).get(name or source)


def rejected_doc_id(message_id: str) -> str:
    """The message id itself when it is a usable document id (Pub/Sub's are digits), else a
    digest of it: a pushed envelope may carry any id, and its record must still be written."""
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:~@+=-]{0,199}", message_id):
        return message_id
    return "id-" + hashlib.sha256(message_id.encode("utf-8", "replace")).hexdigest()[:40]


def bounded_attributes(attributes: Mapping[str, str]) -> dict[str, str]:
    """Pub/Sub's own limits (100 attributes, 256-byte keys, 1024-byte values): a pushed envelope
    may exceed them, and the record of a rejected message must still fit in one document."""
    return {str(k)[:256]: str(v)[:1024] for k, v in list(attributes.items())[:100]}
