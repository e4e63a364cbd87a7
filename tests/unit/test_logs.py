"""Structured logs: run_id on every line, Cloud Logging's fields in JSON mode, trace ids."""

from __future__ import annotations

import json

import pytest
import structlog

from daemon import logs
from daemon.engine import trace_of


@pytest.fixture(autouse=True)
def _reset_structlog():
    yield
    structlog.reset_defaults()


def _lines(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_json_lines_carry_cloud_logging_fields_and_run_id(capsys):
    logs.configure("json", project="proj-1")
    log = structlog.get_logger("t")
    with structlog.contextvars.bound_contextvars(run_id="r-1", trace_id="abc123"):
        log.warning("something happened", detail=1)
    log.info("no run here")
    first, second = _lines(capsys)
    assert first["severity"] == "WARNING"
    assert first["message"] == "something happened"
    assert first["run_id"] == "r-1"
    assert first["logging.googleapis.com/trace"] == "projects/proj-1/traces/abc123"
    assert second["run_id"] == "-"  # every line carries run_id
    assert "logging.googleapis.com/trace" not in second


def test_console_lines_carry_run_id(capsys):
    logs.configure("console")
    with structlog.contextvars.bound_contextvars(run_id="r-2"):
        structlog.get_logger("t").info("hello")
    assert "run_id=r-2" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ({"trace_id": "t-1"}, "t-1"),
        ({"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}, "4bf92f3577b34da6a3ce929d0e0e4736"),
        ({"traceparent": "garbage"}, None),
        ({}, None),
    ],
)
def test_trace_id_from_message_attributes(attributes, expected):
    assert trace_of(attributes) == expected
