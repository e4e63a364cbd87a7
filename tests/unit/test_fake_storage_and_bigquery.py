"""The Cloud Storage emulator and the BigQuery fake, driven by the real client libraries.

Storage tests check what tests/fakes/storage.py promises about gcp-storage-emulator,
including what it does not enforce (so a new emulator release that starts enforcing it
fails here and the docstring gets updated). Each BigQuery test pins one documented rule of
tests/fakes/bigquery.py; removing the rule from the fake makes its test fail.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from google.api_core import exceptions
from google.cloud import bigquery  # type: ignore[attr-defined,unused-ignore]

from tests.fakes.bigquery import BigQueryFake, start_bigquery_fake
from tests.fakes.storage import StorageFake, start_storage_fake

PROJECT = "proj-a"
DATASET = f"{PROJECT}.analytics"
TABLE = f"{DATASET}.events"
ALICE = "alice@example.com"


def _error_body(error: exceptions.GoogleAPICallError) -> dict[str, Any]:
    assert error.response is not None
    body: dict[str, Any] = error.response.json()["error"]
    return body


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def gcs() -> Iterator[StorageFake]:
    fake = start_storage_fake()
    yield fake
    fake.stop()


@pytest.fixture
def bq_fake() -> Iterator[BigQueryFake]:
    fake = start_bigquery_fake()
    yield fake
    fake.stop()


@pytest.fixture
def bq(bq_fake: BigQueryFake) -> bigquery.Client:
    return bq_fake.client(PROJECT)


@pytest.fixture
def table(bq: bigquery.Client) -> bigquery.Table:
    bq.create_dataset(DATASET)
    schema = [bigquery.SchemaField("id", "STRING", mode="REQUIRED"),
              bigquery.SchemaField("n", "INT64")]
    return bq.create_table(bigquery.Table(TABLE, schema=schema))


# --- Cloud Storage (gcp-storage-emulator) --------------------------------------------------


def test_storage_bucket_upload_and_download(gcs: StorageFake) -> None:
    client = gcs.client(PROJECT)
    assert client.project == PROJECT
    assert gcs.endpoint.startswith("http://127.0.0.1:")
    bucket = client.create_bucket("artifacts-a")
    blob = bucket.blob("builds/app.tar.gz")
    blob.upload_from_string(b"payload", if_generation_match=0)
    assert blob.generation is not None

    assert client.bucket("artifacts-a").blob("builds/app.tar.gz").download_as_bytes() == b"payload"
    assert client.get_bucket("artifacts-a").name == "artifacts-a"
    with pytest.raises(exceptions.Conflict):
        client.create_bucket("artifacts-a")
    with pytest.raises(exceptions.NotFound):
        client.get_bucket("no-such-bucket")


def test_storage_emulator_ignores_if_generation_match(gcs: StorageFake) -> None:
    """Real GCS answers 412 to a second create-only upload; this emulator overwrites."""
    bucket = gcs.client(PROJECT).create_bucket("artifacts-b")
    bucket.blob("o").upload_from_string(b"first", if_generation_match=0)

    bucket.blob("o").upload_from_string(b"second", if_generation_match=0)  # no PreconditionFailed

    assert bucket.blob("o").download_as_bytes() == b"second"


def test_storage_bucket_iam_round_trip(gcs: StorageFake) -> None:
    bucket = gcs.client(PROJECT).create_bucket("artifacts-c")
    policy = bucket.get_iam_policy(requested_policy_version=3)
    assert policy.bindings == []
    policy.bindings.append({"role": "roles/storage.objectViewer", "members": {f"user:{ALICE}"}})

    bucket.set_iam_policy(policy)

    reread = bucket.get_iam_policy(requested_policy_version=3)
    assert reread.bindings == [{"role": "roles/storage.objectViewer", "members": {f"user:{ALICE}"}}]


def test_storage_emulator_does_not_enforce_iam_etags(gcs: StorageFake) -> None:
    bucket = gcs.client(PROJECT).create_bucket("artifacts-d")
    policy = bucket.get_iam_policy(requested_policy_version=3)
    assert policy.version == 1  # the requested version is ignored
    policy.etag = "c3RhbGU="  # a stale etag: real GCS answers 412
    policy.bindings.append({"role": "not-a-role", "members": {"not-a-member"}})

    stored = bucket.set_iam_policy(policy)

    assert stored.etag == "c3RhbGU="  # stored as sent, not a fresh etag
    assert stored.bindings == [{"role": "not-a-role", "members": {"not-a-member"}}]


def test_storage_stop_closes_the_port(gcs: StorageFake) -> None:
    port = int(gcs.endpoint.rsplit(":", 1)[1])
    gcs.stop()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


# --- BigQuery: datasets --------------------------------------------------------------------


def test_dataset_create_get_duplicate_missing(bq_fake: BigQueryFake, bq: bigquery.Client) -> None:
    created = bq.create_dataset(DATASET)
    assert created.dataset_id == "analytics" and created.etag and created.location == "US"
    assert bq.get_dataset(DATASET).etag == created.etag
    assert bq_fake.datasets() == [DATASET]

    with pytest.raises(exceptions.Conflict) as duplicate:
        bq.create_dataset(DATASET)
    assert duplicate.value.errors[0]["reason"] == "duplicate"
    assert _error_body(duplicate.value)["status"] == "ALREADY_EXISTS"
    with pytest.raises(exceptions.NotFound, match="Not found: Dataset proj-a:missing"):
        bq.get_dataset(f"{PROJECT}.missing")


@pytest.mark.parametrize("dataset_id", ["has-dash", "has.dot", "x" * 1025, "naïve"])
def test_dataset_ids_are_letters_digits_underscores(bq_fake: BigQueryFake, bq: bigquery.Client,
                                                    dataset_id: str) -> None:
    reference = bigquery.DatasetReference(PROJECT, dataset_id)
    with pytest.raises(exceptions.BadRequest, match="Invalid dataset ID") as rejected:
        bq.create_dataset(bigquery.Dataset(reference))
    assert rejected.value.errors[0]["reason"] == "invalid"
    assert bq_fake.datasets() == []


def test_dataset_id_of_1024_characters_is_accepted(bq_fake: BigQueryFake,
                                                   bq: bigquery.Client) -> None:
    dataset_id = "A_1" + "x" * 1021
    bq.create_dataset(bigquery.Dataset(bigquery.DatasetReference(PROJECT, dataset_id)))
    assert bq_fake.datasets() == [f"{PROJECT}.{dataset_id}"]


def test_dataset_without_access_gets_the_default_entries() -> None:
    fake = start_bigquery_fake(creator="deployer@example.com")
    try:
        fake.client(PROJECT).create_dataset(DATASET)
        assert sorted((e["role"], e.get("specialGroup") or e.get("userByEmail"))
                      for e in fake.access(DATASET)) == [
            ("OWNER", "deployer@example.com"), ("OWNER", "projectOwners"),
            ("READER", "projectReaders"), ("WRITER", "projectWriters")]
    finally:
        fake.stop()


def test_update_access_entries_kept_as_sent_and_etag_changes(bq_fake: BigQueryFake,
                                                            bq: bigquery.Client) -> None:
    dataset = bq.create_dataset(DATASET)
    entries = [
        bigquery.AccessEntry("OWNER", "specialGroup", "projectOwners"),
        bigquery.AccessEntry("READER", "userByEmail", ALICE),
        bigquery.AccessEntry("roles/bigquery.dataViewer", "groupByEmail", "team@example.com"),
        bigquery.AccessEntry("WRITER", "domain", "example.com"),
        bigquery.AccessEntry("roles/bigquery.dataEditor", "iamMember",
                             "serviceAccount:sa@proj-a.iam.gserviceaccount.com"),
    ]
    dataset.access_entries = entries

    updated = bq.update_dataset(dataset, ["access_entries"])

    assert updated.etag != dataset.etag
    assert bq_fake.etag(DATASET) == updated.etag
    assert bq_fake.access(DATASET) == [entry.to_api_repr() for entry in entries]
    assert bq.get_dataset(DATASET).access_entries == entries


def test_update_with_stale_etag_is_precondition_failed(bq_fake: BigQueryFake,
                                                       bq: bigquery.Client) -> None:
    bq.create_dataset(DATASET)
    first, second = bq.get_dataset(DATASET), bq.get_dataset(DATASET)
    first.access_entries = [bigquery.AccessEntry("OWNER", "userByEmail", ALICE)]
    bq.update_dataset(first, ["access_entries"])

    second.access_entries = []
    with pytest.raises(exceptions.PreconditionFailed) as stale:
        bq.update_dataset(second, ["access_entries"])

    assert stale.value.code == 412
    assert bq_fake.access(DATASET) == [{"role": "OWNER", "userByEmail": ALICE}]


@pytest.mark.parametrize("entry", [
    {"role": "EDITOR", "userByEmail": ALICE},                      # not READER/WRITER/OWNER
    {"role": "bigquery.dataViewer", "userByEmail": ALICE},         # IAM roles need roles/
    {"userByEmail": ALICE},                                        # role is required
    {"role": "READER", "userByEmail": "not-an-email"},
    {"role": "READER", "groupByEmail": "team"},
    {"role": "READER", "domain": "user@example.com"},
    {"role": "READER", "specialGroup": "everyone"},
    {"role": "READER", "iamMember": "robot:r2d2"},
    {"role": "READER", "userByEmail": ALICE, "domain": "example.com"},  # exactly one member
    {"role": "READER"},
])
def test_invalid_access_entries_are_rejected(bq_fake: BigQueryFake, bq: bigquery.Client,
                                             entry: dict[str, str]) -> None:
    dataset = bq.create_dataset(DATASET)
    before = bq_fake.access(DATASET)
    dataset.access_entries = [bigquery.AccessEntry.from_api_repr(entry)]

    with pytest.raises(exceptions.BadRequest):
        bq.update_dataset(dataset, ["access_entries"])

    assert bq_fake.access(DATASET) == before
    assert bq_fake.etag(DATASET) == dataset.etag


def test_invalid_access_entries_are_rejected_on_create(bq_fake: BigQueryFake,
                                                       bq: bigquery.Client) -> None:
    dataset = bigquery.Dataset(DATASET)
    dataset.access_entries = [bigquery.AccessEntry("OWNER", "userByEmail", "nobody")]
    with pytest.raises(exceptions.BadRequest):
        bq.create_dataset(dataset)
    assert bq_fake.datasets() == []


def test_legacy_roles_option_returns_the_legacy_form() -> None:
    fake = start_bigquery_fake(legacy_roles=True)
    try:
        dataset = bigquery.Dataset(DATASET)
        dataset.access_entries = [
            bigquery.AccessEntry("roles/bigquery.dataOwner", "userByEmail", ALICE),
            bigquery.AccessEntry("roles/bigquery.jobUser", "groupByEmail", "team@example.com"),
        ]
        created = fake.client(PROJECT).create_dataset(dataset)
        assert [e.role for e in created.access_entries] == ["OWNER", "roles/bigquery.jobUser"]
    finally:
        fake.stop()


def test_delete_dataset_with_tables_needs_delete_contents(bq_fake: BigQueryFake,
                                                          bq: bigquery.Client,
                                                          table: bigquery.Table) -> None:
    with pytest.raises(exceptions.BadRequest) as in_use:
        bq.delete_dataset(DATASET)
    assert in_use.value.errors[0]["reason"] == "resourceInUse"
    assert bq_fake.datasets() == [DATASET]

    bq.delete_dataset(DATASET, delete_contents=True)

    assert bq_fake.datasets() == [] and bq_fake.tables() == []
    with pytest.raises(exceptions.NotFound):
        bq.delete_dataset(DATASET)
    bq.delete_dataset(DATASET, not_found_ok=True)


# --- BigQuery: tables ----------------------------------------------------------------------


def test_table_create_get_duplicate_delete(bq_fake: BigQueryFake, bq: bigquery.Client,
                                           table: bigquery.Table) -> None:
    fetched = bq.get_table(TABLE)
    assert [(f.name, f.field_type, f.mode) for f in fetched.schema] == [
        ("id", "STRING", "REQUIRED"), ("n", "INT64", "NULLABLE")]
    assert fetched.table_type == "TABLE" and fetched.etag
    assert bq_fake.tables() == [TABLE]

    with pytest.raises(exceptions.Conflict) as duplicate:
        bq.create_table(bigquery.Table(TABLE))
    assert duplicate.value.errors[0]["reason"] == "duplicate"

    bq.delete_table(TABLE)
    assert bq_fake.tables() == []
    with pytest.raises(exceptions.NotFound, match="Not found: Table proj-a:analytics.events"):
        bq.get_table(TABLE)


def test_table_in_missing_dataset_is_not_found(bq_fake: BigQueryFake, bq: bigquery.Client) -> None:
    with pytest.raises(exceptions.NotFound, match="Dataset proj-a:analytics"):
        bq.create_table(bigquery.Table(TABLE))
    assert bq_fake.tables() == []


@pytest.mark.parametrize(("table_id", "valid"), [
    ("events_2024", True), ("events-2024", True), ("événements", True), ("with space", True),
    ("a.b", False), ("t$20240101", False), ("x" * 1025, False), ("semi;colon", False),
])
def test_table_ids_follow_the_documented_character_classes(bq_fake: BigQueryFake,
                                                           bq: bigquery.Client,
                                                           table_id: str, valid: bool) -> None:
    bq.create_dataset(DATASET)
    reference = bigquery.TableReference(bigquery.DatasetReference(PROJECT, "analytics"), table_id)
    if valid:
        bq.create_table(bigquery.Table(reference))
        assert bq_fake.tables() == [f"{DATASET}.{table_id}"]
    else:
        with pytest.raises(exceptions.BadRequest, match="Invalid table ID"):
            bq.create_table(bigquery.Table(reference))
        assert bq_fake.tables() == []


@pytest.mark.parametrize("schema", [
    [bigquery.SchemaField("a", "VARCHAR")],
    [bigquery.SchemaField("a", "STRING"), bigquery.SchemaField("A", "INT64")],
    [bigquery.SchemaField("a", "STRING", mode="OPTIONAL")],
    [bigquery.SchemaField("r", "RECORD")],
])
def test_invalid_schemas_are_rejected(bq_fake: BigQueryFake, bq: bigquery.Client,
                                      schema: list[bigquery.SchemaField]) -> None:
    bq.create_dataset(DATASET)
    with pytest.raises(exceptions.BadRequest):
        bq.create_table(bigquery.Table(TABLE, schema=schema))
    assert bq_fake.tables() == []


# --- BigQuery: table IAM -------------------------------------------------------------------


def test_table_iam_round_trip_and_stale_etag(bq_fake: BigQueryFake, bq: bigquery.Client,
                                             table: bigquery.Table) -> None:
    policy = bq.get_iam_policy(table)
    assert policy.bindings == [] and policy.etag == "ACAB"
    policy.bindings.append({"role": "roles/bigquery.dataViewer", "members": {f"user:{ALICE}"}})

    stored = bq.set_iam_policy(table, policy)

    assert stored.etag != "ACAB"
    assert bq.get_iam_policy(table).bindings == [
        {"role": "roles/bigquery.dataViewer", "members": {f"user:{ALICE}"}}]
    assert bq_fake.table_policy(TABLE)["bindings"] == [
        {"role": "roles/bigquery.dataViewer", "members": [f"user:{ALICE}"]}]

    with pytest.raises(exceptions.Conflict) as stale:  # policy still carries "ACAB"
        bq.set_iam_policy(table, policy)
    assert _error_body(stale.value)["status"] == "ABORTED"
    assert bq_fake.table_policy(TABLE)["etag"] == stored.etag


def test_table_iam_rejects_invalid_members(bq_fake: BigQueryFake, bq: bigquery.Client,
                                          table: bigquery.Table) -> None:
    policy = bq.get_iam_policy(table)
    policy.bindings.append({"role": "roles/bigquery.dataViewer", "members": {ALICE}})  # no user:
    with pytest.raises(exceptions.BadRequest) as invalid:
        bq.set_iam_policy(table, policy)
    assert _error_body(invalid.value)["status"] == "INVALID_ARGUMENT"
    assert bq_fake.table_policy(TABLE).get("bindings") is None


def test_table_iam_on_missing_table_and_after_delete(bq_fake: BigQueryFake, bq: bigquery.Client,
                                                    table: bigquery.Table) -> None:
    policy = bq.get_iam_policy(table)
    policy.bindings.append({"role": "roles/bigquery.dataViewer", "members": {f"user:{ALICE}"}})
    bq.set_iam_policy(table, policy)
    bq.delete_table(table)

    with pytest.raises(exceptions.NotFound, match="Not found: Table proj-a:analytics.events"):
        bq.get_iam_policy(table)
    bq.create_table(bigquery.Table(TABLE))
    assert bq.get_iam_policy(table).bindings == []  # a new table starts with an empty policy
