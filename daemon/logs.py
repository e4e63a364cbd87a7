"""structlog configuration: console in local mode, Cloud Logging JSON in gcp mode.

Every line carries ``run_id`` (``-`` when the line is about no run). Per-message context
(run_id, message_id, trace) is scoped with ``structlog.contextvars.bound_contextvars``.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog
from structlog.typing import EventDict, WrappedLogger

_SEVERITY = {"debug": "DEBUG", "info": "INFO", "warning": "WARNING", "error": "ERROR", "critical": "CRITICAL"}


def ensure_run_id(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    event_dict.setdefault("run_id", "-")
    return event_dict


def cloud_logging_fields(project: str) -> Any:
    """Rename to the fields Cloud Logging reads from JSON lines on stdout."""

    def processor(_: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
        event_dict["severity"] = _SEVERITY.get(method, "DEFAULT")
        event_dict["message"] = event_dict.pop("event", "")
        trace = event_dict.pop("trace_id", None)
        if trace:
            event_dict["logging.googleapis.com/trace"] = f"projects/{project}/traces/{trace}"
        return event_dict

    return processor


def configure(fmt: str = "console", project: str = "podium-local", level: int = logging.INFO) -> None:
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        ensure_run_id,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fmt == "json":
        processors = [
            *shared,
            structlog.processors.format_exc_info,
            cloud_logging_fields(project),
            structlog.processors.JSONRenderer(),
        ]
    else:
        processors = [*shared, structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
