"""machines.messages: the wire schemas (DESIGN.md §4, §6). Bad input is an InvalidMessage whose
text names what is wrong, never another exception."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from machines.errors import InvalidMessage, PodiumError
from machines.messages import (
    EVENT_TYPES,
    CancelCommand,
    EffectSpec,
    Event,
    RetryCommand,
    RunState,
    StartCommand,
    is_valid_run_id,
    parse_command,
    parse_event,
)

ARCHITECTURE = {"name": "demo", "services": {"publisher": {"path": "svc/publisher"}}}
ARCHITECTURE_YAML = "name: demo\nservices:\n  publisher:\n    path: svc/publisher\n"


def body(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def event_body(**overrides: Any) -> bytes:
    event = {"run_id": "demo-1", "event_id": "e-1", "type": "build.succeeded", "item": "publisher"}
    event.update(overrides)
    return body({k: v for k, v in event.items() if v is not ...})


def rejected(parse: Any, raw: bytes) -> str:
    """The InvalidMessage text ``parse`` gives for ``raw`` (it must give one)."""
    with pytest.raises(InvalidMessage) as info:
        parse(raw)
    err = info.value
    assert err.reason == "invalid_message"
    assert err.retryable is False  # bad input is recorded and acked, never retried
    assert str(err) == err.message
    return err.message


# ---- commands ------------------------------------------------------------------------


def test_start_with_an_architecture_object() -> None:
    cmd = parse_command(
        body(
            {
                "command": "start",
                "run_id": "demo-1",
                "architecture": ARCHITECTURE,
                "source_root": "gs://bucket/src.tar.gz",
            }
        )
    )
    assert isinstance(cmd, StartCommand)
    assert cmd.run_id == "demo-1"
    assert cmd.architecture == ARCHITECTURE
    assert cmd.architecture_yaml is None
    assert cmd.source_root == "gs://bucket/src.tar.gz"


def test_start_with_architecture_yaml_and_no_run_id() -> None:
    cmd = parse_command(body({"command": "start", "architecture_yaml": ARCHITECTURE_YAML}))
    assert isinstance(cmd, StartCommand)
    assert cmd.architecture_yaml == ARCHITECTURE_YAML
    assert cmd.architecture is None
    assert cmd.run_id is None  # the engine uses the Pub/Sub message id
    assert cmd.source_root is None


@pytest.mark.parametrize(
    "fields",
    [
        {"architecture": ARCHITECTURE, "architecture_yaml": ARCHITECTURE_YAML},
        {},
        {"architecture": None, "architecture_yaml": None},
    ],
    ids=["both", "neither", "both-null"],
)
def test_start_needs_exactly_one_architecture(fields: dict[str, Any]) -> None:
    message = rejected(parse_command, body({"command": "start", "run_id": "demo-1", **fields}))
    assert message.startswith("invalid start command:")
    assert "exactly one of 'architecture' or 'architecture_yaml' is required" in message


def test_start_architecture_of_the_wrong_type_is_named() -> None:
    message = rejected(parse_command, body({"command": "start", "architecture": "name: demo"}))
    assert "architecture" in message
    assert "dictionary" in message


@pytest.mark.parametrize(("name", "cls"), [("cancel", CancelCommand), ("retry", RetryCommand)])
def test_cancel_and_retry(name: str, cls: type) -> None:
    cmd = parse_command(body({"command": name, "run_id": "demo-1"}))
    assert isinstance(cmd, cls)
    assert cmd.run_id == "demo-1"


@pytest.mark.parametrize("name", ["cancel", "retry"])
def test_cancel_and_retry_need_a_run_id(name: str) -> None:
    message = rejected(parse_command, body({"command": name}))
    assert message.startswith(f"invalid {name} command:")
    assert "run_id" in message
    assert "Field required" in message


@pytest.mark.parametrize(
    "run_id", ["a/b", ".", "..", "", "-lead", "_x", "a b", "x" * 129, "abc\n", "é"]
)
@pytest.mark.parametrize("name", ["start", "cancel"])
def test_run_ids_that_are_no_firestore_document_id_are_rejected(name: str, run_id: str) -> None:
    cmd = {"command": name, "run_id": run_id}
    if name == "start":
        cmd["architecture"] = ARCHITECTURE
    message = rejected(parse_command, body(cmd))
    assert "run_id" in message
    assert not is_valid_run_id(run_id)


@pytest.mark.parametrize("run_id", ["demo-1", "a", "A.b_c:d-9", "x" * 128])
def test_valid_run_ids(run_id: str) -> None:
    assert is_valid_run_id(run_id)
    assert parse_command(body({"command": "cancel", "run_id": run_id})).run_id == run_id


@pytest.mark.parametrize("command", ["delete", "START", "", None, 5, ["start"], {"start": 1}])
def test_unknown_command(command: Any) -> None:
    message = rejected(parse_command, body({"command": command, "run_id": "demo-1"}))
    assert message.startswith(f"unknown command {command!r}")
    assert "'start', 'cancel', 'retry' or 'teardown'" in message


def test_missing_command_field() -> None:
    assert rejected(parse_command, body({"run_id": "demo-1"})).startswith("unknown command None")


@pytest.mark.parametrize(
    "cmd",
    [
        {"command": "cancel", "run_id": "demo-1", "force": True},
        {"command": "retry", "run_id": "demo-1", "force": True},
        {"command": "start", "architecture": ARCHITECTURE, "force": True},
    ],
    ids=["cancel", "retry", "start"],
)
def test_unknown_command_fields_are_rejected_by_name(cmd: dict[str, Any]) -> None:
    message = rejected(parse_command, body(cmd))
    assert "force" in message
    assert "Extra inputs are not permitted" in message


def test_cancel_does_not_take_start_fields() -> None:
    message = rejected(
        parse_command, body({"command": "cancel", "run_id": "demo-1", "architecture": {}})
    )
    assert "architecture" in message


def test_trace_id_is_accepted_on_every_command() -> None:
    for cmd in (
        {"command": "start", "architecture": ARCHITECTURE},
        {"command": "cancel", "run_id": "r"},
        {"command": "retry", "run_id": "r"},
    ):
        assert parse_command(body({**cmd, "trace_id": "t-1"})).trace_id == "t-1"


def test_commands_are_immutable() -> None:
    cmd = parse_command(body({"command": "cancel", "run_id": "demo-1"}))
    with pytest.raises(ValidationError):
        cmd.run_id = "other"  # type: ignore[misc]


# ---- bodies that are not JSON objects (both parsers) ------------------------------------

PARSERS = pytest.mark.parametrize("parse", [parse_command, parse_event], ids=["command", "event"])


@PARSERS
@pytest.mark.parametrize(
    "raw", [b"", b"{", b"start", b"{'command': 'start'}", b'{"command": "start",}', b"\x00"]
)
def test_not_json(parse: Any, raw: bytes) -> None:
    assert rejected(parse, raw).startswith("body is not JSON:")


@PARSERS
@pytest.mark.parametrize(
    "raw",
    [b"\xff\xfe{}", '{"command": "cancel", "run_id": "caf\xe9"}'.encode("latin-1"), b"\xc3"],
)
def test_not_utf8(parse: Any, raw: bytes) -> None:
    message = rejected(parse, raw)
    assert message.startswith("body is not UTF-8")
    assert "at byte" in message


@PARSERS
def test_utf8_bom_is_not_json(parse: Any) -> None:
    assert "BOM" in rejected(parse, b'\xef\xbb\xbf{"command": "cancel", "run_id": "r"}')


@PARSERS
@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (b"[]", "list"),
        (b'[{"command": "cancel"}]', "list"),
        (b'"start"', "str"),
        (b"5", "int"),
        (b"null", "NoneType"),
    ],
)
def test_json_that_is_not_an_object(parse: Any, raw: bytes, kind: str) -> None:
    message = rejected(parse, raw)
    assert message.endswith(f"must be a JSON object, got {kind}")


@PARSERS
@pytest.mark.parametrize(
    "raw",
    [
        # Under the event size bound (64 KiB), so the nesting is what is refused.
        b"[" * 30_000,
        b"[" * 30_000 + b"]" * 30_000,
        b'{"a":' * 6_000 + b"1" + b"}" * 6_000,
        b'{"command": "start", "architecture": {"x": ' + b"[" * 30_000 + b"]" * 30_000 + b"}}",
    ],
    ids=["open", "closed", "objects", "inside-a-command"],
)
def test_deeply_nested_json_is_rejected_not_a_crash(parse: Any, raw: bytes) -> None:
    assert "nested too deeply" in rejected(parse, raw)


@PARSERS
def test_huge_integer_is_an_invalid_message(parse: Any) -> None:
    rejected(parse, b'{"command": "cancel", "run_id": "r", "data": {"seq": ' + b"9" * 5000 + b"}}")


# ---- events ----------------------------------------------------------------------------


def test_valid_event() -> None:
    event = parse_event(event_body(data={"image": "local://publisher@sha256:abc"}))
    assert event == Event(
        run_id="demo-1",
        event_id="e-1",
        type="build.succeeded",
        item="publisher",
        data={"image": "local://publisher@sha256:abc"},
    )


def test_minimal_event_defaults() -> None:
    event = parse_event(body({"run_id": "demo-1", "event_id": "e-1", "type": "director.ready"}))
    assert event.item is None
    assert event.data == {}


@pytest.mark.parametrize("type_", sorted(EVENT_TYPES))
def test_every_contract_event_type_parses(type_: str) -> None:
    assert parse_event(event_body(type=type_)).type == type_


def test_event_round_trips_through_to_json() -> None:
    event = Event(run_id="demo-1", event_id="e~1", type="build.succeeded", data={"image": "x"})
    assert parse_event(event.to_json()) == event
    assert b'"item"' not in event.to_json()  # None fields are left out of the wire form


@pytest.mark.parametrize("field", ["run_id", "event_id", "type"])
def test_event_missing_a_required_field(field: str) -> None:
    message = rejected(parse_event, event_body(**{field: ...}))
    assert message.startswith("invalid event:")
    assert field in message
    assert "Field required" in message


def test_event_with_an_unknown_type() -> None:
    message = rejected(parse_event, event_body(type="build.exploded"))
    assert "unknown event type 'build.exploded'" in message
    assert "build.succeeded" in message  # it lists what would have been accepted


@pytest.mark.parametrize(
    "event_id",
    ["director/cmd-1/ready", "/", "a/", "", "x" * 501],
    ids=["slash", "only-slash", "trailing", "empty", "long"],
)
def test_event_id_that_cannot_be_a_document_id(event_id: str) -> None:
    message = rejected(parse_event, event_body(event_id=event_id))
    assert "event_id" in message


@pytest.mark.parametrize(
    "event_id",
    [
        pytest.param(
            ".",
        ),
        pytest.param(
            "..",
        ),
        pytest.param(
            "__ids__",
        ),
        pytest.param(
            "\U0001f600" * 400,
        ),
    ],
    ids=["dot", "dotdot", "reserved", "1600-bytes"],
)
def test_event_ids_firestore_refuses_are_rejected(event_id: str) -> None:
    """``events/{event_id}`` is a Firestore document (store.py): an id Firestore refuses would
    fail the transaction on every redelivery instead of landing in rejected_messages."""
    message = rejected(parse_event, event_body(event_id=event_id))
    assert "event_id" in message


def test_event_id_with_a_lone_surrogate_is_rejected_not_a_crash() -> None:
    raw = b'{"run_id": "demo-1", "event_id": "\\ud800", "type": "build.succeeded"}'
    assert "event_id" in rejected(parse_event, raw)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("data", "image=x"),
        ("data", [1, 2]),
        ("data", None),
        ("item", 5),
        ("item", {"name": "publisher"}),
        ("type", 5),
        ("run_id", 5),
        ("run_id", "demo/1"),
        ("event_id", 7),
    ],
)
def test_event_field_of_the_wrong_type_is_named(field: str, value: Any) -> None:
    message = rejected(parse_event, event_body(**{field: value}))
    assert message.startswith("invalid event:")
    assert f"{field}:" in message


@pytest.mark.parametrize("extra", ["colour", "command", "attributes", "runId"])
def test_unknown_event_fields_are_rejected_by_name(extra: str) -> None:
    message = rejected(parse_event, event_body(**{extra: "x"}))
    assert f"{extra}: Extra inputs are not permitted" in message


def test_many_problems_are_summed_up_not_all_listed() -> None:
    raw = body({f"extra{i}": i for i in range(9)})
    message = rejected(parse_event, raw)
    # 3 missing fields + 9 extras: five are named, the rest counted
    assert message.count(";") == 4
    assert message.endswith("(+7 more)")


def test_events_are_immutable() -> None:
    event = parse_event(event_body())
    with pytest.raises(ValidationError):
        event.type = "build.failed"  # type: ignore[misc]


# ---- the other schemas ------------------------------------------------------------------


def test_effect_ids_cannot_hold_a_slash() -> None:
    assert EffectSpec(effect_id="build:publisher:a0", kind="build").params == {}
    with pytest.raises(ValidationError, match="effect_id"):
        EffectSpec(effect_id="build/publisher", kind="build")


def test_run_state_ignores_document_fields_it_does_not_model() -> None:
    run = RunState.model_validate({"run_id": "demo-1", "state": "building", "outputs_v2": {}})
    assert run.state == "building"
    assert run.status == "running"
    assert not hasattr(run, "outputs_v2")


def test_run_state_rejects_an_unknown_status() -> None:
    with pytest.raises(ValidationError, match="status"):
        RunState.model_validate({"run_id": "demo-1", "status": "paused"})


def test_invalid_message_is_a_podium_error() -> None:
    assert issubclass(InvalidMessage, PodiumError)


@pytest.mark.parametrize("kind", ["timer.fired", "command.cancel", "command.retry", "command.start"])
def test_internal_and_command_types_cannot_be_published_as_events(kind: str) -> None:
    # a forged timer could fail any state; commands belong on the commands topic
    message = rejected(parse_event, event_body(type=kind))
    assert "cannot be published" in message


# ---- bounds: what passes here can be stored (issue 10 point 3) -------------------------


def too_large(parse: Any, raw: bytes) -> str:
    with pytest.raises(InvalidMessage) as info:
        parse(raw)
    assert info.value.reason == "message_too_large"
    assert info.value.retryable is False
    return info.value.message


def test_oversized_command_body_is_refused_before_parsing() -> None:
    from machines.messages import MAX_COMMAND_BYTES

    raw = b'{"command": "start", "architecture_yaml": "' + b"x" * MAX_COMMAND_BYTES + b'"}'
    assert f"at most {MAX_COMMAND_BYTES}" in too_large(parse_command, raw)


def test_oversized_event_body_is_refused_before_parsing() -> None:
    from machines.messages import MAX_EVENT_BYTES

    message = too_large(parse_event, event_body(data={"x": "y" * MAX_EVENT_BYTES}))
    assert "event body is" in message


def test_event_data_over_the_bound_is_refused() -> None:
    from machines.messages import MAX_EVENT_DATA_BYTES

    message = rejected(parse_event, event_body(data={"error": "e" * (MAX_EVENT_DATA_BYTES + 10)}))
    assert "data is" in message and str(MAX_EVENT_DATA_BYTES) in message


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, [1, {"deep": 2**70}]], ids=["max+1", "min-1", "nested"])
def test_integer_firestore_cannot_store_is_refused(value: Any) -> None:
    assert "beyond 64 bits" in rejected(parse_event, event_body(data={"n": value}))


def test_integer_at_the_int64_bounds_is_accepted() -> None:
    event = parse_event(event_body(data={"hi": 2**63 - 1, "lo": -(2**63)}))
    assert event.data["hi"] == 2**63 - 1


def test_data_nested_deeper_than_firestore_allows_is_refused() -> None:
    nested: dict[str, Any] = {}
    cur = nested
    for _ in range(20):
        cur["a"] = {}
        cur = cur["a"]
    assert "nested deeper" in rejected(parse_event, event_body(data=nested))


@pytest.mark.parametrize(
    "effect_id", ["build:a/b:a0", "", "../x", 5, "x" * 301], ids=["slash", "empty", "dots", "int", "long"]
)
def test_effect_id_in_data_must_be_an_effect_id(effect_id: Any) -> None:
    assert "effect_id" in rejected(parse_event, event_body(data={"effect_id": effect_id}))


def test_real_effect_ids_and_event_ids_pass() -> None:
    event = parse_event(
        event_body(
            event_id="iam.verify:accounts:a1:p3~iam.verified~accounts",
            data={"effect_id": "iam.verify:accounts:a1:p3"},
        )
    )
    assert event.data["effect_id"] == "iam.verify:accounts:a1:p3"
    parse_event(event_body(event_id="director~demo-1:dataflow-setup:orders:a0~dataflow_complete"))
    parse_event(event_body(event_id="cloudbuild~0b4e6f6c-1f7e-4a7b-9d3e-3f1c1b0f9a11~SUCCESS"))


@pytest.mark.parametrize("event_id", ["__x__", ".", "..", "~x", "a b", "a\nb", "é"])
def test_event_id_outside_the_pattern_is_refused(event_id: str) -> None:
    assert "event_id" in rejected(parse_event, event_body(event_id=event_id))


@pytest.mark.parametrize("item", ["", "a/b", "x" * 129, "a\x00b", "svc name"])
def test_item_outside_the_pattern_is_refused(item: str) -> None:
    assert "item" in rejected(parse_event, event_body(item=item))


@pytest.mark.parametrize("trace_id", ["x" * 129, "a b", "t/1", ""])
def test_trace_id_outside_the_pattern_is_refused(trace_id: str) -> None:
    assert "trace_id" in rejected(parse_command, body({"command": "cancel", "run_id": "r", "trace_id": trace_id}))


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_not_json(constant: str) -> None:
    body = '{"run_id": "r", "event_id": "e-1", "type": "deploy.succeeded", "item": "a", "data": {"x": ' + constant + "}}"
    with pytest.raises(InvalidMessage, match=f"{constant} is not a JSON value"):
        parse_event(body.encode())
