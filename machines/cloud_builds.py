"""Cloud Build's own notifications (the ``cloud-builds`` topic) → Podium events.

The message shape, from "Subscribe to build notifications"
(https://cloud.google.com/build/docs/subscribe-build-notifications): Cloud Build publishes on the
``cloud-builds`` topic whenever a build changes state (created, working, finished). The message
``data`` is the Build resource as JSON (base64 only on the push wire; a pull client hands over the
decoded bytes), and ``attributes`` carry ``buildId`` and ``status``. The Build resource fields
used here (https://cloud.google.com/build/docs/api/reference/rest/v1/projects.builds, and the
field list of google-cloudevents' ``BuildEventData``): ``id``, ``status`` (enum name in the JSON
form), ``tags``, ``substitutions``, ``results.images[].name`` / ``.digest``, ``logUrl``,
``statusDetail``, ``failureInfo.type`` / ``.detail``.

The build handler (``handlers.image_builds.gcp``) tags its builds ``podium``, ``run-<run id>``,
``svc-<service>`` and ``effect-<sha1(run id, effect id)[:12]>``, sanitised to Cloud Build's tag pattern
``^[\\w][\\w.-]{0,127}$``; as sanitising may lose characters, the exact run id, effect id and
service also travel as the substitutions ``_PODIUM_RUN_ID``, ``_PODIUM_EFFECT_ID`` and
``_PODIUM_SERVICE``, which are read back first. Pure: no Google import, no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from machines.errors import InvalidMessage
from machines.messages import Event, is_valid_run_id

__all__ = [
    "FAILED_STATUSES",
    "IN_FLIGHT_STATUSES",
    "PODIUM_TAG",
    "SUB_EFFECT_ID",
    "SUB_RUN_ID",
    "SUB_SERVICE",
    "build_failure_message",
    "build_tags",
    "built_image",
    "effect_tag",
    "event_from_cloud_build",
    "podium_identity",
    "sanitize_tag",
    "status_name",
]

PODIUM_TAG = "podium"
SUB_RUN_ID = "_PODIUM_RUN_ID"
SUB_EFFECT_ID = "_PODIUM_EFFECT_ID"
SUB_SERVICE = "_PODIUM_SERVICE"

IN_FLIGHT_STATUSES = frozenset({"PENDING", "QUEUED", "WORKING"})
FAILED_STATUSES = frozenset({"FAILURE", "INTERNAL_ERROR", "TIMEOUT", "CANCELLED", "EXPIRED"})

# google.devtools.cloudbuild.v1.Build.Status numbers, for a resource rendered with integer enums.
_STATUS_BY_NUMBER = {
    0: "STATUS_UNKNOWN",
    10: "PENDING",
    1: "QUEUED",
    2: "WORKING",
    3: "SUCCESS",
    4: "FAILURE",
    5: "INTERNAL_ERROR",
    6: "TIMEOUT",
    7: "CANCELLED",
    9: "EXPIRED",
}

TAG_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_MAX_TAG = 128


def sanitize_tag(value: str) -> str:
    """``value`` made to match ``^[\\w][\\w.-]{0,127}$`` (unsafe characters become ``-``)."""
    tag = _TAG_UNSAFE.sub("-", value)
    if not tag or not re.match(r"[A-Za-z0-9_]", tag[0]):
        tag = "x" + tag
    return tag[:_MAX_TAG]


def effect_tag(run_id: str, effect_id: str) -> str:
    """``effect-<sha1(run id NUL effect id)[:12]>``. The run id is part of the hash because the
    engine's effect ids (``build:<service>:a<attempt>``) are only unique within a run."""
    key = f"{run_id}\0{effect_id}".encode()
    return f"effect-{hashlib.sha1(key).hexdigest()[:12]}"


def build_tags(run_id: str, service: str, effect_id: str) -> list[str]:
    """The tags of a Podium build, in order: podium, run-, svc-, effect-."""
    return [
        PODIUM_TAG,
        sanitize_tag(f"run-{run_id}"),
        sanitize_tag(f"svc-{service}"),
        effect_tag(run_id, effect_id),
    ]


def status_name(value: Any) -> str:
    """A Build status as its enum name, whether given as a name or a number."""
    if isinstance(value, bool):
        return "STATUS_UNKNOWN"
    if isinstance(value, int):
        return _STATUS_BY_NUMBER.get(value, "STATUS_UNKNOWN")
    return str(value or "STATUS_UNKNOWN").upper()


def _tag_value(tags: Sequence[str], prefix: str) -> str | None:
    return next((t[len(prefix) :] for t in tags if t.startswith(prefix)), None)


def podium_identity(build: Mapping[str, Any]) -> tuple[str, str | None, str | None] | None:
    """(run id, effect id, service) of a Podium build, or ``None`` if the build is not Podium's.

    Substitutions first (exact values), tags as the fallback (sanitised; the effect id is only
    a hash there, so it is ``None``). A Podium build whose run id cannot be recovered is an
    ``InvalidMessage``."""
    tags = [str(t) for t in build.get("tags") or ()]
    if PODIUM_TAG not in tags:
        return None
    subs = build.get("substitutions") or {}
    run_id = subs.get(SUB_RUN_ID) or _tag_value(tags, "run-")
    service = subs.get(SUB_SERVICE) or _tag_value(tags, "svc-")
    effect_id = subs.get(SUB_EFFECT_ID) or None
    if not run_id or not is_valid_run_id(str(run_id)):
        raise InvalidMessage(
            f"Cloud Build {build.get('id')!r} is tagged podium but names no valid run id ({run_id!r})"
        )
    return str(run_id), effect_id and str(effect_id), service and str(service)


def built_image(build: Mapping[str, Any]) -> tuple[str, str] | None:
    """(``name@digest``, digest) of the first image the build pushed, if any."""
    for image in (build.get("results") or {}).get("images") or ():
        name, digest = image.get("name"), image.get("digest")
        if name and digest:
            base = str(name)
            # ``name`` is the pushed reference (``repo/img:tag``); the pinned form drops the tag.
            last = base.rsplit("/", 1)[-1]
            if ":" in last:
                base = base[: len(base) - len(last)] + last.split(":", 1)[0]
            return f"{base}@{digest}", str(digest)
    return None


def build_failure_message(build: Mapping[str, Any], status: str) -> str:
    """``Cloud Build <id> <STATUS> (<failure type>): <detail> (logs: <url>)``."""
    info = build.get("failureInfo") or {}
    kind = info.get("type") or ""
    detail = info.get("detail") or build.get("statusDetail") or ""
    message = f"Cloud Build {build.get('id') or '?'} {status}"
    if kind and kind != "FAILURE_TYPE_UNSPECIFIED":
        message += f" ({kind})"
    if detail:
        message += f": {detail}"
    if build.get("logUrl"):
        message += f" (logs: {build['logUrl']})"
    return message


def _decode(data: bytes | str) -> Mapping[str, Any]:
    raw = data.encode() if isinstance(data, str) else bytes(data)
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        try:  # the push wire's base64, if a caller passed it on undecoded
            doc = json.loads(base64.b64decode(raw, validate=True))
        except (binascii.Error, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidMessage("cloud-builds message data is not a JSON Build resource") from exc
    if not isinstance(doc, Mapping):
        raise InvalidMessage(
            f"cloud-builds message data must be a JSON object, got {type(doc).__name__}"
        )
    return doc


def event_from_cloud_build(data: bytes | str, attributes: Mapping[str, str]) -> Event | None:
    """The Podium event for a ``cloud-builds`` notification, or ``None``.

    ``None`` for a build that is not Podium's (no ``podium`` tag) and for a status that is not
    final (PENDING, QUEUED, WORKING): the consumer acks those without recording a run event.
    SUCCESS → ``build.succeeded`` (``image`` = ``<name>@<digest>``); FAILURE, INTERNAL_ERROR,
    TIMEOUT, CANCELLED, EXPIRED → ``build.failed`` (``error`` = status, failure detail, log URL).
    The event id is ``cloudbuild~<build id>~<status>``, so a redelivered notification is a
    duplicate. Malformed data raises ``InvalidMessage`` (recorded as a rejected message)."""
    build = _decode(data)
    identity = podium_identity(build)
    if identity is None:
        return None
    run_id, effect_id, service = identity
    status = status_name(attributes.get("status") or build.get("status"))
    build_id = str(attributes.get("buildId") or build.get("id") or "")
    if not build_id:
        raise InvalidMessage("cloud-builds message names no build id")
    if status not in FAILED_STATUSES and status != "SUCCESS":
        return None

    payload: dict[str, Any] = {"build_id": build_id}
    if effect_id:
        payload["effect_id"] = effect_id
    if build.get("logUrl"):
        payload["log_url"] = build["logUrl"]
    event_type = "build.succeeded"
    if status == "SUCCESS":
        image = built_image(build)
        if image is None:
            event_type = "build.failed"
            payload["error"] = (
                f"Cloud Build {build_id} SUCCESS but it reported no pushed image digest"
            )
        else:
            payload["image"], payload["digest"] = image
    else:
        event_type = "build.failed"
        payload["error"] = build_failure_message(build, status)
    return Event(
        run_id=run_id,
        event_id=f"cloudbuild~{build_id}~{status}",
        type=event_type,
        item=service,
        data=payload,
    )
