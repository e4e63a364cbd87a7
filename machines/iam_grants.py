"""The IAM plan's building blocks (pure): the collector every binding goes through, an account's
plan, an ``iam_access_policy`` entry's grant, the director's project roles, and the final merge.
``machines.iam_plan`` composes them; import the plan from there."""

from __future__ import annotations

from collections.abc import Iterable

from machines.architecture import Architecture, IamAccess
from machines.architecture.cross_checks import FIRESTORE_ROLES
from machines.hydration import service_account_email
from machines.iam_records import (
    PHASE_RANK,
    AccountKind,
    IamBinding,
    Phase,
    ResourceType,
    ServiceAccountPlan,
)

__all__ = ["PROJECT_ROLES", "Collector", "access_policy_grant", "account_plan", "director_roles", "merge_bindings"]


class Collector:
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


def account_plan(service: str, kind: AccountKind, account: str, project: str) -> ServiceAccountPlan:
    email = service_account_email(account, project)
    return ServiceAccountPlan(
        service=service,
        kind=kind,
        account=account,
        account_id=email.split("@", 1)[0],
        email=email,
    )


def access_policy_grant(
    collector: Collector,
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


def director_roles(arch: Architecture) -> list[tuple[str, str]]:
    dataflows = arch.dataflows.values()

    def any_of(attr: str) -> bool:
        return any(getattr(df.resources, attr) for df in dataflows)

    roles: list[tuple[str, str]] = []
    if any_of("topics") or any_of("subscriptions"):
        roles.append(
            (
                "roles/pubsub.editor",
                "the director creates the dataflows' Pub/Sub topics and subscriptions",
            )
        )
    if any_of("gcs_buckets"):
        roles.append(("roles/storage.admin", "the director creates the dataflows' GCS buckets"))
    if any_of("bigquery_datasets") or any_of("bigquery_tables"):
        roles.append(
            (
                "roles/bigquery.dataEditor",
                "the director creates the dataflows' BigQuery datasets and tables",
            )
        )
    if any_of("firestore_databases") or any_of("firestore_collections"):
        roles.append(
            ("roles/datastore.owner", "the director creates the dataflows' Firestore databases")
        )
    # Not the director's: IAM on accounts, secrets and Cloud Run services. Podium applies every
    # binding itself (iam.provision, iam.bind, deploy), so the director needs no role that could
    # edit a policy, least of all the daemon's own (serviceAccountAdmin, secretmanager.admin and
    # run.admin could; the anchor granted all three).
    if any_of("cloud_scheduler_jobs"):
        roles.append(
            (
                "roles/cloudscheduler.admin",
                "the director creates the dataflows' Cloud Scheduler jobs",
            )
        )
    return roles


# Every role the plan can grant on a project (the director's, and the Firestore roles services
# and access policies get): deploy/setup.sh conditions the daemon's projectIamAdmin on exactly
# these, so an architecture cannot make Podium grant anything else on the project.
PROJECT_ROLES: frozenset[str] = FIRESTORE_ROLES | {
    "roles/bigquery.dataEditor", "roles/cloudscheduler.admin", "roles/pubsub.editor", "roles/storage.admin",
}


def merge_bindings(bindings: list[IamBinding]) -> tuple[IamBinding, ...]:
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
        if PHASE_RANK[b.phase] < PHASE_RANK[seen.phase]:
            update["phase"] = b.phase
        if update:
            merged[b.key] = seen.model_copy(update=update)
    return tuple(
        sorted(
            merged.values(),
            key=lambda b: (
                PHASE_RANK[b.phase],
                b.member_sa,
                b.resource_type,
                b.resource_id,
                b.role,
                b.resource_location,
            ),
        )
    )
