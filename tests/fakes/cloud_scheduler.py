"""A stateful fake of Cloud Scheduler v1 (``google.cloud.scheduler.v1.CloudScheduler``).

Served over gRPC on loopback; the real ``scheduler_v1.CloudSchedulerClient`` talks to it through
``tests.fakes.grpc_server.insecure_client`` (``fake.client()`` builds one). Methods: ``CreateJob``,
``GetJob``, ``ListJobs``, ``UpdateJob``, ``DeleteJob``, ``PauseJob``, ``ResumeJob`` and ``RunJob``
(all unary, none long-running, as in ``google/cloud/scheduler/v1/cloudscheduler.proto``).
``start_cloud_scheduler_fake()`` starts one; ``fake.jobs`` (name -> Job) and ``fake.runs`` (the
forced runs, oldest first) let a test look at what was done. Nothing is ever dispatched: the fake
keeps schedules, it does not call targets.

Rules enforced, and where they are written (``job.proto``, ``target.proto`` and
``cloudscheduler.proto`` of googleapis/googleapis ``google/cloud/scheduler/v1``; the cron page is
https://cloud.google.com/scheduler/docs/configuring/cron-job-schedules):

* Names (``Job.name``): ``projects/PROJECT_ID/locations/LOCATION_ID/jobs/JOB_ID``, "PROJECT_ID can
  contain letters ([A-Za-z]), numbers ([0-9]), hyphens (-), colons (:), or periods (.)", "JOB_ID
  can contain only letters ([A-Za-z]), numbers ([0-9]), hyphens (-), or underscores (_). The
  maximum length is 500 characters." ``CreateJobRequest.parent`` is "The location name ...
  projects/PROJECT_ID/locations/LOCATION_ID"; the job name is "Optionally caller-specified in
  CreateJob" and "cannot be the same as an existing job" (ALREADY_EXISTS, worded as the API does:
  "Job projects/p/locations/l/jobs/x already exists.", hashicorp/terraform-provider-google#16918);
  "If a name is not specified then the system will generate a random unique name". A name that is
  not under ``parent`` is INVALID_ARGUMENT. Get/Update/Delete/Pause/Resume/Run of a missing job:
  NOT_FOUND ("If the job does not exist, NOT_FOUND is returned", UpdateJob).
* ``schedule``: "Required, except when used with UpdateJob"; "A schedule is defined using the
  unix-cron string format (* * * * *) which is a set of five fields" - minute 0-59, hour 0-23,
  day of month 1-31, month 1-12 "(or JAN to DEC)", day of week 0-6 "(or SUN to SAT; or 7 for
  Sunday)"; the special characters are ``*``, ranges ``a-b``, ``/NUMBER`` steps and ``,`` lists;
  "Cloud Scheduler does not support L to mean the last day of the month" (cron page). Anything
  else is INVALID_ARGUMENT; values are range-checked with ``croniter``. The cron page's
  "Alternative job format" (English-like schedules such as ``every 5 minutes``) is accepted by
  the real API but not modelled here: the fake refuses it as INVALID_ARGUMENT, saying so.
* ``time_zone``: "must be a time zone name from the tz database ... For UTC use the string "utc".
  If a time zone is not specified, the default will be in UTC" - an unknown name is
  INVALID_ARGUMENT (checked against ``zoneinfo.available_timezones()``).
* Target: the ``target`` oneof is "Required.". ``HttpTarget.uri``: "Required ... must begin with
  either "http://" or "https://" ... The maximum allowed URL length is 2083 characters"; a body
  "is allowed only if the HTTP method is POST, PUT, or PATCH. It is an error to set body on a job
  with an incompatible HttpMethod" (HTTP_METHOD_UNSPECIFIED "Defaults to POST"). ``oidc_token`` /
  ``oauth_token`` name the "Service account email to be used for generating" the token: one given
  without ``service_account_email`` is INVALID_ARGUMENT. ``PubsubTarget.topic_name``: "Required
  ... for example projects/PROJECT_ID/topics/TOPIC_ID. The topic must be in the same project as
  the Cloud Scheduler job" (compared as written: a job named by project number and a topic by
  project id would be refused here), and "Pubsub message must contain either non-empty data, or
  at least one attribute". ``AppEngineHttpTarget``: "PATCH and OPTIONS are not permitted", a body
  only with POST or PUT, ``relative_uri`` "must begin with "/"", "No spaces are allowed, and the
  maximum length allowed is 2083 characters".
* ``description`` "must not contain more than 500 characters"; ``retry_config.retry_count``:
  "Values greater than 5 and negative values are not allowed"; ``attempt_deadline``: for HTTP
  targets "The deadline must be in the interval [15 seconds, 30 minutes]", for App Engine targets
  "0 indicates that the request has the default deadline ... If the request deadline is set, it
  must be in the interval [15 seconds, 24 hours 15 seconds]", for Pub/Sub "this field is ignored".
* Output fields (``Job``): ``state`` ENABLED on create; ``user_update_time`` set on every write;
  ``schedule_time`` ("The next time the job is scheduled") is the schedule's next fire time after
  now, computed with croniter in the job's time zone, moved on when a read finds it past (a
  schedule that never fires, such as ``0 0 31 2 *``, leaves it unset); ``last_attempt_time`` is
  set by RunJob. Defaults the service fills: ``http_method`` POST when unspecified ("Defaults to
  POST"), an HTTP target's ``attempt_deadline`` 180s ("the default is 3 minutes"), and
  ``retry_config``'s documented defaults (``min_backoff_duration`` "5 seconds",
  ``max_backoff_duration`` "1 hour", ``max_doublings`` "5", ``max_retry_duration`` "zero").
* UpdateJob: "name must be specified"; "Output only fields cannot be modified using UpdateJob.
  Any value specified for an output only field will be ignored." With an ``update_mask`` only
  the named fields change (unknown paths are INVALID_ARGUMENT); without one, the fields the
  request sets replace the stored ones (https://google.aip.dev/134: "If the update_mask is
  omitted, the service should treat it as an implied field mask equivalent to all fields that are
  populated"). The result is validated as a whole. A job's state is kept.
* PauseJob: "A job must be in Job.State.ENABLED to be paused"; ResumeJob: "A job must be in
  Job.State.PAUSED to be resumed" - otherwise FAILED_PRECONDITION. RunJob: "Cloud Scheduler will
  dispatch the job, even if the job is already running"; the fake records the run in ``runs``.
* ListJobs: "The maximum page size is 500. If unspecified, the page size will be the maximum."

Not modelled: dispatching to targets (``status`` stays unset), the UPDATE_FAILED and DISABLED
states, English-like schedules, IAM (``actAs`` on the token's service account), the locations
API, whether RunJob is refused for a paused job (the fake runs it), and what ``schedule_time``
reads while a job is paused (the fake keeps the last computed value).
"""

from __future__ import annotations

import functools
import re
import threading
import urllib.parse
import uuid
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from croniter import CroniterBadDateError, croniter
from google.cloud import scheduler_v1
from google.protobuf import empty_pb2, field_mask_pb2

from .grpc_server import FakeError, FakeServer, ServedFake, Unary, insecure_client

__all__ = [
    "SERVICE",
    "CloudSchedulerFake",
    "ForcedRun",
    "next_fire_time",
    "schedule_problem",
    "start_cloud_scheduler_fake",
    "time_zone_problem",
]

SERVICE = "google.cloud.scheduler.v1.CloudScheduler"

Job = scheduler_v1.Job
State = scheduler_v1.Job.State
Method = scheduler_v1.HttpMethod

MAX_PAGE = 500
MAX_URI = 2083
MAX_DESCRIPTION = 500
MAX_RETRY_COUNT = 5
DEFAULT_HTTP_DEADLINE = timedelta(minutes=3)
HTTP_DEADLINE = (timedelta(seconds=15), timedelta(minutes=30))
APP_ENGINE_DEADLINE = (timedelta(seconds=15), timedelta(hours=24, seconds=15))

_PARENT = re.compile(r"^projects/(?P<project>[A-Za-z0-9:.-]+)/locations/(?P<location>[^/]+)$")
_NAME = re.compile(r"^(?P<parent>projects/[A-Za-z0-9:.-]+/locations/[^/]+)/jobs/(?P<job>[^/]*)$")
_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,500}$")
_TOPIC = re.compile(r"^projects/(?P<project>[^/]+)/topics/(?P<topic>[^/]+)$")
# One element of a cron field: "*", a number or 3-letter name, or a range, then an optional step.
_CRON_ELEMENT = r"(?:\*|(?:\d+|[A-Za-z]{3})(?:-(?:\d+|[A-Za-z]{3}))?)(?:/\d+)?"
_CRON_FIELD = re.compile(rf"^{_CRON_ELEMENT}(?:,{_CRON_ELEMENT})*$")
_ENGLISH = re.compile(r"^\s*every\b", re.IGNORECASE)
# Job fields a caller sets; the rest (and ``name`` after creation) are output only.
_SETTABLE = (
    "description", "pubsub_target", "app_engine_http_target", "http_target", "schedule",
    "time_zone", "retry_config", "attempt_deadline",
)
_BODY_METHODS = {Method.HTTP_METHOD_UNSPECIFIED, Method.POST, Method.PUT, Method.PATCH}
_APP_ENGINE_BODY_METHODS = {Method.HTTP_METHOD_UNSPECIFIED, Method.POST, Method.PUT}


def _invalid(message: str) -> FakeError:
    return FakeError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _not_found(name: str) -> FakeError:
    return FakeError(grpc.StatusCode.NOT_FOUND, f"Job not found: {name}.")


def _copy(job: Job) -> Job:
    return Job(job)  # proto-plus copies the message it is given


# ---- schedules (pure) -------------------------------------------------------------------------


@functools.cache
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def time_zone_problem(time_zone: str) -> str | None:
    """Why ``time_zone`` is not a tz database name Cloud Scheduler takes, or ``None``."""
    if not time_zone or time_zone.lower() == "utc" or time_zone in _zones():
        return None
    return f"time_zone '{time_zone}' is not a time zone name from the tz database (e.g. 'Europe/Paris', 'utc')."


def _zone(time_zone: str) -> zoneinfo.ZoneInfo:
    if not time_zone or time_zone.lower() == "utc":
        return zoneinfo.ZoneInfo("UTC")
    return zoneinfo.ZoneInfo(time_zone)


def schedule_problem(schedule: str) -> str | None:
    """Why ``schedule`` is not a unix-cron schedule Cloud Scheduler takes, or ``None``."""
    if not schedule.strip():
        return "schedule is required."
    if _ENGLISH.match(schedule):
        return (
            f"schedule '{schedule}': English-like (App Engine cron) schedules are accepted by Cloud "
            "Scheduler but not modelled by this fake; use the unix-cron format."
        )
    fields = schedule.split()
    if len(fields) != 5:
        return (
            f"schedule '{schedule}' must be in the unix-cron format: five fields (minute hour "
            f"day-of-month month day-of-week), got {len(fields)}."
        )
    for value in fields:
        if not _CRON_FIELD.match(value):
            return (
                f"schedule '{schedule}': field '{value}' may only hold numbers, JAN-DEC / SUN-SAT, "
                "'*', ranges (a-b), steps (/n) and lists (,); L, W, # and ? are not supported."
            )
    if not croniter.is_valid(schedule):
        return (
            f"schedule '{schedule}' has a value out of range (minute 0-59, hour 0-23, day of month "
            "1-31, month 1-12 or JAN-DEC, day of week 0-7 or SUN-SAT)."
        )
    return None


def next_fire_time(schedule: str, time_zone: str, after: datetime) -> datetime | None:
    """When ``schedule`` fires next after ``after`` (aware), read in ``time_zone``; in UTC.
    ``None`` for a schedule that never fires (e.g. the 31st of February)."""
    start = after.astimezone(_zone(time_zone))
    try:
        upcoming: datetime = croniter(schedule, start).get_next(datetime)
    except CroniterBadDateError:
        return None
    return upcoming.astimezone(UTC)


# ---- job validation (pure) ----------------------------------------------------------------------


def _check_service_account(where: str, token: Any) -> None:
    if not token.service_account_email:
        raise _invalid(f"{where}.service_account_email is required when {where} is set.")


def _check_deadline(job: Job, bounds: tuple[timedelta, timedelta], kind: str, zero_ok: bool) -> None:
    if "attempt_deadline" not in job:
        return
    deadline = job.attempt_deadline
    if zero_ok and deadline == timedelta(0):
        return
    low, high = bounds
    if not low <= deadline <= high:
        raise _invalid(
            f"attempt_deadline {deadline.total_seconds():g}s: for {kind} targets the deadline must be "
            f"in the interval [{low.total_seconds():g}s, {high.total_seconds():g}s]."
        )


def _check_uri(uri: str) -> None:
    if not uri:
        raise _invalid("http_target.uri is required.")
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise _invalid(f"http_target.uri '{uri}' must begin with either \"http://\" or \"https://\".")
    if len(uri) > MAX_URI:
        raise _invalid(f"http_target.uri is longer than {MAX_URI} characters.")


def validate_job(job: Job, project: str) -> None:
    """The rules of the module docstring for a job's settable fields; raises INVALID_ARGUMENT."""
    if len(job.description) > MAX_DESCRIPTION:
        raise _invalid(f"description must not contain more than {MAX_DESCRIPTION} characters.")
    problem = schedule_problem(job.schedule)
    if problem:
        raise _invalid(problem)
    problem = time_zone_problem(job.time_zone)
    if problem:
        raise _invalid(problem)
    raw = Job.pb(job)
    target = raw.WhichOneof("target")
    if target is None:
        raise _invalid("A target is required: one of pubsub_target, app_engine_http_target or http_target.")
    if target == "http_target":
        http = raw.http_target
        _check_uri(http.uri)
        if http.http_method not in set(Method.__members__.values()):
            raise _invalid(f"http_target.http_method: invalid value {http.http_method}.")
        if http.body and http.http_method not in _BODY_METHODS:
            raise _invalid(
                f"http_target.body is allowed only if the HTTP method is POST, PUT, or PATCH "
                f"(got {Method(http.http_method).name})."
            )
        if http.HasField("oidc_token"):
            _check_service_account("http_target.oidc_token", http.oidc_token)
        if http.HasField("oauth_token"):
            _check_service_account("http_target.oauth_token", http.oauth_token)
        _check_deadline(job, HTTP_DEADLINE, "HTTP", zero_ok=True)
    elif target == "pubsub_target":
        pubsub = raw.pubsub_target
        match = _TOPIC.match(pubsub.topic_name)
        if match is None:
            raise _invalid(
                f"pubsub_target.topic_name '{pubsub.topic_name}' is required, in the form "
                "projects/PROJECT_ID/topics/TOPIC_ID."
            )
        if match["project"] != project:
            raise _invalid(
                f"pubsub_target.topic_name '{pubsub.topic_name}': the topic must be in the same project "
                f"as the Cloud Scheduler job ('{project}')."
            )
        if not pubsub.data and not pubsub.attributes:
            raise _invalid("Pubsub message must contain either non-empty data, or at least one attribute.")
    else:
        engine = raw.app_engine_http_target
        if engine.http_method in (Method.PATCH, Method.OPTIONS):
            raise _invalid("app_engine_http_target.http_method: PATCH and OPTIONS are not permitted.")
        if engine.http_method not in set(Method.__members__.values()):
            raise _invalid(f"app_engine_http_target.http_method: invalid value {engine.http_method}.")
        if engine.body and engine.http_method not in _APP_ENGINE_BODY_METHODS:
            raise _invalid("app_engine_http_target.body is allowed only if the HTTP method is POST or PUT.")
        relative = engine.relative_uri
        if relative and (not relative.startswith("/") or " " in relative or len(relative) > MAX_URI):
            raise _invalid(
                f"app_engine_http_target.relative_uri '{relative}' must begin with \"/\", contain no "
                f"spaces and be at most {MAX_URI} characters."
            )
        _check_deadline(job, APP_ENGINE_DEADLINE, "App Engine HTTP", zero_ok=True)
    count = job.retry_config.retry_count
    if count < 0 or count > MAX_RETRY_COUNT:
        raise _invalid(
            f"retry_config.retry_count {count}: values greater than {MAX_RETRY_COUNT} and negative "
            "values are not allowed."
        )


def _fill_defaults(job: Job) -> None:
    """The defaults the service writes into a job it stores (module docstring)."""
    raw = Job.pb(job)
    target = raw.WhichOneof("target")
    if target == "http_target":
        if raw.http_target.http_method == Method.HTTP_METHOD_UNSPECIFIED:
            raw.http_target.http_method = Method.POST
        if "attempt_deadline" not in job or job.attempt_deadline == timedelta(0):
            job.attempt_deadline = DEFAULT_HTTP_DEADLINE
    elif target == "app_engine_http_target" and not raw.app_engine_http_target.http_method:
        raw.app_engine_http_target.http_method = Method.POST
    retry = raw.retry_config
    if not retry.HasField("min_backoff_duration"):
        retry.min_backoff_duration.FromTimedelta(timedelta(seconds=5))
    if not retry.HasField("max_backoff_duration"):
        retry.max_backoff_duration.FromTimedelta(timedelta(hours=1))
    if not retry.HasField("max_retry_duration"):
        retry.max_retry_duration.FromTimedelta(timedelta(0))
    if retry.max_doublings == 0:
        retry.max_doublings = 5


# ---- the fake ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ForcedRun:
    """One RunJob call: the job's name, when, and the job as it was then."""

    name: str
    at: datetime
    job: Job = field(compare=False, repr=False)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class CloudSchedulerFake(ServedFake):
    """Cloud Scheduler jobs of any project and location; see the module docstring for the rules.

    ``clock`` (an aware ``datetime`` factory) is what "now" is, for ``schedule_time`` and the
    write times; tests may pin it.
    """

    SERVICE = SERVICE

    def __init__(self, *, clock: Callable[[], datetime] = _utc_now) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._runs: list[ForcedRun] = []

    # -- serving (ServedFake: start, stop, endpoint) --------------------------------------------

    def methods(self, server: FakeServer) -> dict[str, Unary]:
        s = scheduler_v1
        return {
            "CreateJob": Unary(s.CreateJobRequest, Job, lambda r, _: self.create_job(r.parent, r.job)),
            "GetJob": Unary(s.GetJobRequest, Job, lambda r, _: self.get_job(r.name)),
            "ListJobs": Unary(s.ListJobsRequest, s.ListJobsResponse, lambda r, _: self.list_jobs(r)),
            "UpdateJob": Unary(s.UpdateJobRequest, Job, lambda r, _: self.update_job(r)),
            "DeleteJob": Unary(s.DeleteJobRequest, empty_pb2.Empty, lambda r, _: self.delete_job(r.name)),
            "PauseJob": Unary(s.PauseJobRequest, Job, lambda r, _: self.pause_job(r.name)),
            "ResumeJob": Unary(s.ResumeJobRequest, Job, lambda r, _: self.resume_job(r.name)),
            "RunJob": Unary(s.RunJobRequest, Job, lambda r, _: self.run_job(r.name)),
        }

    def client(self) -> scheduler_v1.CloudSchedulerClient:
        """A real ``CloudSchedulerClient`` on this fake (plaintext gRPC, anonymous credentials)."""
        return insecure_client(scheduler_v1.CloudSchedulerClient, self.endpoint)

    # -- inspection (for tests) -------------------------------------------------------------------

    @property
    def jobs(self) -> dict[str, Job]:
        """Every job by full name, as GetJob would return it now (copies)."""
        with self._lock:
            return {name: self._read(name) for name in sorted(self._jobs)}

    @property
    def runs(self) -> list[ForcedRun]:
        """Every RunJob so far, oldest first."""
        with self._lock:
            return list(self._runs)

    def job(self, name: str) -> Job:
        """One job by full name, or by job id when a single job has it (``KeyError`` otherwise)."""
        with self._lock:
            if name not in self._jobs:
                matches = [n for n in self._jobs if n.endswith(f"/jobs/{name}")]
                if len(matches) != 1:
                    raise KeyError(f"no single job {name!r} (have {sorted(self._jobs)})")
                name = matches[0]
            return self._read(name)

    # -- RPCs (also callable directly) ----------------------------------------------------------

    def create_job(self, parent: str, job: Job) -> Job:
        match = _PARENT.match(parent)
        if match is None:
            raise _invalid(f"parent '{parent}' must be projects/PROJECT_ID/locations/LOCATION_ID.")
        stored = Job()
        for name in _SETTABLE:
            if name in job:
                setattr(stored, name, getattr(job, name))
        if job.name:
            name_parent, _ = self._parse_name(job.name)
            if name_parent != parent:
                raise _invalid(f"job.name '{job.name}' is not under parent '{parent}'.")
            stored.name = job.name
        else:
            stored.name = f"{parent}/jobs/{uuid.uuid4().hex}"
        validate_job(stored, match["project"])
        _fill_defaults(stored)
        now = self.clock()
        stored.state = State(State.ENABLED)
        stored.user_update_time = now
        self._schedule(stored, now)
        with self._lock:
            if stored.name in self._jobs:
                raise FakeError(grpc.StatusCode.ALREADY_EXISTS, f"Job {stored.name} already exists.")
            self._jobs[stored.name] = stored
            return _copy(stored)

    def get_job(self, name: str) -> Job:
        self._parse_name(name)
        with self._lock:
            self._require(name)
            return self._read(name)

    def list_jobs(self, request: scheduler_v1.ListJobsRequest) -> scheduler_v1.ListJobsResponse:
        if _PARENT.match(request.parent) is None:
            raise _invalid(f"parent '{request.parent}' must be projects/PROJECT_ID/locations/LOCATION_ID.")
        try:
            start = int(request.page_token) if request.page_token else 0
        except ValueError:
            raise _invalid(f"invalid page_token '{request.page_token}'.") from None
        size = min(request.page_size, MAX_PAGE) if request.page_size > 0 else MAX_PAGE
        prefix = request.parent + "/jobs/"
        with self._lock:
            names = [name for name in sorted(self._jobs) if name.startswith(prefix)]
            if not 0 <= start <= len(names):
                raise _invalid(f"invalid page_token '{request.page_token}'.")
            page = [self._read(name) for name in names[start:start + size]]
        end = start + size
        return scheduler_v1.ListJobsResponse(jobs=page, next_page_token=str(end) if end < len(names) else "")

    def update_job(self, request: scheduler_v1.UpdateJobRequest) -> Job:
        incoming = Job.pb(request.job)
        if not incoming.name:
            raise _invalid("job.name must be specified.")
        parent, _ = self._parse_name(incoming.name)
        project = parent.split("/")[1]
        if request.update_mask.paths:
            mask = field_mask_pb2.FieldMask(paths=list(request.update_mask.paths))
            if not mask.IsValidForDescriptor(Job.pb().DESCRIPTOR):
                raise _invalid(f"update_mask {list(mask.paths)} names a field Job does not have.")
            paths = [p for p in mask.paths if p.split(".")[0] in _SETTABLE]
        else:
            paths = [f.name for f, _ in incoming.ListFields() if f.name in _SETTABLE]
        with self._lock:
            current = self._require(incoming.name)
            merged = _copy(current)
            field_mask_pb2.FieldMask(paths=paths).MergeMessage(
                incoming, Job.pb(merged), replace_message_field=True, replace_repeated_field=True
            )
            validate_job(merged, project)
            _fill_defaults(merged)
            now = self.clock()
            merged.user_update_time = now
            self._schedule(merged, now)
            self._jobs[merged.name] = merged
            return _copy(merged)

    def delete_job(self, name: str) -> empty_pb2.Empty:
        self._parse_name(name)
        with self._lock:
            self._require(name)
            del self._jobs[name]
        return empty_pb2.Empty()

    def pause_job(self, name: str) -> Job:
        return self._transition(name, State.ENABLED, State.PAUSED, "paused")

    def resume_job(self, name: str) -> Job:
        return self._transition(name, State.PAUSED, State.ENABLED, "resumed")

    def run_job(self, name: str) -> Job:
        self._parse_name(name)
        with self._lock:
            job = self._require(name)
            now = self.clock()
            job.last_attempt_time = now
            self._runs.append(ForcedRun(name=name, at=now, job=_copy(job)))
            return self._read(name)

    # -- internals ----------------------------------------------------------------------------

    @staticmethod
    def _parse_name(name: str) -> tuple[str, str]:
        match = _NAME.match(name)
        if match is None:
            raise _invalid(f"job name '{name}' must be projects/PROJECT_ID/locations/LOCATION_ID/jobs/JOB_ID.")
        if not _JOB_ID.match(match["job"]):
            raise _invalid(
                f"job id '{match['job']}' can contain only letters ([A-Za-z]), numbers ([0-9]), hyphens "
                "(-), or underscores (_). The maximum length is 500 characters."
            )
        return match["parent"], match["job"]

    def _require(self, name: str) -> Job:
        job = self._jobs.get(name)
        if job is None:
            raise _not_found(name)
        return job

    def _schedule(self, job: Job, now: datetime) -> None:
        upcoming = next_fire_time(job.schedule, job.time_zone, now)
        if upcoming is None:
            Job.pb(job).ClearField("schedule_time")
        else:
            job.schedule_time = upcoming

    def _read(self, name: str) -> Job:
        """A copy of the stored job, its ``schedule_time`` moved on if it has passed."""
        job = self._jobs[name]
        if job.state == State.ENABLED and "schedule_time" in job:
            now = self.clock()
            if job.schedule_time <= now:
                self._schedule(job, now)
        return _copy(job)

    def _transition(self, name: str, source: int, target: int, verb: str) -> Job:
        self._parse_name(name)
        with self._lock:
            job = self._require(name)
            if job.state != source:
                raise FakeError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"Job {name} is {job.state.name}; a job must be {State(source).name} to be {verb}.",
                )
            job.state = State(target)
            if target == State.ENABLED:
                self._schedule(job, self.clock())
            return self._read(name)


def start_cloud_scheduler_fake(*, clock: Callable[[], datetime] = _utc_now) -> CloudSchedulerFake:
    """A started fake on loopback: ``.endpoint``, ``.client()``, ``.jobs``, ``.runs``, ``.stop()``."""
    fake = CloudSchedulerFake(clock=clock)
    fake.start()
    return fake
