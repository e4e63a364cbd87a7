"""The IAM role plan: which account gets which role on what, and why (anchor §5).

Role table (the anchor's, with its gaps filled):

| link | role(s) |
|---|---|
| topic ``producer_service`` | ``pubsub.publisher`` + ``pubsub.viewer`` on the topic |
| subscription ``consumer_service`` | ``pubsub.subscriber`` + ``pubsub.viewer`` on the subscription, ``pubsub.viewer`` on its topic |
| bucket producer / consumer | ``storage.objectAdmin`` / ``storage.objectViewer`` on the bucket |
| BigQuery table producer / consumer | ``bigquery.dataEditor`` / ``bigquery.dataViewer`` on the table (id ``dataset:table``) |
| Firestore database *or collection* producer / consumer | ``datastore.user`` / ``datastore.viewer`` on the project |
| ``dependencies: [svc]`` | ``run.invoker`` on Cloud Run service ``svc`` (in its region) |
| scheduler job | ``run.invoker`` for the job's account on ``target_service``; ``iam.serviceAccountUser`` on that account for the director (it creates the job) |
| ``secret_environment_vars`` | ``secretmanager.secretAccessor`` on the secret ``value_from`` |
| ``iam_access_policy`` entry | its role on that resource (Firestore: on the project) |
| the director | project roles: ``pubsub.admin``, ``storage.admin`` (buckets), ``bigquery.admin`` (datasets/tables), ``datastore.owner`` (Firestore), ``iam.serviceAccountAdmin`` (services), ``secretmanager.admin`` (secrets), ``run.admin`` (dependencies), ``cloudscheduler.admin`` (scheduler jobs) |

Differences from the anchor: links resolve to a service in *any* dataflow (the anchor silently
skipped other dataflows' services); Firestore collections grant like their database (the anchor
granted nothing, so a writer could not write); scheduler jobs get their account planned and their
invoker binding (the anchor did neither) and the director gets ``cloudscheduler.admin``; an
``iam_access_policy`` entry of ``type: service-account`` names the account itself.

``phase``: ``project`` bindings are applied before the director runs (project roles, and secrets,
which exist before the run); ``resource`` bindings after the dataflow resources exist. Pure.

The plan is composed here, one function per concern, called in a fixed order (each dataflow's
resources, then each service's dependencies and secrets, then the director's roles): that order
is the order merged reasons are joined in. The records live in ``machines.iam_records`` (import
them from here), the collector, account and merge helpers in ``machines.iam_grants``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from machines.architecture import (
    Architecture,
    CloudResource,
    CloudResourcesSpec,
    ServiceMapping,
    ServiceSpec,
)
from machines.hydration import all_services, hydrate, service_account_email
from machines.iam_grants import (
    Collector,
    access_policy_grant,
    account_plan,
    director_roles,
    merge_bindings,
)
from machines.iam_records import (
    AccountKind,
    IamBinding,
    IamPlan,
    Phase,
    ResourceType,
    ServiceAccountPlan,
)

__all__ = [
    "AccountKind",
    "IamBinding",
    "IamPlan",
    "Phase",
    "ResourceType",
    "ServiceAccountPlan",
    "plan_iam",
]

Services = dict[str, tuple[str, ServiceSpec]]  # all_services: name → (dataflow, spec)


def plan_iam(arch: Architecture) -> IamPlan:
    """The full plan for ``arch`` (hydrated first; hydration is idempotent)."""
    arch = hydrate(arch)
    project = arch.project_id
    services = all_services(arch)
    accounts = _accounts(arch, services)
    collector = Collector({a.service: a.email for a in accounts if a.kind != "scheduler_job"})

    def region_of(service: str) -> str:
        return _region_of(arch, services, service)

    for df in arch.dataflows.values():
        res = df.resources
        _bind_pubsub(collector, res)
        _bind_buckets(collector, res)
        _bind_bigquery(collector, res)
        _bind_firestore(collector, res, project)
        _bind_scheduler_invokers(collector, res, project, region_of)
        _bind_access_policies(collector, res, project)
    for name, (_, spec) in services.items():
        _bind_service_invokers(collector, name, spec, region_of)
        _bind_secrets(collector, name, spec)
    _bind_director(collector, arch)

    return IamPlan(
        project_id=project,
        service_accounts=tuple(accounts),
        bindings=merge_bindings(collector.bindings),
    )


# -- accounts ---------------------------------------------------------------------------------


def _accounts(arch: Architecture, services: Services) -> list[ServiceAccountPlan]:
    """One account per service (the director's of kind ``director``), then one per scheduler job."""
    project = arch.project_id
    director = arch.service_manager_spec.name
    accounts: list[ServiceAccountPlan] = []
    for name, (_, spec) in services.items():
        kind: AccountKind = "director" if name == director else "service"
        accounts.append(account_plan(name, kind, spec.service_account, project))
    for df in arch.dataflows.values():
        for job in df.resources.cloud_scheduler_jobs:
            accounts.append(
                account_plan(
                    job.name, "scheduler_job", _job_account(job.name, job.service_account), project
                )
            )
    return accounts


def _job_account(job: str, account: str | None) -> str:
    return account or f"{job}-sa"


def _region_of(arch: Architecture, services: Services, service: str) -> str:
    """The region of a service's Cloud Run service: its deployment's, else the architecture's."""
    spec = services.get(service, (None, None))[1]
    if spec is not None and spec.deployment is not None and spec.deployment.region:
        return spec.deployment.region
    return arch.region


def _names(items: Iterable[ServiceMapping]) -> list[str]:
    return [link.name for link in items]


# -- Pub/Sub ----------------------------------------------------------------------------------


def _bind_pubsub(collector: Collector, res: CloudResourcesSpec) -> None:
    """Producers publish to their topic; consumers subscribe to their subscription and view its
    topic."""
    for topic in res.topics:
        if topic.producer_service is not None:
            who = topic.producer_service.name
            collector.bind(
                who,
                "pubsub_topic",
                topic.name,
                ("roles/pubsub.publisher", "roles/pubsub.viewer"),
                f"{who} produces to topic {topic.name}",
            )
    for sub in res.subscriptions:
        if sub.consumer_service is not None:
            who = sub.consumer_service.name
            collector.bind(
                who,
                "pubsub_subscription",
                sub.name,
                ("roles/pubsub.subscriber", "roles/pubsub.viewer"),
                f"{who} consumes subscription {sub.name}",
            )
            collector.bind(
                who,
                "pubsub_topic",
                sub.topic,
                ("roles/pubsub.viewer",),
                f"{who} consumes subscription {sub.name} of topic {sub.topic}",
            )


# -- GCS buckets ------------------------------------------------------------------------------


def _bind_buckets(collector: Collector, res: CloudResourcesSpec) -> None:
    for bucket in res.gcs_buckets:
        for who in _names(bucket.producers):
            collector.bind(
                who,
                "gcs_bucket",
                bucket.name,
                ("roles/storage.objectAdmin",),
                f"{who} writes to bucket {bucket.name}",
            )
        for who in _names(bucket.consumers):
            collector.bind(
                who,
                "gcs_bucket",
                bucket.name,
                ("roles/storage.objectViewer",),
                f"{who} reads bucket {bucket.name}",
            )


# -- BigQuery ---------------------------------------------------------------------------------


def _bind_bigquery(collector: Collector, res: CloudResourcesSpec) -> None:
    """Roles on the table, whose id is ``dataset:table``."""
    for table in res.bigquery_tables:
        table_id = f"{table.dataset}:{table.name}"
        for who in _names(table.producers):
            collector.bind(
                who,
                "bigquery_table",
                table_id,
                ("roles/bigquery.dataEditor",),
                f"{who} writes to table {table.dataset}.{table.name}",
            )
        for who in _names(table.consumers):
            collector.bind(
                who,
                "bigquery_table",
                table_id,
                ("roles/bigquery.dataViewer",),
                f"{who} reads table {table.dataset}.{table.name}",
            )


# -- project roles (Firestore) ----------------------------------------------------------------


def _bind_firestore(collector: Collector, res: CloudResourcesSpec, project: str) -> None:
    """Firestore roles are project roles; a collection grants like its database."""
    for kind, resources in (
        ("database", res.firestore_databases),
        ("collection", res.firestore_collections),
    ):
        for resource in resources:
            for who in _names(resource.producers):
                collector.bind(
                    who,
                    "project",
                    project,
                    ("roles/datastore.user",),
                    f"{who} writes to Firestore {kind} {resource.name}",
                    phase="project",
                )
            for who in _names(resource.consumers):
                collector.bind(
                    who,
                    "project",
                    project,
                    ("roles/datastore.viewer",),
                    f"{who} reads Firestore {kind} {resource.name}",
                    phase="project",
                )


# -- run.invoker --------------------------------------------------------------------------------


def _bind_scheduler_invokers(
    collector: Collector,
    res: CloudResourcesSpec,
    project: str,
    region_of: Callable[[str], str],
) -> None:
    """A scheduler job's own account invokes its target service."""
    for job in res.cloud_scheduler_jobs:
        if job.target_service:
            collector.bind(
                job.name,
                "cloudrun_service",
                job.target_service,
                ("roles/run.invoker",),
                f"scheduler job {job.name} invokes {job.target_service}",
                location=region_of(job.target_service),
                member=service_account_email(_job_account(job.name, job.service_account), project),
            )


def _bind_service_invokers(
    collector: Collector, name: str, spec: ServiceSpec, region_of: Callable[[str], str]
) -> None:
    """A service invokes the Cloud Run services it depends on (each in its own region)."""
    for dep in spec.dependencies:
        collector.bind(
            name,
            "cloudrun_service",
            dep,
            ("roles/run.invoker",),
            f"{name} depends on {dep} (invokes its Cloud Run service)",
            location=region_of(dep),
        )


# -- iam_access_policy ------------------------------------------------------------------------


def _bind_access_policies(collector: Collector, res: CloudResourcesSpec, project: str) -> None:
    """Each entry's role on its resource (a Firestore database's on the project)."""
    grants: list[tuple[ResourceType, str, CloudResource]] = [
        *(("pubsub_topic", t.name, t) for t in res.topics),
        *(("pubsub_subscription", s.name, s) for s in res.subscriptions),
        *(("gcs_bucket", b.name, b) for b in res.gcs_buckets),
        *(("bigquery_dataset", d.name, d) for d in res.bigquery_datasets),
        *(("bigquery_table", f"{t.dataset}:{t.name}", t) for t in res.bigquery_tables),
        *(("project", project, f) for f in res.firestore_databases),
    ]
    for resource_type, resource_id, resource in grants:
        for grant in resource.iam_access_policy:
            access_policy_grant(
                collector, grant, resource_type, resource_id, resource.name, project
            )


# -- secrets ----------------------------------------------------------------------------------


def _bind_secrets(collector: Collector, name: str, spec: ServiceSpec) -> None:
    """A service reads the secrets behind its ``secret_environment_vars`` (they exist before the
    run, hence the project phase)."""
    if spec.deployment is None:
        return
    for secret in spec.deployment.secret_environment_vars:
        collector.bind(
            name,
            "secret",
            secret.value_from,
            ("roles/secretmanager.secretAccessor",),
            f"{name} reads secret {secret.value_from} as ${secret.name}",
            phase="project",
        )


# -- the director -------------------------------------------------------------------------------


def _bind_director(collector: Collector, arch: Architecture) -> None:
    """The director's project roles, for the kinds of thing the architecture has."""
    director = arch.service_manager_spec.name
    for role, reason in director_roles(arch):
        collector.bind(director, "project", arch.project_id, (role,), reason, phase="project")
    # Creating a job that calls with an OIDC token of an account needs actAs on that account.
    for df in arch.dataflows.values():
        for job in df.resources.cloud_scheduler_jobs:
            email = service_account_email(_job_account(job.name, job.service_account), arch.project_id)
            collector.bind(director, "service_account", email, ("roles/iam.serviceAccountUser",),
                           f"the director creates scheduler job {job.name}, which calls as {email}")
