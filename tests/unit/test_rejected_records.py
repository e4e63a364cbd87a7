"""Rejected messages are kept whole and can be replayed (issue 14 point 2), without emulators.

An in-memory stand-in for the few Firestore calls ``daemon/rejected.py`` and ``daemon/replay.py``
make (documents, batches, conditional updates, transforms) checks: the chunking of a body and the
per-commit limits, the record written after (or with) its chunks, the sha256/size check on
reassembly, the original topic (per entry point, and for a dead letter from its source
subscription), the attributes a replay republishes, and the replay bookkeeping.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.transforms import Increment

from cli.dead_letters import cmd_replay, describe, human_size, parse_since
from daemon import rejected
from daemon.config import Settings
from daemon.engine import Engine, Inbound, Verdict
from daemon.rejected import (
    BATCH_BYTES,
    CHUNK_BYTES,
    MAX_FULL_BODY,
    MAX_RAW_BODY,
    BodyUnavailable,
    dead_letter_origin,
    read_full_body,
    record_rejected,
    split_chunks,
)
from daemon.replay import REPLAY_OF, dead_lettered_ids, replay, replay_attributes
from daemon.store import Applied

SETTINGS = Settings(project="p1", commands_topic="cmds", events_topic="evts", dead_letter_topic="dlq")
EVENTS_TOPIC = "projects/p1/topics/evts"


# ---- an in-memory Firestore, just what the two modules use -------------------------------
class FakeFirestore:
    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}
        self.updated: dict[str, datetime] = {}
        self.commits: list[list[tuple[str, int]]] = []  # per commit: (path, bytes of bytes fields)
        self.tick = 0

    def collection(self, name: str) -> FakeCollection:
        return FakeCollection(self, name)

    def batch(self) -> FakeBatch:
        return FakeBatch(self)

    def write_option(self, **kwargs: Any) -> dict[str, Any]:
        return kwargs

    def _stamp(self, path: str) -> None:
        self.tick += 1
        self.updated[path] = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(microseconds=self.tick)

    def put(self, path: str, data: Mapping[str, Any], merge: Any = None) -> None:
        if merge and path in self.docs:
            self.docs[path] = self.docs[path] | dict(data)
        else:
            self.docs[path] = dict(data)
        self._stamp(path)


class FakeCollection:
    def __init__(self, db: FakeFirestore, path: str) -> None:
        self.db, self.path = db, path

    def document(self, doc_id: str) -> FakeDoc:
        return FakeDoc(self.db, f"{self.path}/{doc_id}")

    def where(self, *, filter: Any) -> FakeQuery:  # noqa: A002 - Firestore's keyword
        return FakeQuery(self, filter.field_path, filter.value)


@dataclass
class FakeQuery:
    coll: FakeCollection
    field: str
    value: Any

    def select(self, _fields: Any) -> FakeQuery:
        return self

    def stream(self) -> list[FakeSnap]:
        prefix = self.coll.path + "/"
        return [FakeDoc(self.coll.db, p).get() for p, d in self.coll.db.docs.items()
                if p.startswith(prefix) and "/" not in p[len(prefix):] and d.get(self.field) == self.value]


@dataclass
class FakeSnap:
    id: str
    data: dict[str, Any] | None
    update_time: datetime | None

    @property
    def exists(self) -> bool:
        return self.data is not None

    def to_dict(self) -> dict[str, Any] | None:
        return dict(self.data) if self.data is not None else None

    def get(self, field: str) -> Any:
        return (self.data or {}).get(field)


class FakeDoc:
    def __init__(self, db: FakeFirestore, path: str) -> None:
        self.db, self.path = db, path

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FakeDoc) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    def collection(self, name: str) -> FakeCollection:
        return FakeCollection(self.db, f"{self.path}/{name}")

    def get(self) -> FakeSnap:
        return FakeSnap(self.path.rsplit("/", 1)[-1], self.db.docs.get(self.path), self.db.updated.get(self.path))

    def update(self, data: Mapping[str, Any], option: Mapping[str, Any] | None = None) -> None:
        if self.path not in self.db.docs:
            raise gexc.NotFound(self.path)
        if option and option.get("last_update_time") != self.db.updated.get(self.path):
            raise gexc.FailedPrecondition("the document changed")
        doc = self.db.docs[self.path]
        for key, value in data.items():
            if value is firestore.DELETE_FIELD:
                doc.pop(key, None)
            elif value is firestore.SERVER_TIMESTAMP:
                doc[key] = datetime.now(UTC)
            elif isinstance(value, Increment):
                doc[key] = (doc.get(key) or 0) + value.value
            else:
                doc[key] = value
        self.db._stamp(self.path)


class FakeBatch:
    def __init__(self, db: FakeFirestore) -> None:
        self.db = db
        self.writes: list[tuple[FakeDoc, dict[str, Any], Any]] = []

    def set(self, ref: FakeDoc, data: dict[str, Any], merge: Any = None) -> None:
        self.writes.append((ref, data, merge))

    def commit(self) -> None:
        self.db.commits.append([(ref.path, sum(len(v) for v in data.values() if isinstance(v, bytes)))
                                for ref, data, _ in self.writes])
        for ref, data, merge in self.writes:
            self.db.put(ref.path, data, merge)


class FakePublisher:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[str, bytes, dict[str, str]]] = []
        self.fail = fail

    def publish(self, topic: str, data: bytes, **attrs: str) -> Any:
        if self.fail:
            raise gexc.ServiceUnavailable("pubsub away")
        self.sent.append((topic, data, attrs))
        number = len(self.sent)

        class Future:
            def result(self, timeout: float | None = None) -> str:
                return f"replay-{number}"

        return Future()


def record(db: FakeFirestore, doc_id: str) -> dict[str, Any]:
    return db.docs[f"rejected_messages/{doc_id}"]


def body_of(size: int) -> bytes:
    return (b"0123456789abcdef" * (size // 16 + 1))[:size]


# ---- chunking -----------------------------------------------------------------------------
def test_split_chunks_covers_the_body_in_bounded_pieces() -> None:
    body = os.urandom(2 * CHUNK_BYTES + 17)
    parts = split_chunks(body)
    assert [len(p) for p in parts] == [CHUNK_BYTES, CHUNK_BYTES, 17]
    assert b"".join(parts) == body
    assert split_chunks(b"") == []
    assert split_chunks(body_of(CHUNK_BYTES)) == [body_of(CHUNK_BYTES)]


def test_a_large_body_is_stored_whole_in_chunks_written_before_its_record() -> None:
    db = FakeFirestore()
    body = os.urandom(MAX_FULL_BODY)  # the largest kept whole (above Pub/Sub's 10 MB)
    record_rejected(db, "m-1", body, {"run_id": "r"}, "dead_lettered", "gave up", "dead-letter",  # type: ignore[arg-type]
                    topic=EVENTS_TOPIC)
    rec = record(db, "m-1")
    n = -(-len(body) // CHUNK_BYTES)
    assert rec["chunks"] == n and rec["body_bytes"] == len(body) and rec["truncated"] is True
    assert rec["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert rec["topic"] == EVENTS_TOPIC
    # the preview fields stay as the contract says: 64 KiB, base64 when not UTF-8
    assert rec["body"] is None and base64.b64decode(rec["body_base64"]) == body[:MAX_RAW_BODY]
    # every commit within the per-commit limit (the emulator's 4 MiB too); the record comes last
    assert all(sum(size for _, size in commit) <= BATCH_BYTES for commit in db.commits)
    assert all(len(commit) <= 500 for commit in db.commits)
    order = [path for commit in db.commits for path, _ in commit]
    assert order[-1] == "rejected_messages/m-1"
    assert order[:-1] == [f"rejected_messages/m-1/chunks/{i:04d}" for i in range(n)]
    assert all(len(db.docs[p]["data"]) <= CHUNK_BYTES for p in order[:-1])
    assert read_full_body(db, "m-1", rec) == body  # type: ignore[arg-type]


def test_a_small_body_commits_with_its_record_in_one_batch() -> None:
    db = FakeFirestore()
    record_rejected(db, "m-2", b'{"x": 1}', {}, "invalid_message", "bad", "commands")  # type: ignore[arg-type]
    assert len(db.commits) == 1 and len(db.commits[0]) == 2
    rec = record(db, "m-2")
    assert rec["body"] == '{"x": 1}' and rec["truncated"] is False and rec["chunks"] == 1
    assert rec["topic"] is None  # no entry point named one
    assert read_full_body(db, "m-2", rec) == b'{"x": 1}'  # type: ignore[arg-type]


def test_an_empty_body_has_no_chunk_and_reads_back_empty() -> None:
    db = FakeFirestore()
    record_rejected(db, "m-3", b"", {}, "invalid_message", "empty", "events")  # type: ignore[arg-type]
    rec = record(db, "m-3")
    assert rec["chunks"] == 0 and rec["body_bytes"] == 0
    assert read_full_body(db, "m-3", rec) == b""  # type: ignore[arg-type]


def test_a_body_over_the_pubsub_limit_keeps_its_preview_only() -> None:
    db = FakeFirestore()
    body = body_of(MAX_FULL_BODY + 1)
    record_rejected(db, "m-4", body, {}, "invalid_envelope", "huge", "push")  # type: ignore[arg-type]
    rec = record(db, "m-4")
    assert rec["chunks"] is None and rec["body"] == body[:MAX_RAW_BODY].decode()
    assert not [p for p in db.docs if "/chunks/" in p]
    with pytest.raises(BodyUnavailable, match="preview"):
        read_full_body(db, "m-4", rec)  # type: ignore[arg-type]


# ---- the check on reassembly -----------------------------------------------------------------
def test_reassembly_is_checked_against_size_and_sha256() -> None:
    db = FakeFirestore()
    body = body_of(3 * CHUNK_BYTES // 2)
    record_rejected(db, "m-5", body, {}, "dead_lettered", "x", "dead-letter")  # type: ignore[arg-type]
    rec = record(db, "m-5")
    chunk = db.docs["rejected_messages/m-5/chunks/0001"]
    chunk["data"] = b"X" + chunk["data"][1:]  # same size, other bytes
    with pytest.raises(BodyUnavailable, match="body_sha256"):
        read_full_body(db, "m-5", rec)  # type: ignore[arg-type]
    chunk["data"] = chunk["data"][:-1]
    with pytest.raises(BodyUnavailable, match="reassembled"):
        read_full_body(db, "m-5", rec)  # type: ignore[arg-type]
    del db.docs["rejected_messages/m-5/chunks/0001"]
    with pytest.raises(BodyUnavailable, match="chunk 0001 of 2 is missing"):
        read_full_body(db, "m-5", rec)  # type: ignore[arg-type]


def test_records_from_before_full_bodies_read_their_preview_when_it_is_whole() -> None:
    old = {"body": '{"a": 1}', "body_base64": None, "body_bytes": 8, "truncated": False}
    assert read_full_body(FakeFirestore(), "old", old) == b'{"a": 1}'  # type: ignore[arg-type]
    binary = {"body": None, "body_base64": base64.b64encode(b"\xff\x00").decode(), "body_bytes": 2, "truncated": False}
    assert read_full_body(FakeFirestore(), "old", binary) == b"\xff\x00"  # type: ignore[arg-type]
    with pytest.raises(BodyUnavailable, match="64 KiB preview"):
        read_full_body(FakeFirestore(), "old", old | {"truncated": True, "body_bytes": 70_000})  # type: ignore[arg-type]


def test_a_redelivered_rejection_keeps_what_a_replay_wrote() -> None:
    db = FakeFirestore()
    record_rejected(db, "m-6", b"{}", {}, "unknown_run", "x", "events")  # type: ignore[arg-type]
    record(db, "m-6").update(replayed_at=datetime.now(UTC), replay_message_id="r-1")
    record_rejected(db, "m-6", b"{}", {}, "unknown_run", "x", "events")  # type: ignore[arg-type]
    assert record(db, "m-6")["replay_message_id"] == "r-1"


# ---- the original topic --------------------------------------------------------------------------
def test_origin_topic_applies_inside_its_block_only() -> None:
    db = FakeFirestore()
    with rejected.origin_topic("projects/p/topics/a"):
        record_rejected(db, "t-1", b"x", {}, "r", "m", "s")  # type: ignore[arg-type]
        with rejected.origin_topic("projects/p/topics/b"):
            record_rejected(db, "t-2", b"x", {}, "r", "m", "s")  # type: ignore[arg-type]
        record_rejected(db, "t-3", b"x", {}, "r", "m", "s", topic="projects/p/topics/c")  # type: ignore[arg-type]
    record_rejected(db, "t-4", b"x", {}, "r", "m", "s")  # type: ignore[arg-type]
    assert [record(db, f"t-{i}")["topic"] for i in (1, 2, 3, 4)] == [
        "projects/p/topics/a", "projects/p/topics/b", "projects/p/topics/c", None]


@pytest.mark.parametrize(
    ("subscription", "topic"),
    [
        ("projects/p1/subscriptions/evts-podium", "projects/p1/topics/evts"),
        ("cmds-podium", "projects/p1/topics/cmds"),  # a pushed test envelope names it short
        ("projects/p1/subscriptions/cloud-builds-podium", "projects/p1/topics/cloud-builds"),
        ("projects/other/subscriptions/evts-podium", None),  # another project's subscription
        ("projects/p1/subscriptions/someone-else", None),
        ("", None),
    ],
)
def test_dead_letter_origin_is_the_topic_of_its_source_subscription(subscription: str, topic: str | None) -> None:
    attrs = {"CloudPubSubDeadLetterSourceSubscription": subscription} if subscription else {}
    assert dead_letter_origin(SETTINGS, attrs) == topic


class _RecordingStore:
    """A RunStore stand-in whose record_rejected writes through daemon/rejected.py as the real one does."""

    def __init__(self, db: FakeFirestore) -> None:
        self.db = db

    def apply(self, event: Any, message_id: str) -> Applied:
        raise KeyError("a bug")  # permanent: recorded as unprocessable

    def record_rejected(self, message_id: str, body: bytes, attrs: Any, reason: str, message: str, source: str) -> None:
        record_rejected(self.db, message_id, body, attrs, reason, message, source)  # type: ignore[arg-type]


def test_the_engine_records_each_rejection_with_its_original_topic() -> None:
    db = FakeFirestore()
    engine = Engine(SETTINGS, _RecordingStore(db))  # type: ignore[arg-type]
    assert engine.on_command(Inbound("c-1", b"{nope", {}, source="push")) is Verdict.ACK
    event = {"run_id": "r", "event_id": "e", "type": "build.succeeded", "item": "svc", "data": {}}
    assert engine.on_event(Inbound("e-1", json.dumps(event).encode(), {"run_id": "r"})) is Verdict.ACK
    dead = {"CloudPubSubDeadLetterSourceSubscription": "projects/p1/subscriptions/evts-podium",
            "CloudPubSubDeadLetterSourceDeliveryCount": "5", "run_id": "r"}
    assert engine.on_dead_letter(Inbound("d-1", json.dumps(event).encode(), dead, source="dead-letter")) is Verdict.ACK
    assert record(db, "c-1")["topic"] == "projects/p1/topics/cmds"
    assert (record(db, "e-1")["topic"], record(db, "e-1")["reason"]) == (EVENTS_TOPIC, "unprocessable")
    assert (record(db, "d-1")["topic"], record(db, "d-1")["reason"]) == (EVENTS_TOPIC, "dead_lettered")


# ---- replay ---------------------------------------------------------------------------------------
DEAD_ATTRS = {
    "run_id": "r-9",
    "trace_id": "abc",
    "CloudPubSubDeadLetterSourceDeliveryCount": "5",
    "CloudPubSubDeadLetterSourceSubscription": "projects/p1/subscriptions/evts-podium",
    "CloudPubSubDeadLetterSourceSubscriptionProject": "p1",
    "CloudPubSubDeadLetterSourceTopicPublishTime": "2026-12-04T10:00:00Z",
    "googclient_deliveryattempt": "5",
}


def test_replay_attributes_drop_the_dead_letter_bookkeeping() -> None:
    assert replay_attributes(DEAD_ATTRS, "d-7") == {"run_id": "r-9", "trace_id": "abc", REPLAY_OF: "d-7"}


def _dead_letter(db: FakeFirestore, doc_id: str, body: bytes, topic: str | None = EVENTS_TOPIC) -> None:
    record_rejected(db, doc_id, body, DEAD_ATTRS, "dead_lettered", "gave up", "dead-letter", topic=topic)  # type: ignore[arg-type]


def test_replay_republishes_the_full_body_once_unless_forced() -> None:
    db, pub = FakeFirestore(), FakePublisher()
    body = body_of(MAX_RAW_BODY * 3)
    _dead_letter(db, "d-1", body)
    [first] = replay(SETTINGS, ["d-1"], client=db, publisher=pub)  # type: ignore[arg-type]
    assert (first.outcome, first.replay_message_id, first.ok) == ("replayed", "replay-1", True)
    assert pub.sent == [(EVENTS_TOPIC, body, {"run_id": "r-9", "trace_id": "abc", REPLAY_OF: "d-1"})]
    rec = record(db, "d-1")
    assert rec["replay_message_id"] == "replay-1" and rec["replay_count"] == 1 and rec["replayed_at"]
    [again] = replay(SETTINGS, ["d-1"], client=db, publisher=pub)  # type: ignore[arg-type]
    assert again.outcome == "already_replayed" and "replay-1" in again.detail and again.ok
    assert len(pub.sent) == 1
    [forced] = replay(SETTINGS, ["d-1"], force=True, client=db, publisher=pub)  # type: ignore[arg-type]
    assert forced.outcome == "replayed" and len(pub.sent) == 2
    assert record(db, "d-1")["replay_count"] == 2 and record(db, "d-1")["replay_message_id"] == "replay-2"


def test_replay_refuses_a_corrupt_body_or_an_unknown_topic_and_says_so() -> None:
    db, pub = FakeFirestore(), FakePublisher()
    _dead_letter(db, "d-2", body_of(100))
    db.docs["rejected_messages/d-2/chunks/0000"]["data"] = body_of(99) + b"!"
    _dead_letter(db, "d-3", body_of(100), topic=None)
    results = replay(SETTINGS, ["d-2", "d-3", "nope"], client=db, publisher=pub)  # type: ignore[arg-type]
    assert [r.outcome for r in results] == ["failed", "failed", "not_found"]
    assert "body_sha256" in results[0].detail and "topic" in results[1].detail
    assert pub.sent == [] and not record(db, "d-2").get("replayed_at")


def test_a_failed_publish_leaves_the_record_replayable() -> None:
    db = FakeFirestore()
    _dead_letter(db, "d-4", b"{}")
    [failed] = replay(SETTINGS, ["d-4"], client=db, publisher=FakePublisher(fail=True))  # type: ignore[arg-type]
    assert failed.outcome == "failed" and "ServiceUnavailable" in failed.detail
    assert "replayed_at" not in record(db, "d-4") and "publish failed" in record(db, "d-4")["replay_error"]
    [ok] = replay(SETTINGS, ["d-4"], client=db, publisher=FakePublisher())  # type: ignore[arg-type]
    assert ok.outcome == "replayed" and "replay_error" not in record(db, "d-4")


def test_all_dead_lettered_takes_those_not_replayed_yet_oldest_first() -> None:
    db, pub = FakeFirestore(), FakePublisher()
    for doc_id in ("d-a", "d-b", "d-c"):
        _dead_letter(db, doc_id, doc_id.encode())
    record_rejected(db, "bad-1", b"{", {}, "invalid_message", "x", "commands", topic="projects/p1/topics/cmds")  # type: ignore[arg-type]
    record(db, "d-a")["received_at"] -= timedelta(hours=1)
    replay(SETTINGS, ["d-b"], client=db, publisher=pub)  # type: ignore[arg-type]
    assert dead_lettered_ids(db) == ["d-a", "d-c"]  # type: ignore[arg-type]
    results = replay(SETTINGS, all_dead_lettered=True, client=db, publisher=pub)  # type: ignore[arg-type]
    assert [(r.record_id, r.outcome) for r in results] == [("d-a", "replayed"), ("d-c", "replayed")]
    assert replay(SETTINGS, all_dead_lettered=True, client=db, publisher=pub) == []  # type: ignore[arg-type]
    assert len(replay(SETTINGS, all_dead_lettered=True, force=True, client=db, publisher=pub)) == 3  # type: ignore[arg-type]


def test_a_concurrent_replay_of_the_same_record_does_not_publish_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    db, pub = FakeFirestore(), FakePublisher()
    _dead_letter(db, "d-5", b"{}")
    real_get = FakeDoc.get

    def get_then_other_replayer_claims(self: FakeDoc) -> FakeSnap:
        snap = real_get(self)
        if self.path == "rejected_messages/d-5":
            db._stamp(self.path)  # another replayer's claim lands between our read and our claim
        return snap

    monkeypatch.setattr(FakeDoc, "get", get_then_other_replayer_claims)
    [result] = replay(SETTINGS, ["d-5"], client=db, publisher=pub)  # type: ignore[arg-type]
    assert result.outcome == "failed" and "under way" in result.detail and pub.sent == []


# ---- the CLI's pieces ---------------------------------------------------------------------------
def test_since_takes_durations_and_iso_times() -> None:
    now = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    assert parse_since("30m", now) == now - timedelta(minutes=30)
    assert parse_since("1d12h", now) == now - timedelta(hours=36)
    assert parse_since("1w", now) == now - timedelta(days=7)
    assert parse_since("2026-12-04T10:00", now) == datetime(2026, 12, 4, 10, 0, tzinfo=UTC)
    assert parse_since("2026-12-04T10:00:00Z", now) == datetime(2026, 12, 4, 10, 0, tzinfo=UTC)
    assert parse_since("2026-12-04T11:00:00+01:00", now) == datetime(2026, 12, 4, 10, 0, tzinfo=UTC)
    with pytest.raises(argparse.ArgumentTypeError):
        parse_since("yesterday", now)


def test_replay_without_ids_or_all_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(message_ids=[], all_dead_lettered=False, force=False, json=False)
    assert cmd_replay(args, SETTINGS) == 2
    assert "--all-dead-lettered" in capsys.readouterr().err


def test_the_verbs_register_on_a_subparser() -> None:
    from cli import dead_letters

    parser = argparse.ArgumentParser(prog="podium")
    dead_letters.add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["replay", "1", "2", "--force"])
    assert (args.func, args.message_ids, args.force, args.all_dead_lettered) == (cmd_replay, ["1", "2"], True, False)
    args = parser.parse_args(["rejected", "--since", "2h", "--reason", "dead_lettered", "--json"])
    assert args.reason == "dead_lettered" and args.json and args.since.tzinfo is not None
    with pytest.raises(SystemExit) as bad:
        parser.parse_args(["rejected", "--since", "whenever"])
    assert bad.value.code == 2


def test_sizes_and_result_lines_read_well() -> None:
    from daemon.replay import ReplayResult

    assert [human_size(n) for n in (12, 70_000, 3 * 1024 * 1024, None)] == ["12 B", "68.4 KiB", "3.0 MiB", "?"]
    line = describe(ReplayResult("d-1", "replayed", "9 bytes republished to t", "t", "m-2"))
    assert line == "d-1: replayed as message m-2 (9 bytes republished to t)"
    assert describe(ReplayResult("x", "failed", "why")) == "x: FAILED: why"


class _CommandStore:
    """Just enough of RunStore for a command: the events it is asked to apply."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def apply(self, event: Any, message_id: str) -> Any:
        from daemon.store import Applied

        self.events.append(event)
        return Applied("applied", event.run_id)


@pytest.mark.parametrize(
    ("attributes", "event_id"),
    [({}, "cmd~m-9"), ({"podium_replay_of": "1234"}, "cmd~1234"), ({"podium_replay_of": "no/slash"}, "cmd~m-9")],
    ids=["original", "replayed", "unusable-origin"],
)
def test_a_replayed_command_keeps_the_identity_of_the_message_it_replays(
    attributes: dict[str, str], event_id: str
) -> None:
    from daemon.config import Settings
    from daemon.engine import Engine, Inbound

    store = _CommandStore()
    engine = Engine(Settings(), store)  # type: ignore[arg-type]
    engine.on_command(Inbound("m-9", json.dumps({"command": "cancel", "run_id": "r-1"}).encode(), attributes))
    assert [e.event_id for e in store.events] == [event_id]  # a second replay is the same event: a duplicate
