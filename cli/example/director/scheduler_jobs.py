"""Cloud Scheduler jobs that call a service of the dataflow on a cron schedule.

A job is created at ``dependent-resource-setup``, once its ``target_service`` is deployed and
has a URL (the command's ``service_urls``). On Google Cloud through ``google-cloud-scheduler``:
an HTTP target POSTing ``message_body`` to the service URL with an OIDC token of the job's
``service_account`` (Podium grants that account ``run.invoker`` on the service, and the director
``iam.serviceAccountUser`` on it, which creating such a job needs).

Locally (the Firestore emulator present) ``LocalScheduler`` is a real scheduler in this process:
jobs are documents of the ``podium_scheduler_jobs`` collection in the emulator (so they outlive
a restart of the director, and a test can see them), and a thread POSTs each due job to its URL
with the headers Cloud Scheduler sends, computing fire times with ``croniter`` in the job's time
zone. ``run_now`` is Cloud Scheduler's ``RunJob`` (force a run).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

from google.api_core import exceptions
from resource_kinds import CommandError, Spec

log = logging.getLogger("director")
JOBS_COLLECTION = "podium_scheduler_jobs"
DEFAULT_TIME_ZONE = "Etc/UTC"
POST_TIMEOUT_SECONDS = 30.0


def account_email(spec: Spec, project: str) -> str:
    account = str(spec.get("service_account") or f"{spec['name']}-sa")
    return account if "@" in account else f"{account}@{project}.iam.gserviceaccount.com"


def wanted(spec: Spec, project: str) -> dict[str, Any]:
    """What the job should be: the part of a job compared on a second setup."""
    if not spec.get("uri"):
        raise CommandError(f"its target service {spec.get('target_service')!r} has no URL")
    return {"schedule": spec["schedule"], "time_zone": spec.get("time_zone") or DEFAULT_TIME_ZONE,
            "uri": spec["uri"], "body": spec.get("message_body") or "",
            "service_account": account_email(spec, project)}


class CloudSchedulerJobs:
    kind, section = "cloud_scheduler_job", "cloud_scheduler_jobs"

    def __init__(self, project: str, region: str, client: Any = None) -> None:
        self.project, self.region = project, region
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            from google.cloud import scheduler_v1

            self._client = scheduler_v1.CloudSchedulerClient()
        return self._client

    def name(self, spec: Spec) -> str:
        return str(spec["name"])

    def location(self, spec: Spec) -> str:
        return self.region

    def path(self, spec: Spec) -> str:
        return f"projects/{self.project}/locations/{self.region}/jobs/{spec['name']}"

    def job(self, spec: Spec) -> dict[str, Any]:
        want = wanted(spec, self.project)
        return {
            "name": self.path(spec), "description": spec.get("description") or "",
            "schedule": want["schedule"], "time_zone": want["time_zone"],
            "http_target": {
                "uri": want["uri"], "http_method": "POST", "body": want["body"].encode(),
                "headers": {"Content-Type": "application/json"},
                "oidc_token": {"service_account_email": want["service_account"], "audience": want["uri"]},
            },
        }

    def ensure(self, spec: Spec) -> bool:
        job = self.job(spec)
        try:
            current = self.client.get_job(name=job["name"])
        except exceptions.NotFound:
            current = None
        if current is None:
            try:
                self.client.create_job(parent=job["name"].rsplit("/jobs/", 1)[0], job=job)
            except exceptions.AlreadyExists:
                return False
            log.info("created scheduler job %s", spec["name"])
            return True
        target = current.http_target
        now = {"schedule": current.schedule, "time_zone": current.time_zone, "uri": target.uri,
               "body": target.body.decode(), "service_account": target.oidc_token.service_account_email}
        if now != wanted(spec, self.project):  # e.g. the service moved: point the job at it
            self.client.update_job(job=job)
            log.info("updated scheduler job %s", spec["name"])
        return False

    def delete(self, spec: Spec) -> bool:
        try:
            self.client.delete_job(name=self.path(spec))
        except exceptions.NotFound:
            return False
        log.info("deleted scheduler job %s", spec["name"])
        return True


Post = Callable[[str, bytes, dict[str, str]], int]


def post(uri: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(uri, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=POST_TIMEOUT_SECONDS) as resp:
        return int(resp.status)


class LocalScheduler:
    """Cloud Scheduler on one machine: jobs in the Firestore emulator, fired by a thread."""

    kind, section = "cloud_scheduler_job", "cloud_scheduler_jobs"

    def __init__(self, project: str, region: str, db: Any = None, send: Post = post,
                 clock: Callable[[], float] = time.time) -> None:
        self.project, self.region = project, region
        self._db, self.send, self.clock = db, send, clock
        self._next: dict[str, tuple[str, float]] = {}  # job -> (its schedule fingerprint, next fire time)
        self._lock = threading.Lock()

    @property
    def db(self) -> Any:
        if self._db is None:
            from google.cloud import firestore

            self._db = firestore.Client(project=self.project)
        return self._db

    def name(self, spec: Spec) -> str:
        return str(spec["name"])

    def location(self, spec: Spec) -> str:
        return self.region

    def ensure(self, spec: Spec) -> bool:
        want = wanted(spec, self.project)
        doc = self.db.collection(JOBS_COLLECTION).document(spec["name"])
        try:
            doc.create({**want, "state": "ENABLED"})
        except exceptions.AlreadyExists:
            current = doc.get().to_dict() or {}
            if {k: current.get(k) for k in want} != want:
                doc.update(want)
                log.info("updated scheduler job %s", spec["name"])
            return False
        log.info("created scheduler job %s (%s, %s)", spec["name"], want["schedule"], want["time_zone"])
        return True

    def delete(self, spec: Spec) -> bool:
        doc = self.db.collection(JOBS_COLLECTION).document(spec["name"])
        if not doc.get().exists:
            return False
        doc.delete()
        log.info("deleted scheduler job %s", spec["name"])
        return True

    def jobs(self) -> dict[str, dict[str, Any]]:
        return {snap.id: snap.to_dict() for snap in self.db.collection(JOBS_COLLECTION).stream()}

    def run_now(self, name: str) -> int:
        """Fire one job now (Cloud Scheduler's RunJob); the target's HTTP status."""
        job = self.db.collection(JOBS_COLLECTION).document(name).get()
        if not job.exists:
            raise KeyError(name)
        return self._fire(name, job.to_dict(), self.clock())

    def tick(self) -> list[str]:
        """Fire every job whose time has come; the names fired."""
        now, fired = self.clock(), []
        jobs = self.jobs()
        with self._lock:
            for gone in set(self._next) - set(jobs):
                del self._next[gone]
        for name, job in sorted(jobs.items()):
            fingerprint = f"{job.get('schedule')}|{job.get('time_zone')}"
            with self._lock:
                known = self._next.get(name)
                if known is None or known[0] != fingerprint:  # new or rescheduled: next time from now
                    self._next[name] = (fingerprint, next_fire(job, now))
                    continue
                due = known[1] <= now
                if due:
                    self._next[name] = (fingerprint, next_fire(job, now))
            if due and job.get("state") == "ENABLED":
                self._fire(name, job, known[1])
                fired.append(name)
        return fired

    def _fire(self, name: str, job: dict[str, Any], scheduled: float) -> int:
        headers = {
            "Content-Type": "application/json", "User-Agent": "Google-Cloud-Scheduler",
            "X-CloudScheduler": "true", "X-CloudScheduler-JobName": name,
            "X-CloudScheduler-ScheduleTime": dt.datetime.fromtimestamp(scheduled, dt.UTC).isoformat(),
        }
        try:
            status = self.send(job["uri"], str(job.get("body") or "").encode(), headers)
        except OSError as exc:  # urllib's HTTPError and URLError are OSErrors
            status = int(getattr(exc, "code", 0) or 0)
            log.warning("scheduler job %s: POST %s failed: %s", name, job["uri"], exc)
        else:
            log.info("scheduler job %s: POST %s -> %s", name, job["uri"], status)
        attempt = {"last_attempt_time": dt.datetime.fromtimestamp(self.clock(), dt.UTC), "last_status": status}
        with contextlib.suppress(exceptions.NotFound):  # deleted meanwhile
            self.db.collection(JOBS_COLLECTION).document(name).update(attempt)
        return status

    def run_forever(self, stop: threading.Event, interval: float = 1.0) -> None:
        while not stop.is_set():
            try:
                self.tick()
            except Exception as exc:  # the emulator may be restarting: try again next tick
                log.warning("scheduler tick failed: %s", exc)
            stop.wait(interval)


def next_fire(job: dict[str, Any], after: float) -> float:
    """The first fire time of ``job``'s cron schedule after ``after``, in its time zone."""
    from croniter import croniter

    zone = ZoneInfo(str(job.get("time_zone") or DEFAULT_TIME_ZONE))
    start = dt.datetime.fromtimestamp(after, zone)
    return float(croniter(str(job["schedule"]), start).get_next(dt.datetime).timestamp())


def scheduler_for(project: str, region: str, local: bool) -> CloudSchedulerJobs | LocalScheduler:
    return LocalScheduler(project, region) if local else CloudSchedulerJobs(project, region)
