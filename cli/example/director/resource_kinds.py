"""What every kind of resource the director manages offers, and the shape it reports.

A kind reads one section of a dataflow's ``resources`` (``gcs_buckets``, ``bigquery_tables``, …),
creates an entry if it is missing (``ensure``: True if it created it, False if it was there) and
deletes it (``delete``: True if it deleted it, False if it was already gone). Both are idempotent,
so a redelivered command does no harm. ``entry`` is what the director reports for it, the shape
the daemon records under ``outputs.resources``.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

Spec = dict[str, Any]  # one resource as the architecture file writes it


class CommandError(Exception):
    """A command that cannot be carried out as given; it is answered with director.failed."""


class Kind(Protocol):
    kind: str  # reported kind, e.g. "gcs_bucket"
    section: str  # the architecture's key, e.g. "gcs_buckets"

    def name(self, spec: Spec) -> str: ...
    def location(self, spec: Spec) -> str: ...
    def ensure(self, spec: Spec) -> bool: ...
    def delete(self, spec: Spec) -> bool: ...


def entry(kind: Kind, spec: Spec, dataflow: str) -> dict[str, str]:
    return {"kind": kind.kind, "name": kind.name(spec), "dataflow": dataflow,
            "location": kind.location(spec) or "global"}


_DURATION = re.compile(r"^(\d+(?:\.\d+)?(?:ns|us|ms|s|m|h|d))+$")
_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h|d)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}


def seconds(value: str) -> float:
    """``"600s"``, ``"1h30m"``, ``"7d"`` → seconds (the architecture file's duration form)."""
    if not _DURATION.match(value or ""):
        raise CommandError(f"{value!r} is not a duration such as '600s' or '1h30m'")
    return sum(float(n) * _UNIT[u] for n, u in _PART.findall(value))
