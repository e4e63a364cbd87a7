"""The Cloud Scheduler and Firestore Admin fakes (tests/fakes/cloud_scheduler.py,
tests/fakes/firestore_admin.py), driven through the real client libraries."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.api_core import exceptions as gexc
from google.api_core.future import polling
from google.cloud import firestore_admin_v1, scheduler_v1
from google.cloud.firestore_admin_v1.types import database as database_types

from tests.fakes.cloud_scheduler import (
    CloudSchedulerFake,
    next_fire_time,
    schedule_problem,
    start_cloud_scheduler_fake,
)
from tests.fakes.firestore_admin import (
    FirestoreAdminFake,
    database_id_problem,
    start_firestore_admin_fake,
)
from tests.fakes.grpc_server import insecure_client

FAST = polling.DEFAULT_POLLING.with_delay(initial=0.01, maximum=0.05, multiplier=1.5).with_timeout(5)


class Clock:
    """A settable "now" for the fakes."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


# =============================================================================================
# Cloud Scheduler
# =============================================================================================

PROJECT = "my-project"
PARENT = f"projects/{PROJECT}/locations/us-central1"
NAME = f"{PARENT}/jobs/nightly"
SA = "scheduler@my-project.iam.gserviceaccount.com"
URI = "https://publisher-abc123-uc.a.run.app/tick"
NOON = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
Job = scheduler_v1.Job
State = scheduler_v1.Job.State


@pytest.fixture
def clock() -> Clock:
    return Clock(NOON)


@pytest.fixture
def scheduler(clock: Clock) -> Iterator[CloudSchedulerFake]:
    fake = start_cloud_scheduler_fake(clock=clock)
    yield fake
    fake.stop()


@pytest.fixture
def jobs(scheduler: CloudSchedulerFake) -> scheduler_v1.CloudSchedulerClient:
    return insecure_client(scheduler_v1.CloudSchedulerClient, scheduler.endpoint)


def http_job(name: str = NAME, schedule: str = "0 3 * * *", time_zone: str = "", **target: Any) -> Job:
    fields = {"uri": URI, "oidc_token": scheduler_v1.OidcToken(service_account_email=SA), **target}
    return Job(name=name, schedule=schedule, time_zone=time_zone, http_target=scheduler_v1.HttpTarget(**fields))


def test_job_lifecycle(scheduler: CloudSchedulerFake, jobs: scheduler_v1.CloudSchedulerClient) -> None:
    created = jobs.create_job(parent=PARENT, job=http_job())
    assert created.name == NAME
    assert jobs.get_job(name=NAME) == created
    with pytest.raises(gexc.AlreadyExists, match=f"Job {NAME} already exists"):
        jobs.create_job(parent=PARENT, job=http_job())
    assert [job.name for job in jobs.list_jobs(parent=PARENT)] == [NAME]
    assert list(scheduler.jobs) == [NAME]
    jobs.delete_job(name=NAME)
    with pytest.raises(gexc.NotFound):
        jobs.get_job(name=NAME)
    with pytest.raises(gexc.NotFound):
        jobs.delete_job(name=NAME)
    assert list(jobs.list_jobs(parent=PARENT)) == []
    assert scheduler.jobs == {}


def test_the_service_fills_output_fields_and_defaults(jobs: scheduler_v1.CloudSchedulerClient) -> None:
    job = jobs.create_job(parent=PARENT, job=http_job(schedule="0 3 * * *"))
    assert job.state == State.ENABLED
    assert job.user_update_time == NOON
    assert job.schedule_time == datetime(2026, 7, 2, 3, 0, tzinfo=UTC)  # 03:00 UTC, the next day
    assert job.http_target.http_method == scheduler_v1.HttpMethod.POST
    assert job.attempt_deadline == timedelta(minutes=3)
    retry = job.retry_config
    assert (retry.retry_count, retry.max_doublings) == (0, 5)
    assert (retry.min_backoff_duration, retry.max_backoff_duration) == (timedelta(seconds=5), timedelta(hours=1))
    assert retry.max_retry_duration == timedelta(0)


@pytest.mark.parametrize(
    ("now", "time_zone", "expected"),
    [
        # 09:00 in New York is 13:00 UTC in summer (EDT) and 14:00 UTC in winter (EST).
        (datetime(2026, 7, 1, 14, 0, tzinfo=UTC), "America/New_York", datetime(2026, 7, 2, 13, 0, tzinfo=UTC)),
        (datetime(2026, 1, 15, 14, 0, tzinfo=UTC), "America/New_York", datetime(2026, 1, 16, 14, 0, tzinfo=UTC)),
        (datetime(2026, 1, 15, 14, 0, tzinfo=UTC), "Asia/Kolkata", datetime(2026, 1, 16, 3, 30, tzinfo=UTC)),
        (datetime(2026, 1, 15, 8, 0, tzinfo=UTC), "utc", datetime(2026, 1, 15, 9, 0, tzinfo=UTC)),
        (datetime(2026, 1, 15, 8, 0, tzinfo=UTC), "", datetime(2026, 1, 15, 9, 0, tzinfo=UTC)),
    ],
)
def test_schedule_time_is_the_next_fire_time_in_the_jobs_time_zone(
    clock: Clock, jobs: scheduler_v1.CloudSchedulerClient, now: datetime, time_zone: str, expected: datetime,
) -> None:
    clock.now = now
    job = jobs.create_job(parent=PARENT, job=http_job(schedule="0 9 * * *", time_zone=time_zone))
    assert job.schedule_time == expected
    assert job.time_zone == time_zone


def test_schedule_time_moves_on_once_it_has_passed(clock: Clock, jobs: scheduler_v1.CloudSchedulerClient) -> None:
    jobs.create_job(parent=PARENT, job=http_job(schedule="*/15 * * * *"))
    assert jobs.get_job(name=NAME).schedule_time == NOON + timedelta(minutes=15)
    clock.now = NOON + timedelta(minutes=20)
    assert jobs.get_job(name=NAME).schedule_time == NOON + timedelta(minutes=30)


def test_a_job_without_a_name_gets_one(jobs: scheduler_v1.CloudSchedulerClient) -> None:
    job = jobs.create_job(parent=PARENT, job=http_job(name=""))
    assert job.name.startswith(f"{PARENT}/jobs/")
    assert jobs.get_job(name=job.name) == job


@pytest.mark.parametrize(
    ("job", "message"),
    [
        (http_job(schedule=""), "schedule is required"),
        (http_job(schedule="0 3 * *"), "five fields"),
        (http_job(schedule="0 0 3 * * *"), "five fields"),
        (http_job(schedule="every 5 minutes"), "English-like"),
        (http_job(schedule="@daily"), "five fields"),
        (http_job(schedule="0 0 L * *"), "L, W, # and ? are not supported"),
        (http_job(schedule="0 0 1W * *"), "L, W, # and ? are not supported"),
        (http_job(schedule="0 0 * * 1#2"), "L, W, # and ? are not supported"),
        (http_job(schedule="0 0 ? * *"), "L, W, # and ? are not supported"),
        (http_job(schedule="60 * * * *"), "out of range"),
        (http_job(schedule="0 24 * * *"), "out of range"),
        (http_job(schedule="0 0 * * 8"), "out of range"),
        (http_job(schedule="0 0 * FOO *"), "out of range"),
        (http_job(time_zone="Mars/Olympus_Mons"), "tz database"),
        (http_job(time_zone="UTC+2"), "tz database"),
        (http_job(uri="/relative/path"), "must begin with either"),
        (http_job(uri="ftp://example.com/x"), "must begin with either"),
        (http_job(uri=""), "http_target.uri is required"),
        (http_job(uri="https://example.com/" + "a" * 2100), "longer than 2083"),
        (http_job(oidc_token=scheduler_v1.OidcToken(audience=URI)), "oidc_token.service_account_email is required"),
        (Job(name=NAME, schedule="0 3 * * *", http_target=scheduler_v1.HttpTarget(
            uri=URI, oauth_token=scheduler_v1.OAuthToken())), "oauth_token.service_account_email is required"),
        (http_job(http_method=scheduler_v1.HttpMethod.GET, body=b"{}"), "allowed only if the HTTP method"),
        (Job(name=NAME, schedule="0 3 * * *"), "A target is required"),
        (Job(name=NAME, schedule="0 3 * * *", pubsub_target=scheduler_v1.PubsubTarget(
            topic_name="projects/other-project/topics/ticks", data=b"x")), "same project"),
        (Job(name=NAME, schedule="0 3 * * *", pubsub_target=scheduler_v1.PubsubTarget(
            topic_name=f"projects/{PROJECT}/topics/ticks")), "non-empty data, or at least one attribute"),
        (Job(name=NAME, schedule="0 3 * * *", pubsub_target=scheduler_v1.PubsubTarget(
            topic_name="ticks", data=b"x")), "projects/PROJECT_ID/topics/TOPIC_ID"),
        (Job(name=NAME, schedule="0 3 * * *", app_engine_http_target=scheduler_v1.AppEngineHttpTarget(
            http_method=scheduler_v1.HttpMethod.PATCH)), "PATCH and OPTIONS are not permitted"),
        (Job(name=NAME, schedule="0 3 * * *", app_engine_http_target=scheduler_v1.AppEngineHttpTarget(
            relative_uri="tasks/run")), "must begin with \"/\""),
        (Job(name=NAME, schedule="0 3 * * *", retry_config=scheduler_v1.RetryConfig(retry_count=6),
             http_target=scheduler_v1.HttpTarget(uri=URI)), "retry_count 6"),
        (Job(name=NAME, schedule="0 3 * * *", attempt_deadline=timedelta(seconds=10),
             http_target=scheduler_v1.HttpTarget(uri=URI)), "[15s, 1800s]"),
        (Job(name=NAME, schedule="0 3 * * *", attempt_deadline=timedelta(hours=1),
             http_target=scheduler_v1.HttpTarget(uri=URI)), "[15s, 1800s]"),
        (Job(name=NAME, schedule="0 3 * * *", description="d" * 501,
             http_target=scheduler_v1.HttpTarget(uri=URI)), "more than 500 characters"),
        (http_job(name=f"{PARENT}/jobs/bad.name"), "can contain only letters"),
        (http_job(name=f"{PARENT}/jobs/" + "a" * 501), "maximum length is 500"),
        (http_job(name="projects/my-project/locations/europe-west1/jobs/nightly"), "is not under parent"),
        (http_job(name="nightly"), "must be projects/PROJECT_ID/locations/LOCATION_ID/jobs/JOB_ID"),
    ],
)
def test_invalid_jobs_are_refused(
    scheduler: CloudSchedulerFake, jobs: scheduler_v1.CloudSchedulerClient, job: Job, message: str,
) -> None:
    with pytest.raises(gexc.InvalidArgument, match=re.escape(message)):
        jobs.create_job(parent=PARENT, job=job)
    assert scheduler.jobs == {}


@pytest.mark.parametrize(
    "job",
    [
        http_job(schedule="0 9 * * MON-FRI"),
        http_job(schedule="*/5 1-3,22 * JAN-MAR,DEC *"),
        http_job(schedule="0 0 * * 7"),
        http_job(schedule="0 0-23/2 1,15 * SUN"),
        http_job(time_zone="utc"),
        http_job(time_zone="Etc/UTC"),
        http_job(time_zone="Europe/Paris"),
        http_job(name=f"{PARENT}/jobs/" + "A_b-9" * 100),  # 500 characters
        http_job(http_method=scheduler_v1.HttpMethod.PUT, body=b"{}"),
        http_job(oidc_token=None),  # no Authorization header at all
        Job(name=NAME, schedule="0 3 * * *", pubsub_target=scheduler_v1.PubsubTarget(
            topic_name=f"projects/{PROJECT}/topics/ticks", attributes={"kind": "tick"})),
        Job(name=NAME, schedule="0 3 * * *", app_engine_http_target=scheduler_v1.AppEngineHttpTarget(
            relative_uri="/tasks/run?x=1")),
        Job(name=NAME, schedule="0 3 * * *", attempt_deadline=timedelta(hours=24, seconds=15),
            app_engine_http_target=scheduler_v1.AppEngineHttpTarget()),
        Job(name=NAME, schedule="0 3 * * *", attempt_deadline=timedelta(minutes=30),
            retry_config=scheduler_v1.RetryConfig(retry_count=5), http_target=scheduler_v1.HttpTarget(uri=URI)),
    ],
)
def test_valid_jobs_are_accepted(jobs: scheduler_v1.CloudSchedulerClient, job: Job) -> None:
    created = jobs.create_job(parent=PARENT, job=job)
    assert created.state == State.ENABLED
    assert "schedule_time" in created


def test_jobs_are_listed_per_location_and_paged(jobs: scheduler_v1.CloudSchedulerClient) -> None:
    for job_id in ("c", "a", "b"):
        jobs.create_job(parent=PARENT, job=http_job(name=f"{PARENT}/jobs/{job_id}"))
    other = f"projects/{PROJECT}/locations/europe-west1"
    jobs.create_job(parent=other, job=http_job(name=f"{other}/jobs/a"))
    pager = jobs.list_jobs(request=scheduler_v1.ListJobsRequest(parent=PARENT, page_size=2))
    pages = [[job.name.rsplit("/", 1)[1] for job in page.jobs] for page in pager.pages]
    assert pages == [["a", "b"], ["c"]]
    assert [job.name for job in jobs.list_jobs(parent=other)] == [f"{other}/jobs/a"]
    with pytest.raises(gexc.InvalidArgument):
        jobs.list_jobs(request=scheduler_v1.ListJobsRequest(parent=PARENT, page_token="nope"))


def test_update_with_a_mask_changes_only_the_named_fields(
    clock: Clock, jobs: scheduler_v1.CloudSchedulerClient,
) -> None:
    jobs.create_job(parent=PARENT, job=Job(http_job(), description="nightly run"))
    clock.now = NOON + timedelta(minutes=1)
    incoming = Job(name=NAME, schedule="30 * * * *", description="ignored", state=State.PAUSED)
    updated = jobs.update_job(job=incoming, update_mask={"paths": ["schedule", "state"]})
    assert updated.schedule == "30 * * * *"
    assert updated.description == "nightly run"  # not in the mask
    assert updated.state == State.ENABLED  # output only: ignored
    assert updated.http_target.uri == URI
    assert updated.user_update_time == clock.now
    assert updated.schedule_time == NOON + timedelta(minutes=30)
    assert jobs.get_job(name=NAME) == updated


def test_update_of_a_nested_field_and_without_a_mask(jobs: scheduler_v1.CloudSchedulerClient) -> None:
    jobs.create_job(parent=PARENT, job=http_job())
    moved = jobs.update_job(
        job=Job(name=NAME, http_target=scheduler_v1.HttpTarget(uri="https://elsewhere.example.com/")),
        update_mask={"paths": ["http_target.uri"]},
    )
    assert moved.http_target.uri == "https://elsewhere.example.com/"
    assert moved.http_target.oidc_token.service_account_email == SA  # kept
    # No mask: the fields the request sets replace the stored ones (AIP-134); the rest stay.
    topic = f"projects/{PROJECT}/topics/ticks"
    switched = jobs.update_job(job=Job(name=NAME, pubsub_target=scheduler_v1.PubsubTarget(topic_name=topic, data=b"t")))
    assert switched.pubsub_target.topic_name == topic
    assert "http_target" not in switched  # the target is a oneof
    assert switched.schedule == "0 3 * * *"


def test_invalid_updates_are_refused_and_change_nothing(
    scheduler: CloudSchedulerFake, jobs: scheduler_v1.CloudSchedulerClient,
) -> None:
    before = jobs.create_job(parent=PARENT, job=http_job())
    with pytest.raises(gexc.InvalidArgument, match="five fields"):
        jobs.update_job(job=Job(name=NAME, schedule="0 3 * * * *"), update_mask={"paths": ["schedule"]})
    with pytest.raises(gexc.InvalidArgument, match="schedule is required"):
        jobs.update_job(job=Job(name=NAME), update_mask={"paths": ["schedule"]})
    with pytest.raises(gexc.InvalidArgument, match="names a field Job does not have"):
        jobs.update_job(job=Job(name=NAME), update_mask={"paths": ["colour"]})
    with pytest.raises(gexc.InvalidArgument, match="name must be specified"):
        jobs.update_job(job=Job(schedule="* * * * *"))
    with pytest.raises(gexc.NotFound):
        jobs.update_job(job=http_job(name=f"{PARENT}/jobs/missing"))
    assert scheduler.job("nightly") == before


def test_pause_resume_and_run(scheduler: CloudSchedulerFake, clock: Clock, jobs: scheduler_v1.CloudSchedulerClient) -> None:
    jobs.create_job(parent=PARENT, job=http_job())
    assert jobs.pause_job(name=NAME).state == State.PAUSED
    with pytest.raises(gexc.FailedPrecondition, match="must be ENABLED to be paused"):
        jobs.pause_job(name=NAME)
    assert jobs.resume_job(name=NAME).state == State.ENABLED
    with pytest.raises(gexc.FailedPrecondition, match="must be PAUSED to be resumed"):
        jobs.resume_job(name=NAME)

    clock.now = NOON + timedelta(seconds=42)
    ran = jobs.run_job(name=NAME)
    assert ran.last_attempt_time == clock.now
    (run,) = scheduler.runs
    assert (run.name, run.at) == (NAME, clock.now)
    assert run.job.http_target.uri == URI
    for call in (jobs.pause_job, jobs.resume_job, jobs.run_job):
        with pytest.raises(gexc.NotFound):
            call(name=f"{PARENT}/jobs/missing")


def test_schedule_helpers() -> None:
    assert schedule_problem("*/10 * * * *") is None
    assert schedule_problem("0 0 31 2 *") is None  # valid, though it never fires
    assert next_fire_time("0 0 31 2 *", "", NOON) is None
    assert next_fire_time("0 12 * * *", "Europe/Paris", NOON) == datetime(2026, 7, 2, 10, 0, tzinfo=UTC)


def test_a_schedule_that_never_fires_has_no_schedule_time(jobs: scheduler_v1.CloudSchedulerClient) -> None:
    job = jobs.create_job(parent=PARENT, job=http_job(schedule="0 0 31 2 *"))
    assert "schedule_time" not in job


# =============================================================================================
# Firestore Admin
# =============================================================================================

FS_PROJECT = "projects/my-project"
DB_NAME = f"{FS_PROJECT}/databases/orders"
Database = database_types.Database
NATIVE = Database.DatabaseType.FIRESTORE_NATIVE
DATASTORE = Database.DatabaseType.DATASTORE_MODE
Edition = Database.DatabaseEdition


@pytest.fixture
def firestore() -> Iterator[FirestoreAdminFake]:
    fake = start_firestore_admin_fake()
    yield fake
    fake.stop()


@pytest.fixture
def admin(firestore: FirestoreAdminFake) -> firestore_admin_v1.FirestoreAdminClient:
    return insecure_client(firestore_admin_v1.FirestoreAdminClient, firestore.endpoint)


def create_db(admin: firestore_admin_v1.FirestoreAdminClient, database_id: str = "orders",
              parent: str = FS_PROJECT, **fields: Any) -> Any:
    fields = {"location_id": "nam5", "type_": NATIVE, **fields}
    return admin.create_database(parent=parent, database_id=database_id, database=Database(**fields))


def test_database_lifecycle(firestore: FirestoreAdminFake, admin: firestore_admin_v1.FirestoreAdminClient) -> None:
    op = create_db(admin)
    created = op.result(polling=FAST)
    assert op.operation.name.startswith(f"{DB_NAME}/operations/")
    assert created.name == DB_NAME
    assert (created.location_id, created.type_) == ("nam5", NATIVE)
    got = admin.get_database(name=DB_NAME)
    assert (got.uid, got.etag, got.create_time) == (created.uid, created.etag, created.create_time)
    with pytest.raises(gexc.AlreadyExists, match="Database already exists. Please use another database_id"):
        create_db(admin)
    assert [db.name for db in admin.list_databases(parent=FS_PROJECT).databases] == [DB_NAME]
    assert list(firestore.databases) == [DB_NAME]

    deleted = admin.delete_database(name=DB_NAME).result(polling=FAST)
    assert deleted.name == DB_NAME
    assert "delete_time" in deleted
    with pytest.raises(gexc.NotFound):
        admin.get_database(name=DB_NAME)
    with pytest.raises(gexc.NotFound):
        admin.delete_database(name=DB_NAME)
    assert list(admin.list_databases(parent=FS_PROJECT).databases) == []


def test_the_service_fills_defaults(admin: firestore_admin_v1.FirestoreAdminClient) -> None:
    standard = create_db(admin).result(polling=FAST)
    assert standard.database_edition == Edition.STANDARD
    assert standard.concurrency_mode == Database.ConcurrencyMode.PESSIMISTIC
    assert standard.app_engine_integration_mode == Database.AppEngineIntegrationMode.DISABLED
    assert standard.point_in_time_recovery_enablement == Database.PointInTimeRecoveryEnablement.POINT_IN_TIME_RECOVERY_DISABLED
    assert standard.delete_protection_state == Database.DeleteProtectionState.DELETE_PROTECTION_DISABLED
    assert standard.version_retention_period == timedelta(hours=1)
    assert standard.uid and standard.etag and "create_time" in standard
    enterprise = create_db(
        admin, "analytics", database_edition=Edition.ENTERPRISE,
        point_in_time_recovery_enablement=Database.PointInTimeRecoveryEnablement.POINT_IN_TIME_RECOVERY_ENABLED,
    ).result(polling=FAST)
    assert enterprise.concurrency_mode == Database.ConcurrencyMode.OPTIMISTIC
    assert enterprise.version_retention_period == timedelta(days=7)


def test_the_free_tier_goes_to_the_first_database_of_a_project(admin: firestore_admin_v1.FirestoreAdminClient) -> None:
    assert create_db(admin, "first").result(polling=FAST).free_tier is True
    assert create_db(admin, "second").result(polling=FAST).free_tier is False
    assert create_db(admin, "first", parent="projects/other").result(polling=FAST).free_tier is True
    admin.delete_database(name=f"{FS_PROJECT}/databases/first").result(polling=FAST)
    assert create_db(admin, "third").result(polling=FAST).free_tier is True


@pytest.mark.parametrize(
    "database_id",
    ["abc", "a" * 64, "1abc", "abc-", "ab_c", "Abcd", "my.db", "", "abcdef12-3456-7890-abcd-ef1234567890"],
)
def test_invalid_database_ids_are_refused(
    firestore: FirestoreAdminFake, admin: firestore_admin_v1.FirestoreAdminClient, database_id: str,
) -> None:
    with pytest.raises(gexc.InvalidArgument, match="database_id"):
        create_db(admin, database_id)
    assert firestore.databases == {}


@pytest.mark.parametrize("database_id", ["abcd", "a" * 63, "my-db-1", "(default)", "abcdef12-3456-7890-abcd-ef123456789"])
def test_valid_database_ids_are_accepted(admin: firestore_admin_v1.FirestoreAdminClient, database_id: str) -> None:
    assert create_db(admin, database_id).result(polling=FAST).name == f"{FS_PROJECT}/databases/{database_id}"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"location_id": ""}, "location_id is required"),
        ({"type_": Database.DatabaseType.DATABASE_TYPE_UNSPECIFIED}, "type is required"),
        ({"concurrency_mode": Database.ConcurrencyMode.OPTIMISTIC_WITH_ENTITY_GROUPS},
         "not supported for Firestore Native"),
    ],
)
def test_invalid_databases_are_refused(
    admin: firestore_admin_v1.FirestoreAdminClient, fields: dict[str, Any], message: str,
) -> None:
    with pytest.raises(gexc.InvalidArgument, match=message):
        create_db(admin, **fields)


def test_the_request_shape_is_checked(admin: firestore_admin_v1.FirestoreAdminClient) -> None:
    with pytest.raises(gexc.InvalidArgument, match="database is required"):
        admin.create_database(parent=FS_PROJECT, database_id="orders")
    with pytest.raises(gexc.InvalidArgument, match="only for a Standard edition"):
        create_db(admin, "(default)", database_edition=Edition.ENTERPRISE)
    with pytest.raises(gexc.InvalidArgument, match=re.escape("projects/{project_id}")):
        create_db(admin, parent="organizations/1")
    with pytest.raises(gexc.InvalidArgument, match=re.escape("databases/{database_id}")):
        admin.get_database(name="orders")
    # Datastore mode with entity groups is allowed.
    create_db(admin, type_=DATASTORE,
              concurrency_mode=Database.ConcurrencyMode.OPTIMISTIC_WITH_ENTITY_GROUPS).result(polling=FAST)


def test_delete_protection_and_etags(admin: firestore_admin_v1.FirestoreAdminClient) -> None:
    protected = create_db(
        admin, delete_protection_state=Database.DeleteProtectionState.DELETE_PROTECTION_ENABLED,
    ).result(polling=FAST)
    with pytest.raises(gexc.FailedPrecondition, match="delete protection"):
        admin.delete_database(name=protected.name)
    plain = create_db(admin, "plain").result(polling=FAST)
    request = firestore_admin_v1.types.DeleteDatabaseRequest
    with pytest.raises(gexc.FailedPrecondition, match="etag"):
        admin.delete_database(request=request(name=plain.name, etag="stale"))
    admin.delete_database(request=request(name=plain.name, etag=plain.etag)).result(polling=FAST)
    assert [db.name for db in admin.list_databases(parent=FS_PROJECT).databases] == [protected.name]


def test_operations_finish_after_their_delay() -> None:
    fake = start_firestore_admin_fake(create_delay=0.1)
    try:
        admin = fake.client()
        op = create_db(admin)
        assert not op.done()
        assert op.result(polling=FAST).name == DB_NAME
    finally:
        fake.stop()


def test_database_id_helper() -> None:
    assert database_id_problem("orders") is None
    assert database_id_problem("(default)", Edition.ENTERPRISE) is not None
    assert database_id_problem("0a1b2c3d-0000-1111-2222-333344445555") is not None
