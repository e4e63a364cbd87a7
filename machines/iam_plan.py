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
| scheduler job | ``run.invoker`` for the job's account on ``target_service`` |
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
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict

from machines.architecture import Architecture, CloudResource, IamAccess, ServiceMapping
from machines.hydration import all_services, hydrate, infra_dataflow_name, service_account_email

__all__ = ["IamBinding", "IamPlan", "ServiceAccountPlan", "plan_iam"]

ResourceType = Literal[
    "project",
    "pubsub_topic",
    "pubsub_subscription",
    "gcs_bucket",
    "bigquery_dataset",
    "bigquery_table",
    "secret",
    "cloudrun_service",
]
Phase = Literal["project", "resource"]
_PHASE_RANK = {"project": 0, "resource": 1}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ServiceAccountPlan(_Frozen):
    """An account the run needs: one per service (the director included) and per scheduler job."""

    service: str  # the service (or scheduler job) it is for
    kind: Literal["director", "service", "scheduler_job"]
    account: str  # as written in the architecture (id or email)
    account_id: str  # the part before '@'
    email: str


class IamBinding(_Frozen):
    member_sa: str  # the account's email
    resource_type: ResourceType
    resource_id: str
    role: str
    reason: str
    phase: Phase
    resource_location: str = ""  # the region of a cloudrun_service

    @property
    def member(self) -> str:
        return f"serviceAccount:{self.member_sa}"

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        return (
            self.member_sa,
            self.resource_type,
            self.resource_id,
            self.role,
            self.resource_location,
        )


class IamPlan(_Frozen):
    project_id: str
    service_accounts: tuple[ServiceAccountPlan, ...]
    bindings: tuple[IamBinding, ...]

    def for_phase(self, phase: Phase) -> tuple[IamBinding, ...]:
        return tuple(b for b in self.bindings if b.phase == phase)

    def emails(self) -> tuple[str, ...]:
        """Every distinct account email, sorted (several services may share one account)."""
        return tuple(sorted({sa.email for sa in self.service_accounts}))

    def account_of(self, service: str) -> ServiceAccountPlan:
        for sa in self.service_accounts:
            if sa.service == service:
                return sa
        raise KeyError(service)


def plan_iam(arch: Architecture) -> IamPlan:
    """The full plan for ``arch`` (hydrated first; hydration is idempotent)."""
    arch = hydrate(arch)
    project = arch.project_id
    services = all_services(arch)
    director = arch.service_manager_spec.name

    accounts: list[ServiceAccountPlan] = []
    for name, (_, spec) in services.items():
        accounts.append(
            _account(
                name, "director" if name == director else "service", spec.service_account, project
            )
        )
    for df in arch.dataflows.values():
        for job in df.resources.cloud_scheduler_jobs:
            accounts.append(
                _account(
                    job.name, "scheduler_job", job.service_account or f"{job.name}-sa", project
                )
            )
    email_of = {a.service: a.email for a in accounts if a.kind != "scheduler_job"}

    collector = _Collector(email_of)
    bind = collector.bind

    def region_of(service: str) -> str:
        spec = services.get(service, (None, None))[1]
        if spec is not None and spec.deployment is not None and spec.deployment.region:
            return spec.deployment.region
        return arch.region

    def links(items: Iterable[ServiceMapping]) -> list[str]:
        return [link.name for link in items]

    for df in arch.dataflows.values():
        res = df.resources
        for topic in res.topics:
            if topic.producer_service is not None:
                who = topic.producer_service.name
                bind(
                    who,
                    "pubsub_topic",
                    topic.name,
                    ("roles/pubsub.publisher", "roles/pubsub.viewer"),
                    f"{who} produces to topic {topic.name}",
                )
        for sub in res.subscriptions:
            if sub.consumer_service is not None:
                who = sub.consumer_service.name
                bind(
                    who,
                    "pubsub_subscription",
                    sub.name,
                    ("roles/pubsub.subscriber", "roles/pubsub.viewer"),
                    f"{who} consumes subscription {sub.name}",
                )
                bind(
                    who,
                    "pubsub_topic",
                    sub.topic,
                    ("roles/pubsub.viewer",),
                    f"{who} consumes subscription {sub.name} of topic {sub.topic}",
                )
        for bucket in res.gcs_buckets:
            for who in links(bucket.producers):
                bind(
                    who,
                    "gcs_bucket",
                    bucket.name,
                    ("roles/storage.objectAdmin",),
                    f"{who} writes to bucket {bucket.name}",
                )
            for who in links(bucket.consumers):
                bind(
                    who,
                    "gcs_bucket",
                    bucket.name,
                    ("roles/storage.objectViewer",),
                    f"{who} reads bucket {bucket.name}",
                )
        for table in res.bigquery_tables:
            table_id = f"{table.dataset}:{table.name}"
            for who in links(table.producers):
                bind(
                    who,
                    "bigquery_table",
                    table_id,
                    ("roles/bigquery.dataEditor",),
                    f"{who} writes to table {table.dataset}.{table.name}",
                )
            for who in links(table.consumers):
                bind(
                    who,
                    "bigquery_table",
                    table_id,
                    ("roles/bigquery.dataViewer",),
                    f"{who} reads table {table.dataset}.{table.name}",
                )
        for db in res.firestore_databases:
            for who in links(db.producers):
                bind(
                    who,
                    "project",
                    project,
                    ("roles/datastore.user",),
                    f"{who} writes to Firestore database {db.name}",
                    phase="project",
                )
            for who in links(db.consumers):
                bind(
                    who,
                    "project",
                    project,
                    ("roles/datastore.viewer",),
                    f"{who} reads Firestore database {db.name}",
                    phase="project",
                )
        for coll in res.firestore_collections:
            for who in links(coll.producers):
                bind(
                    who,
                    "project",
                    project,
                    ("roles/datastore.user",),
                    f"{who} writes to Firestore collection {coll.name}",
                    phase="project",
                )
            for who in links(coll.consumers):
                bind(
                    who,
                    "project",
                    project,
                    ("roles/datastore.viewer",),
                    f"{who} reads Firestore collection {coll.name}",
                    phase="project",
                )
        for job in res.cloud_scheduler_jobs:
            if job.target_service:
                bind(
                    job.name,
                    "cloudrun_service",
                    job.target_service,
                    ("roles/run.invoker",),
                    f"scheduler job {job.name} invokes {job.target_service}",
                    location=region_of(job.target_service),
                    member=service_account_email(job.service_account or f"{job.name}-sa", project),
                )
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
                _grant(collector, grant, resource_type, resource_id, resource.name, project)

    for name, (_, spec) in services.items():
        for dep in spec.dependencies:
            bind(
                name,
                "cloudrun_service",
                dep,
                ("roles/run.invoker",),
                f"{name} depends on {dep} (invokes its Cloud Run service)",
                location=region_of(dep),
            )
        if spec.deployment is not None:
            for secret in spec.deployment.secret_environment_vars:
                bind(
                    name,
                    "secret",
                    secret.value_from,
                    ("roles/secretmanager.secretAccessor",),
                    f"{name} reads secret {secret.value_from} as ${secret.name}",
                    phase="project",
                )

    for role, reason in _director_roles(arch):
        bind(director, "project", project, (role,), reason, phase="project")

    return IamPlan(
        project_id=project, service_accounts=tuple(accounts), bindings=_merge(collector.bindings)
    )


AccountKind = Literal["director", "service", "scheduler_job"]


class _Collector:
    """Accumulates bindings; a link to a service with no account is skipped (validation reports it)."""

    def __init__(self, email_of: dict[str, str]):
        self.email_of = email_of
        self.bindings: list[IamBinding] = []

    def bind(
        self,
        service: str,
        resource_type: ResourceType,
        resource_id: str,
        roles: Iterable[str],
        reason: str,
        *,
        phase: Phase = "resource",
        location: str = "",
        member: str | None = None,
    ) -> None:
        email = member or self.email_of.get(service)
        if email is None:
            return
        for role in roles:
            self.bindings.append(
                IamBinding(
                    member_sa=email,
                    resource_type=resource_type,
                    resource_id=resource_id,
                    role=role,
                    reason=reason,
                    phase=phase,
                    resource_location=location,
                )
            )


def _account(service: str, kind: AccountKind, account: str, project: str) -> ServiceAccountPlan:
    email = service_account_email(account, project)
    return ServiceAccountPlan(
        service=service,
        kind=kind,
        account=account,
        account_id=email.split("@", 1)[0],
        email=email,
    )


def _grant(
    collector: _Collector,
    grant: IamAccess,
    resource_type: ResourceType,
    resource_id: str,
    resource_name: str,
    project: str,
) -> None:
    what = "Firestore database" if resource_type == "project" else resource_type.replace("_", " ")
    reason = f"{what} {resource_name} grants {grant.role} to {grant.name} (iam_access_policy)"
    phase: Phase = "project" if resource_type == "project" else "resource"
    member = service_account_email(grant.name, project) if grant.type == "service-account" else None
    collector.bind(
        grant.name, resource_type, resource_id, (grant.role,), reason, phase=phase, member=member
    )


def _director_roles(arch: Architecture) -> list[tuple[str, str]]:
    dataflows = arch.dataflows.values()
    infra = infra_dataflow_name(arch)

    def any_of(attr: str) -> bool:
        return any(getattr(df.resources, attr) for df in dataflows)

    services = all_services(arch)
    roles: list[tuple[str, str]] = []
    if any_of("topics") or any_of("subscriptions"):
        roles.append(
            (
                "roles/pubsub.admin",
                "the director creates the dataflows' Pub/Sub topics and subscriptions",
            )
        )
    if any_of("gcs_buckets"):
        roles.append(("roles/storage.admin", "the director creates the dataflows' GCS buckets"))
    if any_of("bigquery_datasets") or any_of("bigquery_tables"):
        roles.append(
            (
                "roles/bigquery.admin",
                "the director creates the dataflows' BigQuery datasets and tables",
            )
        )
    if any_of("firestore_databases") or any_of("firestore_collections"):
        roles.append(
            ("roles/datastore.owner", "the director creates the dataflows' Firestore databases")
        )
    if any(df_name != infra for df_name, _ in services.values()):
        roles.append(
            (
                "roles/iam.serviceAccountAdmin",
                "the director ensures the dataflow services' accounts exist",
            )
        )
    if any(
        spec.deployment is not None and spec.deployment.secret_environment_vars
        for _, spec in services.values()
    ):
        roles.append(
            (
                "roles/secretmanager.admin",
                "the director manages access to the secrets services read",
            )
        )
    if any(spec.dependencies for _, spec in services.values()):
        roles.append(
            (
                "roles/run.admin",
                "the director grants run.invoker on the Cloud Run services others depend on",
            )
        )
    if any_of("cloud_scheduler_jobs"):
        roles.append(
            (
                "roles/cloudscheduler.admin",
                "the director creates the dataflows' Cloud Scheduler jobs",
            )
        )
    return roles


def _merge(bindings: list[IamBinding]) -> tuple[IamBinding, ...]:
    """One binding per (member, resource, role): reasons joined in order, the earliest phase kept;
    sorted by phase, member, resource type, resource id, role."""
    merged: dict[tuple[str, str, str, str, str], IamBinding] = {}
    for b in bindings:
        seen = merged.get(b.key)
        if seen is None:
            merged[b.key] = b
            continue
        reasons = seen.reason.split("; ")
        update: dict[str, str] = {}
        if b.reason not in reasons:
            update["reason"] = f"{seen.reason}; {b.reason}"
        if _PHASE_RANK[b.phase] < _PHASE_RANK[seen.phase]:
            update["phase"] = b.phase
        if update:
            merged[b.key] = seen.model_copy(update=update)
    return tuple(
        sorted(
            merged.values(),
            key=lambda b: (
                _PHASE_RANK[b.phase],
                b.member_sa,
                b.resource_type,
                b.resource_id,
                b.role,
                b.resource_location,
            ),
        )
    )
