"""Records of rejected messages: what was refused, why, and the message itself (bounded).

A message the daemon refuses (it cannot be decoded or applied, or Pub/Sub dead-lettered it)
is acked only after its record is written to ``rejected_messages``, keyed by its message id.
Apart from the run repository: it touches no run document and needs no transaction.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from datetime import UTC, datetime

from google.cloud import firestore

from machines.errors import clip

REJECTED = "rejected_messages"
MAX_RAW_BODY = 64 * 1024


def record_rejected(
    client: firestore.Client,
    message_id: str,
    body: bytes,
    attributes: Mapping[str, str],
    reason: str,
    message: str,
    source: str,
) -> None:
    """Write the record of one rejected message: the body as text if it is UTF-8, else base64."""
    raw = body[:MAX_RAW_BODY]
    try:
        text: str | None = raw.decode("utf-8")
        encoded = None
    except UnicodeDecodeError:
        text, encoded = None, base64.b64encode(raw).decode()
    client.collection(REJECTED).document(rejected_doc_id(message_id)).set(
        {
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
        }
    )


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
