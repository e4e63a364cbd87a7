"""A stateful fake of Cloud Build v1 (``google.devtools.cloudbuild.v1.CloudBuild``).

Served over gRPC on loopback; the real ``cloudbuild_v1.CloudBuildClient`` talks to it through
``tests.fakes.grpc_server.insecure_client``. Methods: ``CreateBuild`` (a long-running operation
whose metadata is ``BuildOperationMetadata`` holding the new build and whose response is the
finished ``Build``), ``GetBuild``, ``CancelBuild`` and ``ListBuilds``. A build moves QUEUED →
WORKING (after ``queue_delay`` s) → SUCCESS or FAILURE (after ``build_delay`` s more), driven by
one timer thread; ``CancelBuild`` makes a queued or working build CANCELLED.

Notifications ("Subscribe to build notifications",
https://cloud.google.com/build/docs/subscribe-build-notifications): "Cloud Build publishes
messages on a Google Pub/Sub topic when your build's state changes, such as when your build is
created, when your build transitions to a working state, and when your build completes"; the
topic is ``cloud-builds`` (of the build's project); "Each message contains a base64 JSON string
representation of your Build resource in the message.data attribute. The build's unique ID and
the build's status can be found in the message.attributes field" — a push subscription shows
``"attributes": {"buildId": "...", "status": "SUCCESS"}``. So every status change is published
through the given ``pubsub_v1.PublisherClient`` (the emulator when ``PUBSUB_EMULATOR_HOST`` is
set) with ``data`` = the Build in its REST/JSON form (``MessageToJson`` of the protobuf: camelCase,
enum names, empty fields left out, as in
https://cloud.google.com/build/docs/api/reference/rest/v1/projects.builds) and the attributes
``buildId`` and ``status``. The topic is not created: the guide makes that a user step
("Create the cloud-builds topic"); a failed publish is kept in ``publish_errors``. Every
notification is also recorded in ``notifications`` (with or without a publisher).

Rules enforced on ``CreateBuild`` (``INVALID_ARGUMENT``, before anything runs):

* ``steps`` is "Required. The operations to be performed on the workspace" and each step's
  ``name`` is "Required. The name of the container image that will run this particular build
  step" (``Build`` / ``BuildStep`` in the REST reference above).
* ``service_account`` "Must be of the format ``projects/{PROJECT_ID}/serviceAccounts/{ACCOUNT}``.
  ACCOUNT can be email address or uniqueId of the service account" (``Build.serviceAccount``).
* With a ``service_account`` the build must say where logs go: "If you specify your own service
  account for builds, you must store your build logs either in Cloud Logging or in a
  user-created Cloud Storage bucket" ("Configure user-specified service accounts",
  https://cloud.google.com/build/docs/securing-builds/configure-user-specified-service-accounts);
  the service's message, quoted in e.g.
  https://github.com/GoogleCloudPlatform/terraform-google-dataplex-auto-data-quality/pull/39, is
  reproduced: "if 'build.service_account' is specified, the build must either (a) specify
  'build.logs_bucket', (b) use the REGIONAL_USER_OWNED_BUCKET
  build.options.default_logs_bucket_behavior option, or (c) use either CLOUD_LOGGING_ONLY / NONE
  logging options".
* ``tags`` match ``^[\\w][\\w.-]{0,127}$`` (``Build.tags``; see ``machines.cloud_builds``).
* User substitutions "must begin with an underscore (_) and use only uppercase-letters and
  numbers (respecting the regular expression _[A-Z0-9_]+)"; unless
  ``options.substitution_option`` is ``ALLOW_LOOSE``, a substitution the steps and images never
  use, or a ``$_VAR`` they use that is not defined, is an error ("Use substitutions",
  https://cloud.google.com/build/docs/configuring-builds/substitute-variable-values; the excerpt
  retrieved while writing this fake stopped before that paragraph, so the wording and the two
  error messages are from memory, not verified).
* A ``storage_source`` names both ``bucket`` and ``object``.

Then, when a build finishes (in this order):

1. FETCHSOURCE: a ``storage_source`` whose object ``source_exists(bucket, object)`` denies fails
   the build (FAILURE, ``FETCH_SOURCE_FAILED``).
2. ``rules``: each ``BuildRule`` may fail the build; the default rule fails it with
   ``PUSH_IMAGE_NOT_FOUND`` when an image of ``images`` is named by no step (``docker push``'s
   "An image does not exist locally with the tag"); ``failing_step`` makes a step fail the way a
   real step does (``build step N "<name>" failed: step exited with non-zero status: 1``).
3. Push: "images: A list of images to be pushed upon the successful completion of all build
   steps ... If any of the images fail to be pushed, the build status is marked FAILURE"
   (``Build.images``); each image goes to the Artifact Registry fake, which refuses one whose
   repository is missing (FAILURE, ``PUSH_FAILED``, ``name unknown: Repository "<r>" not found``).
4. SUCCESS with ``results.images`` (``name`` as pushed, ``digest``; "The digests of the pushed
   images will be stored in the Build resource's results field").

``ListBuilds`` returns builds "sorted by create_time, descending" (``ListBuildsResponse``) and
understands conjunctions (``AND``) of ``field="value"`` / ``field!="value"`` over ``status``,
``build_id``/``id``, ``tags``, ``images``, ``trigger_id``, ``project_id``,
``source.storage_source.bucket`` and ``.object`` (a subset of "Filtering build results using
queries", https://cloud.google.com/build/docs/view-build-results); anything else is
``INVALID_ARGUMENT`` here although the real service may accept it.

Known differences: the operation's metadata is the build as created (the shared ``Operations``
does not refresh metadata); a failed build ends its operation with ``UNKNOWN`` "Build failed;
check build logs for details" and a cancelled one with ``CANCELLED`` (the real messages were not
verified against documentation); no PENDING/approval, TIMEOUT, EXPIRED, worker pools, triggers,
logs.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.cloud.devtools import cloudbuild_v1 as cb
from google.longrunning import operations_pb2
from google.protobuf import json_format

from .artifact_registry import (
    ArtifactRegistryFake,
    PushRejected,
    now_timestamp,
    page,
)
from .grpc_server import FakeError, FakeServer, ServedFake, Unary, insecure_client

__all__ = [
    "FAILED_BUILD_MESSAGE",
    "LOGS_RULE_MESSAGE",
    "NOTIFICATION_TOPIC",
    "SERVICE",
    "BuildFakes",
    "BuildRule",
    "CloudBuildFake",
    "Failure",
    "Notification",
    "build_json",
    "failing_step",
    "images_built_by_steps",
    "start_build_fakes",
    "validate_build",
]

SERVICE = "google.devtools.cloudbuild.v1.CloudBuild"
NOTIFICATION_TOPIC = "cloud-builds"
FAILED_BUILD_MESSAGE = "Build failed; check build logs for details"
NOT_FOUND_MESSAGE = "Requested entity was not found."
LOGS_RULE_MESSAGE = (
    "if 'build.service_account' is specified, the build must either (a) specify 'build.logs_bucket', "
    "(b) use the REGIONAL_USER_OWNED_BUCKET build.options.default_logs_bucket_behavior option, "
    "or (c) use either CLOUD_LOGGING_ONLY / NONE logging options"
)

Status = cb.Build.Status
FailureType = cb.Build.FailureInfo.FailureType
Logging = cb.BuildOptions.LoggingMode

# proto-plus enums have no type stubs: calling the enum gives mypy a value of the enum's type.
PENDING, QUEUED, WORKING = Status(Status.PENDING), Status(Status.QUEUED), Status(Status.WORKING)
SUCCESS, FAILURE, CANCELLED = Status(Status.SUCCESS), Status(Status.FAILURE), Status(Status.CANCELLED)
USER_BUILD_STEP = FailureType(FailureType.USER_BUILD_STEP)
PUSH_IMAGE_NOT_FOUND = FailureType(FailureType.PUSH_IMAGE_NOT_FOUND)
PUSH_FAILED = FailureType(FailureType.PUSH_FAILED)
FETCH_SOURCE_FAILED = FailureType(FailureType.FETCH_SOURCE_FAILED)

_IN_FLIGHT = frozenset({PENDING, QUEUED, WORKING})
_SERVICE_ACCOUNT = re.compile(r"^projects/[^/]+/serviceAccounts/(?:[^/@\s]+@[^/@\s]+|\d+)$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_USER_SUBSTITUTION = re.compile(r"^_[A-Z0-9_]+$")
_REFERENCE = re.compile(r"\$(?:\{(?P<braced>[A-Za-z0-9_]+)\}|(?P<bare>[A-Za-z0-9_]+))")
_FILTER_TERM = re.compile(r'^\s*(?P<field>[a-z_.]+)\s*(?P<op>!=|=)\s*(?:"(?P<quoted>[^"]*)"|(?P<bare>[^\s"]+))\s*$')


@dataclass(frozen=True)
class Notification:
    """One message of the ``cloud-builds`` topic as published."""

    topic: str
    data: bytes
    attributes: dict[str, str]

    @property
    def build(self) -> dict[str, Any]:
        return dict(json.loads(self.data))


@dataclass(frozen=True)
class Failure:
    """How a rule ends a build that it fails."""

    detail: str
    failure_type: FailureType = USER_BUILD_STEP
    status: Status = FAILURE
    step: int | None = None  # the index of the failing step, if a step failed


BuildRule = Callable[[cb.Build], Failure | None]


def failing_step(predicate: Callable[[cb.BuildStep], bool], exit_code: int = 1) -> BuildRule:
    """A rule: the first step (without ``allow_failure``) matching ``predicate`` fails the build."""

    def rule(build: cb.Build) -> Failure | None:
        for index, step in enumerate(build.steps):
            if predicate(step) and not step.allow_failure and exit_code not in step.allow_exit_codes:
                detail = f'build step {index} "{step.name}" failed: step exited with non-zero status: {exit_code}'
                return Failure(detail, USER_BUILD_STEP, step=index)
        return None

    return rule


def images_built_by_steps(build: cb.Build) -> Failure | None:
    """The default rule: an image to push must be named (after substitution) by some step."""
    named = {_expand(arg, build) for step in build.steps for arg in step.args}
    for image in build.images:
        if _expand(image, build) not in named:
            return Failure(
                f"An image does not exist locally with the tag: {_expand(image, build)}",
                PUSH_IMAGE_NOT_FOUND,
            )
    return None


def build_json(build: cb.Build) -> bytes:
    """The Build as the REST API and the notifications render it."""
    return json_format.MessageToJson(cb.Build.pb(build), indent=None).encode()


def _builtins(build: cb.Build) -> dict[str, str]:
    location = build.name.split("/")[3] if build.name.count("/") >= 5 else "global"
    return {"PROJECT_ID": build.project_id, "BUILD_ID": build.id, "LOCATION": location}


def _expand(text: str, build: cb.Build) -> str:
    values = _builtins(build) | dict(build.substitutions)
    return _REFERENCE.sub(lambda m: values.get(m["braced"] or m["bare"], ""), text)


def _template_texts(build: cb.Build) -> Iterable[str]:
    for step in build.steps:
        yield step.name
        yield step.entrypoint
        yield step.dir_
        yield step.script
        yield from step.args
        yield from step.env
    yield from build.images


def _invalid(message: str) -> FakeError:
    return FakeError(grpc.StatusCode.INVALID_ARGUMENT, message)


def validate_build(build: cb.Build) -> None:
    """The ``CreateBuild`` checks listed in the module docstring; ``FakeError`` on the first broken one."""
    if not build.steps:
        raise _invalid("invalid build: the build must have at least one step (steps is required)")
    for index, step in enumerate(build.steps):
        if not step.name:
            raise _invalid(f"invalid build: step {index} has no name (the builder image is required)")
    if build.service_account:
        if not _SERVICE_ACCOUNT.match(build.service_account):
            raise _invalid(
                f"invalid build: service_account {build.service_account!r} must be of the format "
                "projects/{PROJECT_ID}/serviceAccounts/{ACCOUNT}"
            )
        options = build.options
        logs_ok = (
            bool(build.logs_bucket)
            or options.default_logs_bucket_behavior
            == cb.BuildOptions.DefaultLogsBucketBehavior.REGIONAL_USER_OWNED_BUCKET
            or options.logging in (Logging.CLOUD_LOGGING_ONLY, Logging.NONE)
        )
        if not logs_ok:
            raise _invalid(LOGS_RULE_MESSAGE)
    for tag in build.tags:
        if not _TAG.match(tag):
            raise _invalid(f'invalid build tag "{tag}": must match format "^[\\w][\\w.-]{{0,127}}$"')
    for key in build.substitutions:
        if not _USER_SUBSTITUTION.match(key):
            raise _invalid(
                f'invalid value for \'build.substitutions\': key "{key}" must begin with an underscore '
                "and use only uppercase letters, digits and underscores"
            )
    if build.options.substitution_option != cb.BuildOptions.SubstitutionOption.ALLOW_LOOSE:
        used = {m["braced"] or m["bare"] for text in _template_texts(build) for m in _REFERENCE.finditer(text)}
        for key in build.substitutions:
            if key not in used:
                raise _invalid(f'key "{key}" in the substitution data is not matched in the template')
        for key in sorted(k for k in used if k.startswith("_") and k not in build.substitutions):
            raise _invalid(f'key in the template "{key}" is not matched in the substitution data')
    storage = build.source.storage_source
    if (storage.bucket or storage.object_) and not (storage.bucket and storage.object_):
        raise _invalid("invalid build: source.storage_source needs both bucket and object")


class _Timer:
    """One daemon thread running callbacks when they are due (monotonic clock)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._stopped = False
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, name="fake-cloud-build-timer", daemon=True)
        self._thread.start()

    def after(self, delay: float, callback: Callable[[], None]) -> None:
        with self._cond:
            heapq.heappush(self._due, (time.monotonic() + max(delay, 0.0), next(self._seq), callback))
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._due or self._due[0][0] > time.monotonic()):
                    self._cond.wait(timeout=self._due[0][0] - time.monotonic() if self._due else None)
                if self._stopped:
                    return
                _, _, callback = heapq.heappop(self._due)
            try:
                callback()
            except Exception as exc:  # kept for the test to see; the timer goes on
                self.errors.append(exc)


class CloudBuildFake(ServedFake):
    """Builds of any project, moved along by a timer, pushing to an ``ArtifactRegistryFake``."""

    SERVICE = SERVICE

    def __init__(
        self,
        registry: ArtifactRegistryFake,
        *,
        queue_delay: float = 0.05,
        build_delay: float = 0.2,
        publisher: Any = None,
        topic: str = NOTIFICATION_TOPIC,
        source_exists: Callable[[str, str], bool] | None = None,
        rules: Iterable[BuildRule] = (images_built_by_steps,),
    ) -> None:
        self.registry = registry
        self.queue_delay = queue_delay
        self.build_delay = build_delay
        self.publisher = publisher
        self.topic = topic
        self.source_exists = source_exists
        self.rules: list[BuildRule] = list(rules)
        self.notifications: list[Notification] = []
        self.publish_errors: list[BaseException] = []
        self._futures: list[Future[Any]] = []
        self._lock = threading.RLock()
        self._builds: dict[str, cb.Build] = {}
        self._timer = _Timer()

    # -- serving (ServedFake: start, endpoint) --------------------------------------------------

    def stop(self) -> None:
        self._timer.stop()
        super().stop()

    @property
    def timer_errors(self) -> list[BaseException]:
        return self._timer.errors

    def methods(self, server: FakeServer) -> dict[str, Unary]:
        return {
            "CreateBuild": Unary(cb.CreateBuildRequest, operations_pb2.Operation, lambda r, _: self._create(server, r)),
            "GetBuild": Unary(cb.GetBuildRequest, cb.Build, lambda r, _: self.get(self._build_id(r))),
            "CancelBuild": Unary(cb.CancelBuildRequest, cb.Build, lambda r, _: self.cancel(self._build_id(r))),
            "ListBuilds": Unary(cb.ListBuildsRequest, cb.ListBuildsResponse, self._list),
        }

    # -- state (also for tests) -----------------------------------------------------------------

    def get(self, build_id: str) -> cb.Build:
        with self._lock:
            build = self._builds.get(build_id)
            if build is None:
                raise FakeError(grpc.StatusCode.NOT_FOUND, NOT_FOUND_MESSAGE)
            return cb.Build(build)

    def builds(self) -> list[cb.Build]:
        """Every build, newest first."""
        with self._lock:
            builds = [cb.Build(b) for b in self._builds.values()]
        builds.sort(key=lambda b: cb.Build.pb(b).create_time.ToNanoseconds(), reverse=True)
        return builds

    def notifications_of(self, build_id: str) -> list[Notification]:
        with self._lock:
            return [n for n in self.notifications if n.attributes.get("buildId") == build_id]

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until every publish so far has been answered (errors land in ``publish_errors``)."""
        with self._lock:
            futures = list(self._futures)
        wait(futures, timeout=timeout)

    def cancel(self, build_id: str) -> cb.Build:
        with self._lock:
            build = self._builds.get(build_id)
            if build is None:
                raise FakeError(grpc.StatusCode.NOT_FOUND, NOT_FOUND_MESSAGE)
            if build.status not in _IN_FLIGHT:
                raise FakeError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"build {build_id} is already finished ({build.status.name})",
                )
            build.status = CANCELLED
            build.finish_time = now_timestamp()
            self._notify(build)
            return cb.Build(build)

    # -- RPCs -----------------------------------------------------------------------------------

    def _project_and_location(self, project_id: str, parent: str) -> tuple[str, str]:
        location = "global"
        if parent:
            match = re.fullmatch(r"projects/([^/]+)/locations/([^/]+)", parent)
            if match is None:
                raise _invalid(f"invalid parent {parent!r}: want projects/<project>/locations/<location>")
            if project_id and project_id != match[1]:
                raise _invalid(f"project_id {project_id!r} does not match parent {parent!r}")
            project_id, location = match[1], match[2]
        if not project_id:
            raise _invalid("project_id is required")
        return project_id, location

    def _build_id(self, request: cb.GetBuildRequest | cb.CancelBuildRequest) -> str:
        if request.name:
            match = re.fullmatch(r"projects/([^/]+)/locations/([^/]+)/builds/([^/]+)", request.name)
            if match is None:
                raise _invalid(f"invalid build name {request.name!r}")
            project, build_id = match[1], match[3]
        else:
            project, build_id = request.project_id, request.id
            if not project or not build_id:
                raise _invalid("project_id and id are required")
        with self._lock:
            build = self._builds.get(build_id)
            if build is None or build.project_id != project:
                raise FakeError(grpc.StatusCode.NOT_FOUND, NOT_FOUND_MESSAGE)
        return build_id

    def _create(self, server: FakeServer, request: cb.CreateBuildRequest) -> operations_pb2.Operation:
        project, location = self._project_and_location(request.project_id, request.parent)
        build = cb.Build(request.build)
        validate_build(build)
        build.id = str(uuid.uuid4())
        build.project_id = project
        build.name = f"projects/{project}/locations/{location}/builds/{build.id}"
        build.status = QUEUED
        build.create_time = now_timestamp()
        region = "" if location == "global" else f";region={location}"
        build.log_url = f"https://console.cloud.google.com/cloud-build/builds{region}/{build.id}?project={project}"
        build.results = cb.Results()
        with self._lock:
            self._builds[build.id] = build
            self._notify(build)
            created = cb.Build(build)
        self._timer.after(self.queue_delay, lambda: self._start_working(created.id))
        return server.operations.start(
            f"projects/{project}",
            lambda _elapsed: self._operation_result(created.id),
            cb.BuildOperationMetadata(build=created),
        )

    def _list(self, request: cb.ListBuildsRequest, _: grpc.ServicerContext) -> cb.ListBuildsResponse:
        project, _location = self._project_and_location(request.project_id, request.parent)
        keep = _build_filter(request.filter)
        builds = [b for b in self.builds() if b.project_id == project and keep(b)]
        items, token = page(builds, request.page_size, request.page_token)
        return cb.ListBuildsResponse(builds=items, next_page_token=token)

    # -- the build's life -----------------------------------------------------------------------

    def _operation_result(self, build_id: str) -> cb.Build | None:
        build = self.get(build_id)
        if build.status in _IN_FLIGHT:
            return None
        if build.status == SUCCESS:
            return build
        if build.status == CANCELLED:
            raise FakeError(grpc.StatusCode.CANCELLED, "Build was cancelled")
        raise FakeError(grpc.StatusCode.UNKNOWN, FAILED_BUILD_MESSAGE)

    def _start_working(self, build_id: str) -> None:
        with self._lock:
            build = self._builds[build_id]
            if build.status != QUEUED:
                return  # cancelled meanwhile
            build.status = WORKING
            build.start_time = now_timestamp()
            self._notify(build)
        self._timer.after(self.build_delay, lambda: self._finish(build_id))

    def _finish(self, build_id: str) -> None:
        with self._lock:
            build = self._builds[build_id]
            if build.status != WORKING:
                return  # cancelled meanwhile
            snapshot = cb.Build(build)
        failure = self._fetch_source(snapshot) or self._apply_rules(snapshot)
        built: list[cb.BuiltImage] = []
        if failure is None:
            failure = self._push(snapshot, built)
        with self._lock:
            build = self._builds[build_id]
            if build.status != WORKING:
                return
            self._conclude(build, failure, built)
            self._notify(build)

    def _fetch_source(self, build: cb.Build) -> Failure | None:
        storage = build.source.storage_source
        if storage.bucket and self.source_exists is not None and not self.source_exists(storage.bucket, storage.object_):
            return Failure(
                f"Failed to fetch gs://{storage.bucket}/{storage.object_}: the object does not exist",
                FETCH_SOURCE_FAILED,
            )
        return None

    def _apply_rules(self, build: cb.Build) -> Failure | None:
        return next((f for f in (rule(build) for rule in self.rules) if f is not None), None)

    def _push(self, build: cb.Build, built: list[cb.BuiltImage]) -> Failure | None:
        for image in build.images:
            reference = _expand(image, build)
            try:
                pushed = self.registry.push(reference, digest=_digest(build, reference))
            except PushRejected as exc:
                return Failure(f'error pushing image "{reference}": {exc}', PUSH_FAILED)
            stamp = now_timestamp()
            built.append(
                cb.BuiltImage(
                    name=reference,
                    digest=pushed.uri.rsplit("@", 1)[1],
                    push_timing=cb.TimeSpan(start_time=stamp, end_time=stamp),
                )
            )
        return None

    def _conclude(self, build: cb.Build, failure: Failure | None, built: list[cb.BuiltImage]) -> None:
        stamp = now_timestamp()
        build.finish_time = stamp
        build.timing = {"BUILD": cb.TimeSpan(start_time=build.start_time, end_time=stamp)}
        failed_step = failure.step if failure is not None and failure.step is not None else len(build.steps)
        steps = list(build.steps)
        for index, step in enumerate(steps):
            if index < failed_step:
                step.status = SUCCESS
            elif index == failed_step:
                step.status = FAILURE
                step.exit_code = 1
            else:
                step.status = QUEUED
        build.steps = steps
        if failure is None:
            build.status = SUCCESS
            build.results = cb.Results(
                images=built,
                build_step_images=["sha256:" + hashlib.sha256(s.name.encode()).hexdigest() for s in steps],
            )
            return
        build.status = failure.status
        build.status_detail = failure.detail
        build.failure_info = cb.Build.FailureInfo(type_=failure.failure_type, detail=failure.detail)

    def _notify(self, build: cb.Build) -> None:
        """Publish (and record) the ``cloud-builds`` message for ``build``'s current status. Lock held."""
        topic = f"projects/{build.project_id}/topics/{self.topic}"
        attributes = {"buildId": build.id, "status": build.status.name}
        message = Notification(topic, build_json(build), attributes)
        self.notifications.append(message)
        if self.publisher is None:
            return
        try:
            future = self.publisher.publish(topic, message.data, **attributes)
        except Exception as exc:
            self.publish_errors.append(exc)
            return
        self._futures.append(future)
        future.add_done_callback(self._published)

    def _published(self, future: Future[Any]) -> None:
        exc = future.exception()
        if exc is not None:
            with self._lock:
                self.publish_errors.append(exc)


def _digest(build: cb.Build, reference: str) -> str:
    """A stable digest: the same source, steps and image give the same digest."""
    storage = build.source.storage_source
    material = json.dumps(
        [reference, storage.bucket, storage.object_, storage.generation, [list(s.args) for s in build.steps]]
    )
    return "sha256:" + hashlib.sha256(material.encode()).hexdigest()


def _build_filter(expression: str) -> Callable[[cb.Build], bool]:
    if not expression.strip():
        return lambda _: True
    if re.search(r"\bOR\b|[()]", expression):
        raise _invalid(f"unsupported filter {expression!r}: the fake understands AND of field=\"value\" terms")
    getters: dict[str, Callable[[cb.Build], list[str]]] = {
        "status": lambda b: [b.status.name],
        "build_id": lambda b: [b.id],
        "id": lambda b: [b.id],
        "tags": lambda b: list(b.tags),
        "images": lambda b: list(b.images),
        "trigger_id": lambda b: [b.build_trigger_id],
        "project_id": lambda b: [b.project_id],
        "source.storage_source.bucket": lambda b: [b.source.storage_source.bucket],
        "source.storage_source.object": lambda b: [b.source.storage_source.object_],
    }
    terms: list[tuple[Callable[[cb.Build], list[str]], str, bool]] = []
    for term in re.split(r"\s+AND\s+", expression.strip()):
        match = _FILTER_TERM.match(term)
        if match is None or match["field"] not in getters:
            raise _invalid(f"invalid filter term {term!r}")
        value = match["quoted"] if match["quoted"] is not None else match["bare"]
        terms.append((getters[match["field"]], value, match["op"] == "!="))
    return lambda build: all((value in get(build)) != negate for get, value, negate in terms)


@dataclass
class BuildFakes:
    """Both fakes, started; ``stop()`` (or ``with``) ends them."""

    project: str
    registry: ArtifactRegistryFake
    cloud_build: CloudBuildFake
    _clients: list[Any] = field(default_factory=list)

    @property
    def cloud_build_endpoint(self) -> str:
        return self.cloud_build.endpoint

    @property
    def artifact_registry_endpoint(self) -> str:
        return self.registry.endpoint

    def cloud_build_client(self) -> cb.CloudBuildClient:
        client: cb.CloudBuildClient = insecure_client(cb.CloudBuildClient, self.cloud_build_endpoint)
        self._clients.append(client)
        return client

    def artifact_registry_client(self) -> Any:
        from google.cloud import artifactregistry_v1

        client = insecure_client(artifactregistry_v1.ArtifactRegistryClient, self.artifact_registry_endpoint)
        self._clients.append(client)
        return client

    def builds(self) -> list[cb.Build]:
        return self.cloud_build.builds()

    def pushed(self) -> list[str]:
        return self.registry.pushed()

    def notifications(self) -> list[Notification]:
        return list(self.cloud_build.notifications)

    def stop(self) -> None:
        for client in self._clients:
            client.transport.close()
        self.cloud_build.stop()
        self.registry.stop()

    def __enter__(self) -> BuildFakes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_build_fakes(
    project: str,
    build_delay: float = 0.2,
    *,
    queue_delay: float = 0.05,
    repositories: Iterable[tuple[str, str]] = (),
    publisher: Any = None,
    source_exists: Callable[[str, str], bool] | None = None,
    rules: Iterable[BuildRule] = (images_built_by_steps,),
) -> BuildFakes:
    """Start Artifact Registry and Cloud Build fakes; ``repositories`` are ``(location, id)`` Docker
    repositories of ``project`` created up front; ``publisher`` publishes the notifications."""
    registry = ArtifactRegistryFake()
    registry.start()
    for location, repository_id in repositories:
        registry.create_repository(f"projects/{project}/locations/{location}", repository_id)
    builds = CloudBuildFake(
        registry,
        queue_delay=queue_delay,
        build_delay=build_delay,
        publisher=publisher,
        source_exists=source_exists,
        rules=rules,
    )
    builds.start()
    return BuildFakes(project, registry, builds)
