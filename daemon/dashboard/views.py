"""What the dashboard sends the browser: run documents and audit records as JSON.

The browser gets an allow-list of the contract's fields (README "Firestore"), never the hydrated
``architecture``, the ``plan`` or the outbox; timestamps as ISO 8601 strings.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

# The run page's fields: the contract's, plus the engine fields that explain a wait or a retry.
RUN_FIELDS = (
    "run_id", "state", "status", "version", "created_at", "updated_at", "error", "progress", "outputs",
    "attempt", "failed_state", "wake_at", "trace_id",
)
AUDIT_FIELDS = ("type", "item", "received_at", "from_state", "to_state", "outcome", "message_id", "detail", "version")
MAX_DETAIL_CHARS = 2000  # an audit line's detail on the page; `podium status RUN --events` has it all


def target(doc: Mapping[str, Any]) -> dict[str, str]:
    """The run's target: the architecture's ``project_id`` and ``name`` (one active run per target)."""
    arch = doc.get("architecture")
    found: dict[str, str] = {}
    if isinstance(arch, Mapping):
        found = {k: str(arch[k]) for k in ("project_id", "name") if arch.get(k)}
    recorded = doc.get("target")
    if not found and isinstance(recorded, Mapping):
        found = {k: str(recorded[k]) for k in ("project_id", "name") if recorded.get(k)}
    elif not found and isinstance(recorded, str) and recorded:
        project, _, name = recorded.partition("/")
        found = {"project_id": project, "name": name} if name else {"name": recorded}
    return found


def run_summary(doc: Mapping[str, Any]) -> dict[str, Any]:
    """One row of the runs list."""
    error = doc.get("error") if isinstance(doc.get("error"), Mapping) else {}
    return {
        "run_id": doc.get("run_id"),
        "status": doc.get("status"),
        "state": doc.get("state"),
        "target": target(doc),
        "created_at": doc.get("created_at"),
        "updated_at": doc.get("updated_at"),
        "error_reason": (error or {}).get("reason"),
    }


def run_detail(doc: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The run page's document (None: no such run, yet)."""
    if doc is None:
        return None
    return {k: doc.get(k) for k in RUN_FIELDS} | {"target": target(doc)}


def audit_record(event_id: str, doc: Mapping[str, Any]) -> dict[str, Any]:
    record = {k: doc.get(k) for k in AUDIT_FIELDS} | {"id": event_id}
    detail = record.get("detail")
    if isinstance(detail, str) and len(detail) > MAX_DETAIL_CHARS:
        record["detail"] = detail[:MAX_DETAIL_CHARS] + " …"
    return record


def _default(value: Any) -> Any:
    if isinstance(value, datetime):  # Firestore's DatetimeWithNanoseconds too
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return aware.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return str(value)


def to_json(value: Any) -> str:
    return json.dumps(value, default=_default, separators=(",", ":"), sort_keys=True)
