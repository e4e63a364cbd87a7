"""The architecture file: pydantic models with the Go anchor's keys, and one validation pass.

The schema is go-cloud-manager's ``MicroserviceArchitecture`` (see
``docs/architecture-file.md``): same keys, same nesting, so a platform team can hand Podium its
file unchanged. What differs is how a file is checked: every problem is collected and reported
at once, each as ``"<path.in.doc>: <what was expected>"``, and a typo'd key is an error naming the
nearest valid key instead of being ignored.

Pure: parsing text is the only thing done here (no file or network I/O). The package is split by
concern; import from here, not from the modules:

- ``naming``: Google Cloud's id and name rules, durations, service folders, variable names;
- ``problems``: document paths and problem wording, pydantic errors translated;
- ``fields``: the annotated field types and the base model;
- ``cloud_resources``: a dataflow's resources (topics, subscriptions, ...) and links to services;
- ``schema``: services, dataflows and the root ``Architecture`` with ``from_dict``;
- ``document``: size limits, shape check, normalisation and ``prune`` on the parsed document;
- ``cross_checks``: references between parts of the document (names, uniqueness, links);
- ``loading``: the hardened YAML loader and ``load_architecture``.
"""

from __future__ import annotations

from machines.architecture.cloud_resources import (
    YAML_METHODS,
    BigQueryDataset,
    BigQueryTable,
    CloudResource,
    CloudResourcesSpec,
    CloudSchedulerJob,
    FirestoreCollection,
    FirestoreDatabase,
    GCSBucket,
    IamAccess,
    LifecycleAction,
    LifecycleCondition,
    LifecycleRule,
    Lookup,
    LookupMethod,
    ResourceIO,
    RetryPolicy,
    ServiceMapping,
    Subscription,
    Topic,
)
from machines.architecture.document import (
    MAX_ARCHITECTURE_BYTES,
    MAX_DEPTH,
    MAX_NODES,
    document_shape_problem,
    prune,
)
from machines.architecture.fields import (
    BackoffDuration,
    BucketName,
    DatasetName,
    Duration,
    Map,
    Required,
    RetentionDuration,
    Seq,
    ServiceAccount,
    ServiceName,
    SubscriptionId,
    Text,
    TopicId,
)
from machines.architecture.loading import load_architecture, parse_yaml
from machines.architecture.naming import (
    bucket_name_problem,
    cloud_run_name_problem,
    cron_problem,
    duration_seconds,
    env_var_problem,
    project_id_problem,
    pubsub_id_problem,
    relative_path_problem,
    service_account_problem,
)
from machines.architecture.problems import Loc, format_path
from machines.architecture.schema import (
    Architecture,
    DeploymentSpec,
    Environment,
    HealthCheckSpec,
    Lifecycle,
    ResourceGroup,
    SecretEnvVar,
    ServiceManagerSpec,
    ServiceSpec,
)

__all__ = [
    # The models.
    "Architecture",
    "BigQueryDataset",
    "BigQueryTable",
    "CloudResource",
    "CloudResourcesSpec",
    "CloudSchedulerJob",
    "DeploymentSpec",
    "Environment",
    "FirestoreCollection",
    "FirestoreDatabase",
    "GCSBucket",
    "HealthCheckSpec",
    "IamAccess",
    "Lifecycle",
    "LifecycleAction",
    "LifecycleCondition",
    "LifecycleRule",
    "Lookup",
    "ResourceGroup",
    "ResourceIO",
    "RetryPolicy",
    "SecretEnvVar",
    "ServiceManagerSpec",
    "ServiceMapping",
    "ServiceSpec",
    "Subscription",
    "Topic",
    # Field types.
    "BackoffDuration",
    "BucketName",
    "DatasetName",
    "Duration",
    "LookupMethod",
    "Map",
    "Required",
    "RetentionDuration",
    "Seq",
    "ServiceAccount",
    "ServiceName",
    "SubscriptionId",
    "Text",
    "TopicId",
    "YAML_METHODS",
    # Loading and the parsed document.
    "MAX_ARCHITECTURE_BYTES",
    "MAX_DEPTH",
    "MAX_NODES",
    "document_shape_problem",
    "load_architecture",
    "parse_yaml",
    "prune",
    # Naming rules and problem wording.
    "Loc",
    "bucket_name_problem",
    "cloud_run_name_problem",
    "cron_problem",
    "duration_seconds",
    "env_var_problem",
    "format_path",
    "project_id_problem",
    "pubsub_id_problem",
    "relative_path_problem",
    "service_account_problem",
]
