"""The IAM backend interface, and what its two implementations share.

A backend does four small things; everything else (which accounts, which bindings, in which
phase, how long to wait) is the plan's and the machine's business:

* ``ensure_service_account``: create the account if it is missing; an existing one is success.
* ``add_binding``: grant one role to one member on one resource, **additively**: read the
  resource's policy, add the member to the role, write it back with the etag that was read,
  re-reading and retrying when someone else changed the policy meanwhile. Nothing already in
  the policy is removed or replaced (the anchor replaced whole policies).
* ``account_visible`` / ``bindings_visible`` (one resource's bindings, one read): one check, no
  waiting. The machine polls with a timer (DESIGN.md §7 rule 3), so propagation (minutes on
  Google Cloud) never holds a thread.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from handlers import google_errors
from machines.errors import PodiumError
from machines.iam_plan import IamBinding, ServiceAccountPlan

__all__ = ["USER_MANAGED", "IamBackend", "account_name", "api_error", "describe", "resource_name"]


@runtime_checkable
class IamBackend(Protocol):
    def ensure_service_account(self, account: ServiceAccountPlan) -> str:
        """Create ``account`` if missing and return its email (already existing is success)."""
        ...

    def add_binding(self, binding: IamBinding) -> None:
        """Grant ``binding.role`` to ``binding.member`` on its resource, keeping everything else."""
        ...

    def account_visible(self, email: str) -> bool:
        """Whether the account can be read back now (one check)."""
        ...

    def bindings_visible(self, bindings: Sequence[IamBinding]) -> list[bool]:
        """For bindings on one resource: whether its policy now holds each member in its role
        (one check; on Google Cloud one read of that resource's policy)."""
        ...

    def remove_service_account(self, email: str) -> bool:
        """Delete the account if Podium created it; False if it is gone or not Podium's (kept)."""
        ...

    def in_project(self, project: str) -> IamBackend:
        """This backend for one run: resources named by id alone live in the architecture's
        ``project`` (which need not be the daemon's own)."""
        ...


def resource_name(binding: IamBinding, project: str) -> str:
    """The full resource name of a binding's target, as the Google APIs spell it.

    ``project`` is used for resources the plan names by id alone; a ``project`` binding names its
    project itself. An id that is already a full name (``projects/...``) is kept.
    """
    rid = binding.resource_id
    kind = binding.resource_type
    if kind == "project":
        return rid if rid.startswith("projects/") else f"projects/{rid}"
    if rid.startswith("projects/"):
        return rid
    if kind == "pubsub_topic":
        return f"projects/{project}/topics/{rid}"
    if kind == "pubsub_subscription":
        return f"projects/{project}/subscriptions/{rid}"
    if kind == "cloudrun_service":
        return f"projects/{project}/locations/{binding.resource_location or '-'}/services/{rid}"
    if kind == "secret":
        return f"projects/{project}/secrets/{rid}"
    if kind == "service_account":
        return account_name(rid)
    if kind == "gcs_bucket":
        return f"projects/_/buckets/{rid}"
    if kind == "bigquery_dataset":
        return f"projects/{project}/datasets/{rid}"
    if kind == "bigquery_table":
        dataset, _, table = rid.partition(":")
        return f"projects/{project}/datasets/{dataset}/tables/{table}"
    return f"{kind}/{rid}"


# A user-managed account: ``<id>@<project>.iam.gserviceaccount.com``.
USER_MANAGED = re.compile(r"^[^@]+@(?P<project>[^.@]+)\.iam\.gserviceaccount\.com$")


def account_name(email: str) -> str:
    """``projects/<the email's project>/serviceAccounts/<email>``; ``projects/-`` for an account
    of no project Podium can name (there a missing account answers PERMISSION_DENIED, not NOT_FOUND)."""
    match = USER_MANAGED.match(email)
    return f"projects/{match['project'] if match else '-'}/serviceAccounts/{email}"


def describe(binding: IamBinding) -> str:
    """``role for member on type id`` — for error messages and logs."""
    where = f" in {binding.resource_location}" if binding.resource_location else ""
    return (
        f"{binding.role} for {binding.member} on {binding.resource_type} "
        f"{binding.resource_id}{where}"
    )


# ---- errors ----------------------------------------------------------------------------------
def api_error(exc: BaseException, what: str) -> PodiumError:
    """``handlers.google_errors.api_error`` with IAM's one rule of its own: NotFound is "not
    visible yet" (an account created moments ago is not readable everywhere), so retryable."""
    return google_errors.api_error(exc, what, missing_is_transient=True)
