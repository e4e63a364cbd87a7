"""The IAM backend interface, and what its two implementations share.

A backend does four small things; everything else (which accounts, which bindings, in which
phase, how long to wait) is the plan's and the machine's business:

* ``ensure_service_account``: create the account if it is missing; an existing one is success.
* ``add_binding``: grant one role to one member on one resource, **additively**: read the
  resource's policy, add the member to the role, write it back with the etag that was read,
  re-reading and retrying when someone else changed the policy meanwhile. Nothing already in
  the policy is removed or replaced (the anchor replaced whole policies).
* ``account_visible`` / ``binding_visible``: one check, no waiting. The machine polls with a
  timer (DESIGN.md §7 rule 3), so propagation (minutes on Google Cloud) never holds a thread.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exc

from machines.errors import HandlerError, PodiumError
from machines.iam_plan import IamBinding, ServiceAccountPlan

__all__ = ["IamBackend", "api_error", "describe", "resource_name"]


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

    def binding_visible(self, binding: IamBinding) -> bool:
        """Whether the resource's policy now holds the member in the role (one check)."""
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
    if kind == "gcs_bucket":
        return f"projects/_/buckets/{rid}"
    if kind == "bigquery_dataset":
        return f"projects/{project}/datasets/{rid}"
    if kind == "bigquery_table":
        dataset, _, table = rid.partition(":")
        return f"projects/{project}/datasets/{dataset}/tables/{table}"
    return f"{kind}/{rid}"


def describe(binding: IamBinding) -> str:
    """``role for member on type id`` — for error messages and logs."""
    where = f" in {binding.resource_location}" if binding.resource_location else ""
    return (
        f"{binding.role} for {binding.member} on {binding.resource_type} "
        f"{binding.resource_id}{where}"
    )


# ---- errors ----------------------------------------------------------------------------------
_TRANSIENT = (
    gexc.ServiceUnavailable,
    gexc.GatewayTimeout,  # DeadlineExceeded
    gexc.Conflict,  # Aborted
    gexc.TooManyRequests,  # ResourceExhausted
    gexc.InternalServerError,
    gexc.NotFound,  # a resource created moments ago may not be readable everywhere yet
    gexc.RetryError,
)
_PERMANENT = (gexc.Forbidden, gexc.Unauthorized, gexc.BadRequest, gexc.MethodNotAllowed)


def api_error(exc: BaseException, what: str) -> PodiumError:
    """A Google API (or auth) error as a ``HandlerError`` naming what was being done."""
    if isinstance(exc, PodiumError):
        return exc
    detail = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    kind = type(exc).__name__
    if isinstance(exc, gexc.Forbidden | gexc.Unauthorized):
        return HandlerError(
            f"{what}: permission denied ({kind}: {detail}); the daemon's account lacks a permission "
            "for this",
            retryable=False,
        )
    if isinstance(exc, _PERMANENT):
        return HandlerError(f"{what}: rejected ({kind}: {detail})", retryable=False)
    if isinstance(exc, _TRANSIENT):
        return HandlerError(f"{what}: transient error ({kind}: {detail})", retryable=True)
    if isinstance(exc, auth_exc.DefaultCredentialsError):
        return HandlerError(f"{what}: no Google credentials ({detail})", retryable=False)
    if isinstance(exc, auth_exc.RefreshError):
        return HandlerError(
            f"{what}: credentials could not be refreshed ({detail})",
            retryable=bool(getattr(exc, "retryable", False)),
        )
    # Anything else (other API errors, transport errors): worth another try, then the run fails.
    return HandlerError(f"{what}: {kind}: {detail}", retryable=True)
