"""The IAM plan's records (pure): an account to ensure, a role binding with its reason and phase,
and the plan holding both. ``machines.iam_plan`` builds them and re-exports them; import from
there."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

__all__ = [
    "PHASE_RANK",
    "AccountKind",
    "IamBinding",
    "IamPlan",
    "Phase",
    "ResourceType",
    "ServiceAccountPlan",
]

ResourceType = Literal[
    "project",
    "pubsub_topic",
    "pubsub_subscription",
    "gcs_bucket",
    "bigquery_dataset",
    "bigquery_table",
    "secret",
    "cloudrun_service",
    "service_account",  # actAs on an account: who may deploy or schedule as it
]
Phase = Literal["project", "resource"]
PHASE_RANK = {"project": 0, "resource": 1}
AccountKind = Literal["director", "service", "scheduler_job"]


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
