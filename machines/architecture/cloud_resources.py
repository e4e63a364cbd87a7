"""The dataflow resources of the architecture file, and the links from them to services.

A dataflow's ``resources`` block (``CloudResourcesSpec``) lists Pub/Sub topics and subscriptions,
BigQuery datasets and tables, GCS buckets, Firestore databases and collections and Cloud
Scheduler jobs, each with the go-cloud-manager keys. A resource names the services that produce
or consume it (``ServiceMapping``, with a ``Lookup`` saying how the service finds it) and may
carry explicit IAM grants (``IamAccess``). Whether those names exist is a cross-check.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from machines.architecture.fields import (
    BackoffDuration,
    BucketName,
    CronSchedule,
    DatasetName,
    Duration,
    Map,
    Model,
    Required,
    RetentionDuration,
    RoleName,
    SchedulerJobName,
    Seq,
    ServiceAccount,
    SubscriptionId,
    Text,
    TopicId,
)

__all__ = [
    "YAML_METHODS",
    "BigQueryDataset",
    "BIGQUERY_TYPES",
    "BigQueryTable",
    "CloudResource",
    "CloudResourcesSpec",
    "CloudSchedulerJob",
    "FirestoreCollection",
    "FirestoreDatabase",
    "GCSBucket",
    "IamAccess",
    "LifecycleAction",
    "LifecycleCondition",
    "LifecycleRule",
    "Lookup",
    "LookupMethod",
    "RESOURCE_KINDS",
    "ResourceIO",
    "RetryPolicy",
    "ServiceMapping",
    "Subscription",
    "TableField",
    "reported_name",
    "Topic",
]

LookupMethod = Literal["", "yaml", "env", "db"]
YAML_METHODS: frozenset[str] = frozenset({"", "yaml"})

# ---------------------------------------------------------------------------------------------
# Links.
# ---------------------------------------------------------------------------------------------


class Lookup(Model):
    """How a service finds a linked resource: ``yaml``/empty → resources.yaml, ``env`` → a variable."""

    key: Text = ""
    method: LookupMethod = ""


class ServiceMapping(Model):
    """A link from a resource to a service: ``{name, lookup: {key, method}}``."""

    name: Required
    lookup: Lookup = Field(default_factory=Lookup)


class ResourceIO(Model):
    producers: Seq[ServiceMapping] = ()
    consumers: Seq[ServiceMapping] = ()


# ---------------------------------------------------------------------------------------------
# Resources.
# ---------------------------------------------------------------------------------------------


class IamAccess(Model):
    """An explicit grant on a resource. ``type: service`` (or empty) names a service,
    ``type: service-account`` a service account."""

    name: Required
    role: RoleName
    type: Literal["", "service", "service-account"] = ""


class LifecycleAction(Model):
    type: Text = ""


class LifecycleCondition(Model):
    age_in_days: int | None = None


class LifecycleRule(Model):
    action: LifecycleAction = Field(default_factory=LifecycleAction)
    condition: LifecycleCondition = Field(default_factory=LifecycleCondition)


class CloudResource(Model):
    name: Required
    description: Text = ""
    labels: Map[Text] = Field(default_factory=dict)
    iam_access_policy: Seq[IamAccess] = ()
    lifecycle_rules: Seq[LifecycleRule] = ()
    teardown_protection: bool = False


class Topic(CloudResource):
    name: TopicId
    producer_service: ServiceMapping | None = None


class RetryPolicy(Model):
    minimum_backoff: BackoffDuration | None = None
    maximum_backoff: BackoffDuration | None = None


class Subscription(CloudResource):
    name: SubscriptionId
    topic: Required
    consumer_service: ServiceMapping | None = None
    ack_deadline_seconds: int | None = None
    message_retention_duration: RetentionDuration | None = None
    retry_policy: RetryPolicy | None = None

    @field_validator("ack_deadline_seconds")
    @classmethod
    def _ack_deadline(cls, value: int | None) -> int | None:
        if value is not None and value != 0 and not 10 <= value <= 600:
            raise ValueError(f"{value} is out of range: an ack deadline is 10 to 600 seconds")
        return value


class BigQueryDataset(CloudResource):
    name: DatasetName
    location: Text = ""


BIGQUERY_TYPES: frozenset[str] = frozenset({
    "STRING", "BYTES", "INTEGER", "INT64", "FLOAT", "FLOAT64", "NUMERIC", "BIGNUMERIC",
    "BOOLEAN", "BOOL", "TIMESTAMP", "DATE", "TIME", "DATETIME", "GEOGRAPHY", "JSON",
    "RECORD", "STRUCT", "INTERVAL",
})
_COLUMN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,299}$")


class TableField(Model):
    """One column, in BigQuery's JSON schema form (``bq show --schema``): RECORD nests ``fields``."""

    name: Required
    type: Required
    mode: Literal["NULLABLE", "REQUIRED", "REPEATED"] = "NULLABLE"
    description: Text = ""
    fields: Seq[TableField] = ()

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _COLUMN_NAME.match(value):
            raise ValueError(f"{value!r} is not a column name (a letter or _, then letters, digits, _)")
        return value

    @model_validator(mode="after")
    def _type(self) -> TableField:
        kind = self.type.upper()
        if kind not in BIGQUERY_TYPES:
            raise ValueError(f"type {self.type!r} is not a BigQuery type (one of {', '.join(sorted(BIGQUERY_TYPES))})")
        if (kind in ("RECORD", "STRUCT")) != bool(self.fields):
            raise ValueError(f"column {self.name}: a RECORD has `fields`, and only a RECORD has them")
        return self


class BigQueryTable(CloudResource, ResourceIO):
    model_config = ConfigDict(**Model.model_config, serialize_by_alias=True)  # ``schema``, not ``schema_``

    dataset: DatasetName
    schema_: Seq[TableField] = Field(default=(), alias="schema")  # Podium's: the columns, created with the table
    schema_type: Text = ""  # go-cloud-manager's Go type registry: not readable here, kept for the file's sake
    schema_import_path: Text = ""
    time_partitioning_field: Text = ""
    time_partitioning_type: Literal["", "HOUR", "DAY", "MONTH", "YEAR"] = ""
    time_partitioning_expiration: Duration | None = None
    clustering_fields: Seq[Text] = ()
    expiration: Duration | None = None


class GCSBucket(CloudResource, ResourceIO):
    name: BucketName
    location: Text = ""
    storage_class: Text = ""
    versioning_enabled: bool = False


class FirestoreDatabase(CloudResource, ResourceIO):
    location_id: Text = ""
    type: Literal["", "NATIVE", "DATASTORE_MODE"] = ""


class FirestoreCollection(CloudResource, ResourceIO):
    database: Text = ""


class CloudSchedulerJob(CloudResource):
    name: SchedulerJobName
    schedule: CronSchedule
    time_zone: Text = ""
    target_service: Text = ""
    service_account: ServiceAccount | None = None
    message_body: Text = ""


# The contract's name for each kind (``outputs.resources[].kind``), by the section that lists it.
RESOURCE_KINDS: dict[str, str] = {
    "topics": "pubsub_topic",
    "subscriptions": "pubsub_subscription",
    "bigquery_datasets": "bigquery_dataset",
    "bigquery_tables": "bigquery_table",
    "gcs_buckets": "gcs_bucket",
    "firestore_databases": "firestore_database",
    "firestore_collections": "firestore_collection",
    "cloud_scheduler_jobs": "cloud_scheduler_job",
}


def reported_name(resource: CloudResource) -> str:
    """A resource's name as ``outputs.resources`` writes it: ``dataset.table`` for a table,
    ``database/collection`` for a collection, its name otherwise."""
    if isinstance(resource, BigQueryTable):
        return f"{resource.dataset}.{resource.name}"
    if isinstance(resource, FirestoreCollection):
        return f"{resource.database or '(default)'}/{resource.name}"
    return resource.name


class CloudResourcesSpec(Model):
    topics: Seq[Topic] = ()
    subscriptions: Seq[Subscription] = ()
    bigquery_datasets: Seq[BigQueryDataset] = ()
    bigquery_tables: Seq[BigQueryTable] = ()
    gcs_buckets: Seq[GCSBucket] = ()
    firestore_databases: Seq[FirestoreDatabase] = ()
    firestore_collections: Seq[FirestoreCollection] = ()
    cloud_scheduler_jobs: Seq[CloudSchedulerJob] = ()
