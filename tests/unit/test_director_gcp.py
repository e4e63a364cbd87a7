"""The example ServiceDirector's Google Cloud code paths (cli/example/director), driven through the
real client libraries against the loopback fakes of tests/fakes.

Buckets run on gcp-storage-emulator, datasets and tables on the BigQuery fake, Firestore databases
on the Firestore Admin fake, scheduler jobs on the Cloud Scheduler fake. No emulator variable is
set (each would switch a kind to its local mode). The LocalScheduler's firing logic is checked
with an in-memory stand-in for the few Firestore calls it makes, and main.py's payload checks and
error wrapping without any network.

The director's modules import each other as top-level modules (it runs as ``python main.py`` in
its folder), so the folder is put on ``sys.path`` and main.py is loaded from its file.
"""

from __future__ import annotations

import datetime as dt
import importlib
import importlib.util
import json
import socket
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from google.api_core import exceptions
from google.cloud import bigquery, scheduler_v1
from google.cloud.firestore_admin_v1.types import Database

from tests.fakes.bigquery import BigQueryFake, start_bigquery_fake
from tests.fakes.cloud_scheduler import CloudSchedulerFake, start_cloud_scheduler_fake
from tests.fakes.firestore_admin import FirestoreAdminFake, start_firestore_admin_fake
from tests.fakes.storage import StorageFake, start_storage_fake

DIRECTOR_DIR = Path(__file__).resolve().parents[2] / "cli" / "example" / "director"
PROJECT = "podium-proj"
REGION = "europe-west1"
LOCAL_SWITCHES = ("PUBSUB_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST", "STORAGE_EMULATOR_HOST",
                  "LOCAL_BIGQUERY_DIR")


# --- loading the director's modules ----------------------------------------------------------


@pytest.fixture(autouse=True)
def on_google_cloud(monkeypatch: pytest.MonkeyPatch) -> None:
    """No emulator variable: every kind takes its Google Cloud path. The director's folder on
    sys.path, as when it runs as ``python main.py`` there."""
    for name in LOCAL_SWITCHES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.syspath_prepend(str(DIRECTOR_DIR))


def director_module(name: str) -> ModuleType:
    module = importlib.import_module(name)
    assert Path(module.__file__ or "").resolve().parent == DIRECTOR_DIR, (
        f"{name} was imported from {module.__file__}, not from {DIRECTOR_DIR}"
    )
    return module


@pytest.fixture
def kinds_module() -> ModuleType:
    return director_module("resource_kinds")


@pytest.fixture
def main(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """main.py as a module (its own name must not clash with other ``main`` modules)."""
    spec = importlib.util.spec_from_file_location("podium_director_main", DIRECTOR_DIR / "main.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "podium_director_main", module)
    spec.loader.exec_module(module)
    return module


# --- Cloud Storage buckets -------------------------------------------------------------------


@pytest.fixture
def gcs() -> Iterator[StorageFake]:
    fake = start_storage_fake()
    yield fake
    fake.stop()


def recording(client: Any) -> list[tuple[str, str, dict[str, Any]]]:
    """Every request the storage client sends, as (method, url, JSON body): the emulator keeps
    none of a new bucket's settings (its bucket insert reads only ``name``), so what the
    client sent is where they can be seen."""
    sent: list[tuple[str, str, dict[str, Any]]] = []

    def hook(response: Any, *args: Any, **kwargs: Any) -> None:
        request = response.request
        body = request.body
        try:
            payload = json.loads(body) if body else {}
        except (ValueError, UnicodeDecodeError):  # an object upload's multipart body
            payload = {}
        sent.append((request.method, request.url, payload if isinstance(payload, dict) else {}))

    client._http.hooks["response"].append(hook)
    return sent


def test_buckets_are_created_once_with_their_settings(gcs: StorageFake) -> None:
    buckets = director_module("storage_buckets")
    client = gcs.client(PROJECT)
    sent = recording(client)
    kind = buckets.Buckets(PROJECT, REGION, client=client)
    spec = {
        "name": "raw-events", "location": "EU", "storage_class": "NEARLINE",
        "versioning_enabled": True, "labels": {"team": "data", "dataflow": "tracer"},
        "lifecycle_rules": [{"action": {"type": "Delete"}, "condition": {"age_in_days": 30}}],
    }

    assert kind.ensure(spec) is True
    assert client.get_bucket("raw-events").name == "raw-events"
    inserts = [body for method, url, body in sent if method == "POST" and url.split("?")[0].endswith("/b")]
    assert len(inserts) == 1, sent
    body = inserts[0]
    assert body["name"] == "raw-events"
    assert body["location"] == "EU"
    assert body["storageClass"] == "NEARLINE"
    assert body["versioning"] == {"enabled": True}
    assert body["labels"] == {"team": "data", "dataflow": "tracer"}
    assert body["lifecycle"] == {"rule": [{"action": {"type": "Delete"}, "condition": {"age": 30}}]}
    assert f"project={PROJECT}" in next(url for method, url, _ in sent if method == "POST")

    sent.clear()
    assert kind.ensure(spec) is False
    assert not [s for s in sent if s[0] == "POST"], "a second ensure must not create again"
    assert kind.location(spec) == "EU"


def test_a_bucket_without_settings_goes_to_the_region(gcs: StorageFake) -> None:
    buckets = director_module("storage_buckets")
    client = gcs.client(PROJECT)
    sent = recording(client)
    kind = buckets.Buckets(PROJECT, REGION, client=client)

    assert kind.ensure({"name": "plain"}) is True
    (body,) = [b for method, _, b in sent if method == "POST"]
    assert body["location"] == REGION
    assert body.get("storageClass") is None  # the service's default class
    assert "lifecycle" not in body and not body.get("labels")
    assert body.get("versioning", {"enabled": False}) == {"enabled": False}


def test_deleting_a_bucket_deletes_its_objects_first(gcs: StorageFake) -> None:
    buckets = director_module("storage_buckets")
    client = gcs.client(PROJECT)
    kind = buckets.Buckets(PROJECT, REGION, client=client)
    spec = {"name": "staging"}
    assert kind.ensure(spec) is True
    bucket = client.bucket("staging")
    bucket.blob("a.json").upload_from_string(b"{}")
    bucket.blob("dir/b.bin").upload_from_string(b"\x00\x01")
    assert sorted(b.name for b in client.list_blobs("staging")) == ["a.json", "dir/b.bin"]
    with pytest.raises(exceptions.Conflict):  # the emulator, like GCS, keeps a non-empty bucket
        client.bucket("staging").delete()

    assert kind.delete(spec) is True
    with pytest.raises(exceptions.NotFound):
        client.get_bucket("staging")
    assert kind.delete(spec) is False
    assert kind.ensure(spec) is True  # and it can be made again


# --- BigQuery datasets and tables ------------------------------------------------------------


@pytest.fixture
def bq() -> Iterator[BigQueryFake]:
    fake = start_bigquery_fake()
    yield fake
    fake.stop()


TABLE_SPEC: dict[str, Any] = {
    "name": "events", "dataset": "analytics", "description": "tracer events",
    "labels": {"dataflow": "tracer"},
    "schema": [
        {"name": "id", "type": "STRING", "mode": "REQUIRED"},
        {"name": "tags", "type": "string", "mode": "REPEATED"},
        {"name": "at", "type": "TIMESTAMP", "mode": "REQUIRED"},
        {"name": "payload", "type": "RECORD", "fields": [
            {"name": "kind", "type": "STRING"},
            {"name": "points", "type": "RECORD", "mode": "REPEATED",
             "fields": [{"name": "x", "type": "FLOAT64"}, {"name": "y", "type": "INT64"}]},
        ]},
    ],
    "time_partitioning_type": "DAY", "time_partitioning_field": "at",
    "time_partitioning_expiration": "7d",
    "clustering_fields": ["id", "at"],
}


def test_datasets_and_tables_are_created_once_with_their_schema(bq: BigQueryFake) -> None:
    bigquery_tables = director_module("bigquery_tables")
    client = bq.client(PROJECT)
    datasets, tables = bigquery_tables.kinds(PROJECT, REGION, client)
    assert datasets.engine is tables.engine and datasets.engine.sqlite_root is None

    dataset_spec = {"name": "analytics", "location": "EU", "labels": {"team": "data"},
                    "description": "tracer data"}
    assert datasets.ensure(dataset_spec) is True
    assert bq.datasets() == [f"{PROJECT}.analytics"]
    dataset = client.get_dataset(f"{PROJECT}.analytics")
    assert dataset.location == "EU"
    assert dataset.labels == {"team": "data"}
    assert dataset.description == "tracer data"
    assert datasets.ensure(dataset_spec) is False

    assert datasets.ensure({"name": "regional"}) is True  # no location: the region
    assert client.get_dataset(f"{PROJECT}.regional").location == REGION

    assert tables.ensure(TABLE_SPEC) is True
    table = client.get_table(f"{PROJECT}.analytics.events")
    assert [(f.name, f.field_type, f.mode) for f in table.schema] == [
        ("id", "STRING", "REQUIRED"), ("tags", "STRING", "REPEATED"),
        ("at", "TIMESTAMP", "REQUIRED"), ("payload", "RECORD", "NULLABLE"),
    ]
    payload = table.schema[3]
    assert [(f.name, f.field_type, f.mode) for f in payload.fields] == [
        ("kind", "STRING", "NULLABLE"), ("points", "RECORD", "REPEATED"),
    ]
    assert [(f.name, f.field_type) for f in payload.fields[1].fields] == [("x", "FLOAT64"), ("y", "INT64")]
    assert table.time_partitioning.type_ == bigquery.TimePartitioningType.DAY
    assert table.time_partitioning.field == "at"
    assert table.time_partitioning.expiration_ms == 7 * 86400 * 1000
    assert table.clustering_fields == ["id", "at"]
    assert table.labels == {"dataflow": "tracer"}
    assert table.description == "tracer events"
    assert tables.ensure(TABLE_SPEC) is False
    assert bq.tables() == [f"{PROJECT}.analytics.events"]
    assert tables.name(TABLE_SPEC) == "analytics.events"


def test_a_table_without_a_schema_or_partitioning(bq: BigQueryFake) -> None:
    bigquery_tables = director_module("bigquery_tables")
    client = bq.client(PROJECT)
    datasets, tables = bigquery_tables.kinds(PROJECT, REGION, client)
    datasets.ensure({"name": "analytics"})
    assert tables.ensure({"name": "raw", "dataset": "analytics"}) is True
    table = client.get_table(f"{PROJECT}.analytics.raw")
    assert table.schema == []
    assert table.time_partitioning is None
    assert table.clustering_fields is None


def test_a_table_in_a_missing_dataset_fails(bq: BigQueryFake) -> None:
    bigquery_tables = director_module("bigquery_tables")
    _, tables = bigquery_tables.kinds(PROJECT, REGION, bq.client(PROJECT))
    with pytest.raises(exceptions.NotFound):
        tables.ensure({"name": "events", "dataset": "nowhere"})


def test_tables_and_datasets_are_deleted_once(bq: BigQueryFake) -> None:
    bigquery_tables = director_module("bigquery_tables")
    datasets, tables = bigquery_tables.kinds(PROJECT, REGION, bq.client(PROJECT))
    datasets.ensure({"name": "analytics"})
    tables.ensure(TABLE_SPEC)
    tables.ensure({"name": "other", "dataset": "analytics"})

    assert tables.delete(TABLE_SPEC) is True
    assert bq.tables() == [f"{PROJECT}.analytics.other"]
    assert tables.delete(TABLE_SPEC) is False
    # the dataset still holds "other": deleted with its contents
    assert datasets.delete({"name": "analytics"}) is True
    assert bq.datasets() == [] and bq.tables() == []
    assert datasets.delete({"name": "analytics"}) is False
    assert tables.delete({"name": "other", "dataset": "analytics"}) is False


# --- Firestore databases ---------------------------------------------------------------------


@pytest.fixture
def firestore_admin() -> Iterator[FirestoreAdminFake]:
    fake = start_firestore_admin_fake()
    yield fake
    fake.stop()


def test_firestore_databases_are_created_and_deleted_once(firestore_admin: FirestoreAdminFake) -> None:
    stores = director_module("firestore_stores")
    Type = Database.DatabaseType
    kind = stores.Databases(PROJECT, REGION, admin=firestore_admin.client())
    native = {"name": "orders-db", "type": "NATIVE", "location_id": "eur3"}
    datastore = {"name": "legacy-db", "type": "DATASTORE_MODE"}
    untyped = {"name": "plain-db"}

    assert kind.ensure(native) is True
    assert kind.ensure(datastore) is True
    assert kind.ensure(untyped) is True
    found = firestore_admin.databases
    path = f"projects/{PROJECT}/databases"
    assert sorted(found) == [f"{path}/legacy-db", f"{path}/orders-db", f"{path}/plain-db"]
    assert (found[f"{path}/orders-db"].type_, found[f"{path}/orders-db"].location_id) == (
        Type.FIRESTORE_NATIVE, "eur3")
    assert (found[f"{path}/legacy-db"].type_, found[f"{path}/legacy-db"].location_id) == (
        Type.DATASTORE_MODE, REGION)
    assert found[f"{path}/plain-db"].type_ == Type.FIRESTORE_NATIVE
    assert kind.ensure(native) is False
    assert len(firestore_admin.databases) == 3

    assert kind.delete(native) is True
    assert f"{path}/orders-db" not in firestore_admin.databases
    assert kind.delete(native) is False
    assert len(firestore_admin.databases) == 2


def test_the_default_firestore_database_is_never_created_nor_deleted(
    firestore_admin: FirestoreAdminFake,
) -> None:
    stores = director_module("firestore_stores")
    kind = stores.Databases(PROJECT, REGION, admin=firestore_admin.client())
    assert kind.ensure({"name": "(default)"}) is False
    assert firestore_admin.databases == {}
    firestore_admin.create_database(  # the project's own, made outside Podium
        f"projects/{PROJECT}", "(default)",
        Database(location_id=REGION, type_="FIRESTORE_NATIVE"),
    )
    assert kind.delete({"name": "(default)"}) is False
    assert list(firestore_admin.databases) == [f"projects/{PROJECT}/databases/(default)"]


# --- Cloud Scheduler jobs --------------------------------------------------------------------


class Clock:
    """A settable "now" for the scheduler fake."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


NOON = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
URI = "https://publisher-abc123-ew.a.run.app/tick"
JOB_SPEC: dict[str, Any] = {
    "name": "nightly", "schedule": "0 3 * * *", "time_zone": "Europe/Paris",
    "target_service": "publisher", "service_account": "ticker", "message_body": '{"run": true}',
    "uri": URI,
}
JOB_NAME = f"projects/{PROJECT}/locations/{REGION}/jobs/nightly"


@pytest.fixture
def clock() -> Clock:
    return Clock(NOON)


@pytest.fixture
def cloud_scheduler(clock: Clock) -> Iterator[CloudSchedulerFake]:
    fake = start_cloud_scheduler_fake(clock=clock)
    yield fake
    fake.stop()


def test_scheduler_jobs_call_their_service_with_an_oidc_token(
    cloud_scheduler: CloudSchedulerFake, clock: Clock,
) -> None:
    scheduler_jobs = director_module("scheduler_jobs")
    kind = scheduler_jobs.CloudSchedulerJobs(PROJECT, REGION, client=cloud_scheduler.client())

    assert kind.ensure(JOB_SPEC) is True
    assert list(cloud_scheduler.jobs) == [JOB_NAME]
    job = cloud_scheduler.job(JOB_NAME)
    assert (job.schedule, job.time_zone) == ("0 3 * * *", "Europe/Paris")
    target = job.http_target
    assert target.uri == URI
    assert target.http_method == scheduler_v1.HttpMethod.POST
    assert target.body == b'{"run": true}'
    assert target.headers["Content-Type"] == "application/json"
    assert target.oidc_token.service_account_email == f"ticker@{PROJECT}.iam.gserviceaccount.com"
    assert target.oidc_token.audience == URI
    created_at = job.user_update_time

    clock.now = NOON + timedelta(minutes=5)
    assert kind.ensure(JOB_SPEC) is False
    assert cloud_scheduler.job(JOB_NAME).user_update_time == created_at, "an unchanged job was updated"

    moved = "https://publisher-xyz789-ew.a.run.app/tick"
    clock.now = NOON + timedelta(minutes=10)
    assert kind.ensure({**JOB_SPEC, "uri": moved}) is False
    job = cloud_scheduler.job(JOB_NAME)
    assert job.user_update_time == NOON + timedelta(minutes=10)
    assert (job.http_target.uri, job.http_target.oidc_token.audience) == (moved, moved)
    assert job.http_target.body == b'{"run": true}'
    assert (job.schedule, job.time_zone) == ("0 3 * * *", "Europe/Paris")
    assert list(cloud_scheduler.jobs) == [JOB_NAME]

    assert kind.delete(JOB_SPEC) is True
    assert cloud_scheduler.jobs == {}
    assert kind.delete(JOB_SPEC) is False


def test_a_scheduler_job_defaults_its_account_and_time_zone(cloud_scheduler: CloudSchedulerFake) -> None:
    scheduler_jobs = director_module("scheduler_jobs")
    kind = scheduler_jobs.CloudSchedulerJobs(PROJECT, REGION, client=cloud_scheduler.client())
    spec = {"name": "hourly", "schedule": "0 * * * *", "target_service": "publisher", "uri": URI,
            "service_account": "ops@other.iam.gserviceaccount.com"}
    assert kind.ensure(spec) is True
    job = cloud_scheduler.job("hourly")
    assert job.time_zone == "Etc/UTC"
    assert job.http_target.body == b""
    assert job.http_target.oidc_token.service_account_email == "ops@other.iam.gserviceaccount.com"
    assert kind.ensure(spec) is False


def test_a_scheduler_job_without_a_url_names_its_target_service(
    cloud_scheduler: CloudSchedulerFake, kinds_module: ModuleType,
) -> None:
    scheduler_jobs = director_module("scheduler_jobs")
    kind = scheduler_jobs.CloudSchedulerJobs(PROJECT, REGION, client=cloud_scheduler.client())
    spec = {k: v for k, v in JOB_SPEC.items() if k != "uri"}
    with pytest.raises(kinds_module.CommandError, match="'publisher' has no URL"):
        kind.ensure(spec)
    with pytest.raises(kinds_module.CommandError, match="'publisher' has no URL"):
        kind.ensure({**spec, "uri": ""})
    assert cloud_scheduler.jobs == {}


# --- the local scheduler's clock -------------------------------------------------------------


def ts(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    """A UTC wall-clock time as epoch seconds."""
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        # 09:00 in Paris is 07:00 UTC in summer (CEST) and 08:00 UTC in winter (CET).
        (ts(2026, 7, 1, 6, 30), ts(2026, 7, 1, 7, 0)),
        (ts(2026, 7, 1, 7, 0), ts(2026, 7, 2, 7, 0)),  # strictly after
        (ts(2026, 1, 15, 7, 30), ts(2026, 1, 15, 8, 0)),
        (ts(2026, 1, 15, 8, 30), ts(2026, 1, 16, 8, 0)),
        # across the spring change (29 March 2026): 09:00 CET on the 28th, 09:00 CEST on the 29th
        (ts(2026, 3, 28, 8, 30), ts(2026, 3, 29, 7, 0)),
    ],
    ids=["summer-before", "summer-at", "winter-before", "winter-after", "spring-change"],
)
def test_next_fire_respects_the_jobs_time_zone(after: float, expected: float) -> None:
    scheduler_jobs = director_module("scheduler_jobs")
    job = {"schedule": "0 9 * * *", "time_zone": "Europe/Paris"}
    assert scheduler_jobs.next_fire(job, after) == expected


def test_next_fire_defaults_to_utc() -> None:
    scheduler_jobs = director_module("scheduler_jobs")
    assert scheduler_jobs.next_fire({"schedule": "0 9 * * *"}, ts(2026, 1, 15, 8, 0)) == ts(2026, 1, 15, 9, 0)


class Snapshot:
    def __init__(self, doc_id: str, data: dict[str, Any] | None) -> None:
        self.id, self._data = doc_id, data

    @property
    def exists(self) -> bool:
        return self._data is not None

    def to_dict(self) -> dict[str, Any] | None:
        return dict(self._data) if self._data is not None else None


class Document:
    def __init__(self, store: dict[str, dict[str, Any]], doc_id: str) -> None:
        self.store, self.id = store, doc_id

    def create(self, data: dict[str, Any]) -> None:
        if self.id in self.store:
            raise exceptions.AlreadyExists(f"document {self.id} exists")
        self.store[self.id] = dict(data)

    def get(self) -> Snapshot:
        return Snapshot(self.id, self.store.get(self.id))

    def update(self, data: dict[str, Any]) -> None:
        if self.id not in self.store:
            raise exceptions.NotFound(f"no document {self.id}")
        self.store[self.id].update(data)

    def delete(self) -> None:
        self.store.pop(self.id, None)


class Collection:
    def __init__(self, store: dict[str, dict[str, Any]]) -> None:
        self.store = store

    def document(self, doc_id: str) -> Document:
        return Document(self.store, doc_id)

    def stream(self) -> Iterator[Snapshot]:
        return iter([Snapshot(k, v) for k, v in list(self.store.items())])


class MemoryFirestore:
    """The part of ``firestore.Client`` LocalScheduler uses: collection/document/stream."""

    def __init__(self) -> None:
        self.collections: dict[str, dict[str, dict[str, Any]]] = {}

    def collection(self, name: str) -> Collection:
        return Collection(self.collections.setdefault(name, {}))


class Posts:
    """The injected ``send``: records each POST and answers 200."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes, dict[str, str]]] = []

    def __call__(self, uri: str, body: bytes, headers: dict[str, str]) -> int:
        self.calls.append((uri, body, headers))
        return 200


class Seconds:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_local_scheduler_fires_each_due_time_once() -> None:
    scheduler_jobs = director_module("scheduler_jobs")
    db, posts, now = MemoryFirestore(), Posts(), Seconds(ts(2026, 7, 1, 6, 30))
    local = scheduler_jobs.LocalScheduler(PROJECT, REGION, db=db, send=posts, clock=now)
    spec = {**JOB_SPEC, "schedule": "0 9 * * *", "time_zone": "Europe/Paris"}
    assert local.ensure(spec) is True
    assert local.ensure(spec) is False
    stored = db.collections[scheduler_jobs.JOBS_COLLECTION]["nightly"]
    assert stored["state"] == "ENABLED" and stored["uri"] == URI
    assert stored["service_account"] == f"ticker@{PROJECT}.iam.gserviceaccount.com"

    assert local.tick() == []  # first sight: the next time is computed, nothing fires
    now.now = ts(2026, 7, 1, 6, 59, 59)
    assert local.tick() == []  # not yet (09:00 Paris is 07:00 UTC)
    assert posts.calls == []

    now.now = ts(2026, 7, 1, 7, 0, 1)
    assert local.tick() == ["nightly"]
    ((uri, body, headers),) = posts.calls
    assert (uri, body) == (URI, b'{"run": true}')
    assert headers["X-CloudScheduler-JobName"] == "nightly"
    assert headers["X-CloudScheduler"] == "true"
    assert headers["X-CloudScheduler-ScheduleTime"] == dt.datetime(2026, 7, 1, 7, 0, tzinfo=UTC).isoformat()
    assert stored["last_status"] == 200

    now.now = ts(2026, 7, 1, 7, 0, 30)
    assert local.tick() == []  # the same time fires once
    now.now = ts(2026, 7, 1, 12, 0)
    assert local.tick() == []
    assert len(posts.calls) == 1

    now.now = ts(2026, 7, 2, 7, 0, 0)
    assert local.tick() == ["nightly"]  # the next day's time
    assert len(posts.calls) == 2


def test_local_scheduler_skips_paused_jobs_and_forgets_deleted_ones() -> None:
    scheduler_jobs = director_module("scheduler_jobs")
    db, posts, now = MemoryFirestore(), Posts(), Seconds(ts(2026, 7, 1, 6, 30))
    local = scheduler_jobs.LocalScheduler(PROJECT, REGION, db=db, send=posts, clock=now)
    local.ensure({**JOB_SPEC, "schedule": "*/10 * * * *", "time_zone": "Etc/UTC"})
    local.tick()
    db.collections[scheduler_jobs.JOBS_COLLECTION]["nightly"]["state"] = "PAUSED"
    now.now = ts(2026, 7, 1, 6, 40)
    assert local.tick() == []
    assert posts.calls == []

    assert local.delete({"name": "nightly"}) is True
    assert local.delete({"name": "nightly"}) is False
    assert local.tick() == []
    assert local.jobs() == {}


# --- main.py: payload checks and error wrapping (no network) ----------------------------------


def command(resources: Any, **payload: Any) -> dict[str, Any]:
    return {"run_id": "run-1", "dataflow": "tracer", "payload": {"resources": resources, **payload}}


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ({"queues": [{"name": "q"}]}, r"unknown kinds \['queues'\]"),
        ({"gcs_buckets": {"name": "b"}}, r"payload\.resources\.gcs_buckets must be a list"),
        ({"subscriptions": [{"name": "s"}]}, r"each of payload\.resources\.subscriptions needs name and topic"),
        ({"bigquery_tables": [{"name": "t", "dataset": ""}]}, r"payload\.resources\.bigquery_tables needs"),
        ({"cloud_scheduler_jobs": ["nightly"]}, r"payload\.resources\.cloud_scheduler_jobs needs"),
        (["topics"], r"payload\.resources must be a map"),
    ],
)
def test_payload_resources_refuses_malformed_sections(
    main: ModuleType, kinds_module: ModuleType, resources: Any, message: str,
) -> None:
    with pytest.raises(kinds_module.CommandError, match=message):
        main.payload_resources(command(resources))


def test_payload_resources_accepts_well_formed_sections(main: ModuleType) -> None:
    resources = {"topics": [{"name": "t"}], "subscriptions": [{"name": "s", "topic": "t"}],
                 "gcs_buckets": None}
    assert main.payload_resources(command(resources)) is not None
    assert main.payload_resources({"payload": {}}) == {}


class StubKind:
    """A kind that records what it was asked and fails as told."""

    def __init__(self, kind: str, section: str, error: Exception | None = None,
                 exists: set[str] | None = None) -> None:
        self.kind, self.section, self.error = kind, section, error
        self.exists = exists or set()
        self.region = ""
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def name(self, spec: dict[str, Any]) -> str:
        return str(spec["name"])

    def location(self, spec: dict[str, Any]) -> str:
        return self.region

    def ensure(self, spec: dict[str, Any]) -> bool:
        self.calls.append(("ensure", spec))
        if self.error is not None:
            raise self.error
        return spec["name"] not in self.exists

    def delete(self, spec: dict[str, Any]) -> bool:
        self.calls.append(("delete", spec))
        if self.error is not None:
            raise self.error
        return spec["name"] in self.exists


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def director(main: ModuleType, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A real Director (its Pub/Sub clients aimed at a closed loopback port: built, never used)."""
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{unused_port()}")
    made = main.Director(PROJECT, "", local=False)
    yield made
    made.subscriber.close()


def test_the_director_builds_its_google_cloud_kinds(director: Any) -> None:
    sections = [kind.section for kind in director.setup_kinds]
    assert sections == ["topics", "subscriptions", "gcs_buckets", "bigquery_datasets",
                        "bigquery_tables", "firestore_databases", "firestore_collections"]
    assert type(director.scheduler).__name__ == "CloudSchedulerJobs"
    datasets = director.setup_kinds[3]
    assert datasets.engine.sqlite_root is None  # BigQuery, not SQLite files


def test_apply_ensures_in_order_and_moves_kinds_to_the_commands_region(director: Any) -> None:
    first = StubKind("gcs_bucket", "gcs_buckets", exists={"old"})
    second = StubKind("bigquery_dataset", "bigquery_datasets")
    director.setup_kinds = (first, second)
    cmd = command({"gcs_buckets": [{"name": "new"}, {"name": "old"}],
                   "bigquery_datasets": [{"name": "ds"}]}, region=REGION)

    data = director.apply(director.setup_kinds, cmd)
    assert data["created"] == ["new", "ds"] and data["existed"] == ["old"]
    assert data["resources"][0] == {"kind": "gcs_bucket", "name": "new", "dataflow": "tracer",
                                    "location": REGION}
    assert first.region == second.region == director.scheduler.region == REGION


def test_apply_names_the_resource_that_failed(director: Any, kinds_module: ModuleType) -> None:
    broken = StubKind("gcs_bucket", "gcs_buckets", error=exceptions.Forbidden("storage.buckets.create denied"))
    director.setup_kinds = (broken,)
    cmd = command({"gcs_buckets": [{"name": "raw-events"}]})

    with pytest.raises(kinds_module.CommandError) as raised:
        director.apply(director.setup_kinds, cmd)
    assert str(raised.value) == "gcs_bucket raw-events: 403 storage.buckets.create denied"
    assert isinstance(raised.value.__cause__, exceptions.Forbidden)

    with pytest.raises(kinds_module.CommandError, match="^gcs_bucket raw-events: "):
        director.apply(director.setup_kinds, cmd, remove=True)
    assert [call for call, _ in broken.calls] == ["ensure", "delete"]

    envelope = director.reply_for("cmd-1", {**cmd, "instruction": "dataflow-setup"})
    assert envelope["type"] == "director.failed"
    assert envelope["data"]["error"] == "dataflow-setup: gcs_bucket raw-events: 403 storage.buckets.create denied"


def test_apply_lets_transient_errors_through(director: Any) -> None:
    flaky = StubKind("gcs_bucket", "gcs_buckets", error=exceptions.ServiceUnavailable("try later"))
    director.setup_kinds = (flaky,)
    with pytest.raises(exceptions.ServiceUnavailable):
        director.apply(director.setup_kinds, command({"gcs_buckets": [{"name": "b"}]}))


def test_dependent_setup_points_jobs_at_their_service(
    director: Any, cloud_scheduler: CloudSchedulerFake,
) -> None:
    scheduler_jobs = director_module("scheduler_jobs")
    director.scheduler = scheduler_jobs.CloudSchedulerJobs(PROJECT, "", client=cloud_scheduler.client())
    job = {k: v for k, v in JOB_SPEC.items() if k != "uri"}
    cmd = command({"cloud_scheduler_jobs": [job]}, region=REGION, service_urls={"publisher": URI})

    event, data = director.dependent_setup(cmd)
    assert event == "director.dependent_complete"
    assert data["created"] == ["nightly"] and data["services"] == ["publisher"]
    assert cloud_scheduler.job(JOB_NAME).http_target.uri == URI

    unknown = command({"cloud_scheduler_jobs": [{**job, "name": "other", "target_service": "ghost"}]},
                      region=REGION, service_urls={"publisher": URI})
    envelope = director.reply_for("cmd-2", {**unknown, "instruction": "dependent-resource-setup"})
    assert envelope["type"] == "director.failed"
    assert envelope["data"]["error"] == (
        "dependent-resource-setup: cloud_scheduler_job other: its target service 'ghost' has no URL"
    )
