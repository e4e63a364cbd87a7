"""Listing rejected messages and replaying them (``podium rejected``, ``podium replay``).

A replay reads a record's full body back from its chunks (checked against ``body_bytes`` and
``body_sha256``), publishes it to the topic the message first went to (the record's ``topic``)
with its original attributes, less Pub/Sub's dead-letter bookkeeping (``CloudPubSubDeadLetter*``)
and reserved ``goog*`` keys, plus ``podium_replay_of`` naming the record, then writes
``replayed_at``, ``replay_message_id`` and ``replay_count`` on the record. A record already
replayed is not replayed again without ``force``.

A replayed event is applied at most once whatever happens: the daemon deduplicates events by
their ``event_id`` (a second copy is recorded ``duplicate`` in the run's audit log). A start with
a ``run_id`` is deduplicated by the run id; a start *without* one takes the new message's id as
its run id, so each replay of it starts another run.

Two replays of one record at the same moment cannot both publish: the first one claims the
record by an update conditional on the version it read.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import google.cloud.pubsub_v1 as pubsub_v1  # no py.typed: imported as a module, mypy reads it as Any
from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from daemon.config import Settings
from daemon.pubsub import topic_path
from daemon.rejected import REJECTED, BodyUnavailable, read_full_body, rejected_doc_id
from machines.errors import clip

REPLAY_OF = "podium_replay_of"
# Attributes Pub/Sub adds when it dead-letters a message, and keys Pub/Sub reserves for itself.
BOOKKEEPING_PREFIXES = ("CloudPubSubDeadLetter", "goog")
DEAD_LETTERED = "dead_lettered"
# What a listing reads of each record (not the preview body nor the attributes).
LIST_FIELDS = [
    "message_id", "received_at", "reason", "source", "message", "body_bytes", "truncated", "chunks",
    "topic", "replayed_at", "replay_message_id", "replay_count",
]

Outcome = Literal["replayed", "already_replayed", "not_found", "failed"]


@dataclass(frozen=True)
class ReplayResult:
    record_id: str
    outcome: Outcome
    detail: str
    topic: str | None = None
    replay_message_id: str | None = None

    @property
    def ok(self) -> bool:
        """Nothing went wrong: replayed now, or already replayed before (and not forced)."""
        return self.outcome in ("replayed", "already_replayed")

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"ok": self.ok}


def list_rejected(
    client: firestore.Client, *, since: datetime | None = None, reason: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """Records of ``rejected_messages``, newest first, each with its document ``id``.

    One single-field index (``received_at``) serves it; ``reason`` is filtered while reading,
    so no composite index is needed."""
    query: Any = client.collection(REJECTED)
    if since is not None:
        query = query.where(filter=FieldFilter("received_at", ">=", since))
    query = query.order_by("received_at", direction=firestore.Query.DESCENDING).select(LIST_FIELDS)
    out: list[dict[str, Any]] = []
    if limit <= 0:
        return out
    for snap in query.stream():
        record = (snap.to_dict() or {}) | {"id": snap.id}
        if reason is not None and record.get("reason") != reason:
            continue
        out.append(record)
        if len(out) >= limit:
            break
    return out


def dead_lettered_ids(client: firestore.Client, *, include_replayed: bool = False) -> list[str]:
    """Ids of the dead-letter records (not yet replayed, unless ``include_replayed``), oldest first."""
    query = client.collection(REJECTED).where(filter=FieldFilter("reason", "==", DEAD_LETTERED))
    records = [((s.to_dict() or {}), s.id) for s in query.select(["received_at", "replayed_at"]).stream()]
    records.sort(key=lambda r: (r[0].get("received_at") or datetime.min.replace(tzinfo=UTC), r[1]))
    return [doc_id for record, doc_id in records if include_replayed or not record.get("replayed_at")]


def replay_attributes(attributes: Mapping[str, str], record_id: str) -> dict[str, str]:
    """The attributes to republish with: the original ones without Pub/Sub's dead-letter
    bookkeeping and reserved keys, plus ``podium_replay_of``."""
    kept = {str(k): str(v) for k, v in attributes.items() if not str(k).startswith(BOOKKEEPING_PREFIXES)}
    return kept | {REPLAY_OF: record_id}


def replay(
    settings: Settings,
    message_ids: Sequence[str] = (),
    *,
    all_dead_lettered: bool = False,
    force: bool = False,
    client: firestore.Client | None = None,
    publisher: Any = None,
    timeout: float = 60.0,
) -> list[ReplayResult]:
    """Replay the named records (and, with ``all_dead_lettered``, every dead letter not replayed
    yet, or every one with ``force``), in that order; one result per record."""
    client = client or firestore.Client(project=settings.project)
    publisher = publisher or pubsub_v1.PublisherClient()
    ids = list(dict.fromkeys(rejected_doc_id(m) for m in message_ids))
    if all_dead_lettered:
        ids += [i for i in dead_lettered_ids(client, include_replayed=force) if i not in ids]
    return [_replay_one(client, publisher, settings, doc_id, force=force, timeout=timeout) for doc_id in ids]


def _replay_one(
    client: firestore.Client, publisher: Any, settings: Settings, doc_id: str, *, force: bool, timeout: float
) -> ReplayResult:
    ref = client.collection(REJECTED).document(doc_id)
    snap = ref.get()
    if not snap.exists:
        return ReplayResult(doc_id, "not_found", f"no record {doc_id!r} in {REJECTED}")
    record = snap.to_dict() or {}
    topic = record.get("topic")
    if record.get("replayed_at") and not force:
        return ReplayResult(doc_id, "already_replayed",
                            f"already replayed at {_when(record['replayed_at'])} as message "
                            f"{record.get('replay_message_id')}; --force replays it again",
                            topic, record.get("replay_message_id"))
    if not topic:
        return ReplayResult(doc_id, "failed", "the record does not say which topic the message came from")
    try:
        body = read_full_body(client, doc_id, record)
    except BodyUnavailable as exc:
        return ReplayResult(doc_id, "failed", f"the body cannot be replayed: {exc}", topic)
    attributes = replay_attributes(record.get("attributes") or {}, doc_id)
    try:  # claim it: conditional on the version read, so a concurrent replay of it fails here
        ref.update({"replay_started_at": firestore.SERVER_TIMESTAMP},
                   option=client.write_option(last_update_time=snap.update_time))
    except gexc.FailedPrecondition:
        return ReplayResult(doc_id, "failed", "another replay of this record is under way; try again", topic)
    path = topic if topic.startswith("projects/") else topic_path(settings.project, topic)
    try:
        message_id = str(publisher.publish(path, body, **attributes).result(timeout=timeout))
    except Exception as exc:  # noqa: BLE001 - reported per message; the others still go
        _note_error(ref, f"publish failed: {type(exc).__name__}: {exc}")
        return ReplayResult(doc_id, "failed", clip(f"publish to {path} failed: {type(exc).__name__}: {exc}", 500),
                            topic)
    try:
        ref.update({"replayed_at": firestore.SERVER_TIMESTAMP, "replay_message_id": message_id,
                    "replay_count": firestore.Increment(1), "replay_error": firestore.DELETE_FIELD})
    except Exception as exc:  # noqa: BLE001 - published: say so, and that the record lags
        return ReplayResult(doc_id, "failed", clip(f"published as message {message_id}, but the record could not "
                                                   f"be marked replayed: {type(exc).__name__}: {exc}", 500),
                            topic, message_id)
    detail = f"{len(body)} bytes republished to {path}"
    if _start_without_run_id(body, path, settings):
        detail += f"; a start without run_id: its run id is the new message id {message_id}"
    return ReplayResult(doc_id, "replayed", detail, topic, message_id)


def _note_error(ref: Any, error: str) -> None:
    with contextlib.suppress(Exception):  # the result says what failed; this note is a courtesy
        ref.update({"replay_error": clip(error, 1000)})


def _start_without_run_id(body: bytes, path: str, settings: Settings) -> bool:
    if path != topic_path(settings.project, settings.commands_topic):
        return False
    try:
        command = json.loads(body)
    except ValueError:
        return False
    return isinstance(command, dict) and command.get("command") == "start" and not command.get("run_id")


def _when(value: Any) -> str:
    return value.isoformat(timespec="seconds") if isinstance(value, datetime) else str(value)

