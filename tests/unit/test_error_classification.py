"""Only transient failures are nacked (issue 10 point 3): the classifier and the engine's verdicts.

A failure that would repeat on every delivery (a value Firestore cannot store, a bug) is
recorded in ``rejected_messages`` and acked, so it neither loops for ``max_delivery_attempts``
nor holds up its run's ordering key; one that may pass later (Aborted, Unavailable, a
transaction that lost every retry to contention) is nacked for Pub/Sub to redeliver.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from google.api_core import exceptions as gexc

from daemon.config import Settings
from daemon.engine import Engine, Inbound, Verdict, trace_of
from daemon.store import Applied
from handlers.google_errors import api_error, is_transient
from machines.errors import HandlerError, InvalidMessage, TransientError


class _Rpc(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code


def _contention() -> ValueError:
    """What google-cloud-firestore raises when a transaction lost every attempt to Aborted."""
    try:
        try:
            raise gexc.Aborted("too much contention")
        except gexc.Aborted as last:
            raise ValueError("Failed to commit transaction in 5 attempts.") from last
    except ValueError as exc:
        return exc


@pytest.mark.parametrize(
    "exc",
    [
        gexc.Aborted("conflict"),
        gexc.ServiceUnavailable("emulator down"),
        gexc.DeadlineExceeded("slow"),
        gexc.ResourceExhausted("quota"),
        gexc.InternalServerError("stream reset"),
        gexc.RetryError("gave up", cause=gexc.ServiceUnavailable("x")),
        _Rpc(grpc.StatusCode.UNAVAILABLE),
        ConnectionResetError(),
        TimeoutError(),
        TransientError("later"),
        _contention(),
    ],
    ids=lambda e: type(e).__name__,
)
def test_transient_errors(exc: BaseException) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        gexc.InvalidArgument("Property outputs contains an invalid nested entity."),
        gexc.FailedPrecondition("no index"),
        gexc.PermissionDenied("no"),
        gexc.NotFound("gone"),
        _Rpc(grpc.StatusCode.INVALID_ARGUMENT),
        ValueError("One or more components is not a string or is empty."),
        UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"),
        TypeError("a bug"),
        HandlerError("bad input", retryable=False),
        InvalidMessage("not JSON"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_permanent_errors(exc: BaseException) -> None:
    assert not is_transient(exc)


class _Store:
    """Just enough of RunStore: ``apply`` raises what the test says; rejects are remembered."""

    def __init__(self, raises: BaseException | None = None, record_fails: bool = False) -> None:
        self.raises = raises
        self.record_fails = record_fails
        self.rejected: list[tuple[str, str, str]] = []

    def apply(self, event: Any, message_id: str) -> Applied:
        if self.raises is not None:
            raise self.raises
        return Applied("applied", event.run_id)

    def record_rejected(self, message_id: str, body: bytes, attrs: Any, reason: str, message: str, source: str) -> None:
        if self.record_fails:
            raise gexc.ServiceUnavailable("firestore down")
        self.rejected.append((message_id, reason, message))


def _event() -> Inbound:
    body = {"run_id": "r-1", "event_id": "e-1", "type": "build.succeeded", "item": "svc", "data": {"image": "x"}}
    return Inbound("m-1", json.dumps(body).encode(), {"run_id": "r-1"})


def _engine(store: _Store) -> Engine:
    return Engine(Settings(), store)  # type: ignore[arg-type]


def test_a_transient_failure_is_nacked_and_not_recorded() -> None:
    store = _Store(gexc.ServiceUnavailable("down"))
    assert _engine(store).on_event(_event()) is Verdict.NACK
    assert store.rejected == []


@pytest.mark.parametrize(
    "exc",
    [gexc.InvalidArgument("The value of property \"outputs\" is longer than 1048487 bytes."),
     ValueError("One or more components is not a string or is empty."),
     KeyError("a bug in decide")],
    ids=lambda e: type(e).__name__,
)
def test_a_permanent_failure_is_recorded_and_acked(exc: BaseException) -> None:
    store = _Store(exc)
    assert _engine(store).on_event(_event()) is Verdict.ACK
    [(message_id, reason, message)] = store.rejected
    assert (message_id, reason) == ("m-1", "unprocessable")
    assert type(exc).__name__ in message


def test_a_huge_error_text_is_clipped_in_the_record() -> None:
    store = _Store(ValueError("x" * 1_000_000))
    _engine(store).on_event(_event())
    [(_id, _reason, message)] = store.rejected
    assert len(message) < 1100 and "more characters" in message


def test_when_the_reject_cannot_be_recorded_the_message_is_nacked_not_lost() -> None:
    store = _Store(ValueError("permanent"), record_fails=True)
    assert _engine(store).on_event(_event()) is Verdict.NACK


def test_a_failure_after_the_commit_still_acks() -> None:
    def explode(_applied: Applied) -> None:
        raise RuntimeError("notifier down")

    engine = Engine(Settings(), _Store(), notify=explode)  # type: ignore[arg-type]
    store_event = _event()
    assert engine.on_event(store_event) is Verdict.ACK


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        ({"trace_id": "abc123"}, "abc123"),
        ({"trace_id": "x" * 5000}, None),
        ({"trace_id": "a b"}, None),
        ({"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"}, "a" * 32),
        ({"traceparent": "00-" + "Z" * 32 + "-" + "b" * 16 + "-01"}, None),
    ],
)
def test_trace_ids_from_attributes_are_bounded(attrs: dict[str, str], expected: str | None) -> None:
    assert trace_of(attrs) == expected


# ---- api_error: the one classifier of the gcp handlers (IAM, Cloud Build, Cloud Run, director) ----


@pytest.mark.parametrize(
    ("exc", "retryable", "says"),
    [
        (gexc.PermissionDenied("run.services.get denied"), False, "permission denied"),
        (gexc.Unauthenticated("no token"), False, "permission denied"),
        (gexc.InvalidArgument("bad"), False, "rejected"),
        (gexc.FailedPrecondition("no index"), False, "rejected"),
        (gexc.ServiceUnavailable("try later"), True, "transient error"),
        (gexc.Aborted("etag mismatch"), True, "transient error"),
        (gexc.NotFound("no such account"), True, "NotFound"),  # unknown to the classifier: retried
    ],
)
def test_api_error_names_the_work_and_says_whether_to_retry(exc: Exception, retryable: bool, says: str) -> None:
    error = api_error(exc, "creating X")
    assert isinstance(error, HandlerError)
    assert error.retryable is retryable
    assert error.message.startswith("creating X: ") and says in error.message and str(exc) in error.message


def test_api_error_keeps_a_podium_error_and_treats_missing_as_not_yet_visible_when_asked() -> None:
    own = HandlerError("mine", retryable=False)
    assert api_error(own, "x") is own
    assert "transient" in api_error(gexc.NotFound("gone"), "x", missing_is_transient=True).message


def test_api_error_carries_the_servers_retry_delay() -> None:
    from google.protobuf import duration_pb2
    from google.rpc import error_details_pb2

    info = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=42, nanos=500_000_000))
    error = api_error(gexc.TooManyRequests("quota", details=[info]), "starting a build")
    assert error.retryable and error.retry_after == 42.5
    assert api_error(gexc.ServiceUnavailable("down"), "x").retry_after is None
