"""The ``gcp`` IAM backend: IAM Admin for accounts, each resource's own IAM API for bindings.

Resource types covered by ``add_binding`` / ``binding_visible``:

* ``project``: Resource Manager ``ProjectsClient`` (``projects/{p}``)
* ``pubsub_topic`` / ``pubsub_subscription``: Pub/Sub ``PublisherClient`` / ``SubscriberClient``
* ``cloudrun_service``: Cloud Run v2 ``ServicesClient``
  (``projects/{p}/locations/{region}/services/{name}``)

``gcs_bucket``, ``bigquery_dataset``, ``bigquery_table`` and ``secret`` raise a non-retryable
``HandlerError`` ("not supported yet") naming the binding: their client libraries are not
dependencies of Podium (yet).

Every policy change is a read-modify-write: read the policy (requesting version 3, so
conditional bindings survive), add the member to the role's unconditional binding (or add that
binding), write it back carrying the etag that was read. A concurrent change (ABORTED / 409 on
the etag) makes us re-read and try again, up to ``max_policy_attempts`` times. Nothing already
in a policy is removed or replaced, and a member already in the role costs no write.

Clients are created lazily (first use) and may be injected, so tests pass autospecced mocks.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any

import structlog
from google.api_core import exceptions as gexc
from google.iam.v1 import iam_policy_pb2, options_pb2, policy_pb2

from handlers.iam.base import api_error, describe, resource_name
from machines.errors import HandlerError, NotReady, PodiumError
from machines.iam_plan import IamBinding, ServiceAccountPlan

__all__ = ["GcpIam", "add_member", "has_member"]

log = structlog.get_logger("podium.iam.gcp")

POLICY_VERSION = 3
NEW_ACCOUNT_RETRY_SECONDS = 5.0
_USER_MANAGED = re.compile(r"^[^@]+@(?P<project>[^.@]+)\.iam\.gserviceaccount\.com$")
_SUPPORTED = ("project", "pubsub_topic", "pubsub_subscription", "cloudrun_service")


class GcpIam:
    """``IamBackend`` on Google Cloud. ``project`` names the resources the plan names by id alone
    (topics, subscriptions, Cloud Run services); accounts are created in the project of their
    email, project bindings on the project they name."""

    def __init__(
        self,
        project: str,
        *,
        iam_client: Any = None,
        projects_client: Any = None,
        publisher: Any = None,
        subscriber: Any = None,
        run_client: Any = None,
        max_policy_attempts: int = 5,
    ) -> None:
        self.project = project
        self.max_policy_attempts = max_policy_attempts
        self._clients: dict[str, Any] = {
            "iam": iam_client,
            "projects": projects_client,
            "publisher": publisher,
            "subscriber": subscriber,
            "run": run_client,
        }
        self._lock = threading.Lock()
        self._ensured: set[str] = set()  # accounts this process created or found

    # ---- clients (lazy) ------------------------------------------------------------------
    def _client(self, key: str) -> Any:
        client = self._clients[key]
        if client is not None:
            return client
        with self._lock:
            if self._clients[key] is None:
                try:
                    self._clients[key] = _FACTORIES[key]()
                except Exception as exc:  # noqa: BLE001 - credentials, transport
                    raise api_error(exc, f"creating the {key} client") from exc
            return self._clients[key]

    # ---- accounts -------------------------------------------------------------------------
    def ensure_service_account(self, account: ServiceAccountPlan) -> str:
        from google.cloud import iam_admin_v1

        email = account.email
        match = _USER_MANAGED.match(email)
        if match is None:  # a Google-managed or default account: nothing Podium can create
            self._ensured.add(email)
            return email
        project = match["project"]
        request = iam_admin_v1.CreateServiceAccountRequest(
            name=f"projects/{project}",
            account_id=account.account_id,
            service_account=iam_admin_v1.ServiceAccount(
                display_name=f"podium {account.kind} {account.service}"[:100],
                description=f"Created by Podium for the {account.kind.replace('_', ' ')} "
                f"'{account.service}'"[:256],
            ),
        )
        try:
            self._client("iam").create_service_account(request=request)
            log.info("service account created", email=email)
        except gexc.AlreadyExists:
            log.debug("service account exists", email=email)
        except Exception as exc:  # noqa: BLE001 - mapped to a HandlerError
            raise api_error(exc, f"creating service account {email} in projects/{project}") from exc
        self._ensured.add(email)
        return email

    def account_visible(self, email: str) -> bool:
        match = _USER_MANAGED.match(email)
        project = match["project"] if match else "-"
        try:
            self._client("iam").get_service_account(
                request={"name": f"projects/{project}/serviceAccounts/{email}"}
            )
        except gexc.NotFound:
            return False
        except Exception as exc:  # noqa: BLE001
            raise api_error(exc, f"reading service account {email}") from exc
        return True

    # ---- bindings -------------------------------------------------------------------------
    def add_binding(self, binding: IamBinding) -> None:
        name, client = self._policy_api(binding)
        what = f"granting {describe(binding)} ({name})"
        for attempt in range(1, self.max_policy_attempts + 1):
            try:
                policy = client.get_iam_policy(request=_get_request(name))
            except Exception as exc:  # noqa: BLE001
                raise api_error(exc, what) from exc
            if not add_member(policy, binding.role, binding.member):
                return  # already granted: no write
            try:
                client.set_iam_policy(
                    request=iam_policy_pb2.SetIamPolicyRequest(resource=name, policy=policy)
                )
                log.info(
                    "iam binding added", role=binding.role, member=binding.member, resource=name
                )
                return
            except Exception as exc:  # noqa: BLE001
                if _etag_conflict(exc):
                    log.info(
                        "iam policy changed meanwhile; re-reading", resource=name, attempt=attempt
                    )
                    continue
                raise self._binding_error(exc, what, binding) from exc
        raise HandlerError(
            f"{what}: the policy kept changing under us (etag conflict {self.max_policy_attempts} times)",
            retryable=True,
        )

    def binding_visible(self, binding: IamBinding) -> bool:
        name, client = self._policy_api(binding)
        try:
            policy = client.get_iam_policy(request=_get_request(name))
        except gexc.NotFound:
            return False
        except Exception as exc:  # noqa: BLE001
            raise api_error(
                exc, f"reading the IAM policy of {name} for {describe(binding)}"
            ) from exc
        return has_member(policy, binding.role, binding.member)

    def _policy_api(self, binding: IamBinding) -> tuple[str, Any]:
        kind = binding.resource_type
        if kind not in _SUPPORTED:
            raise HandlerError(
                f"IAM bindings on {kind.replace('_', ' ')}s are not supported by the gcp backend yet: "
                f"{describe(binding)} ({binding.reason})",
                retryable=False,
            )
        if kind == "cloudrun_service" and not binding.resource_location:
            raise HandlerError(
                f"no region for Cloud Run service {binding.resource_id}: {describe(binding)}",
                retryable=False,
            )
        key = {
            "project": "projects",
            "pubsub_topic": "publisher",
            "pubsub_subscription": "subscriber",
            "cloudrun_service": "run",
        }[kind]
        return resource_name(binding, self.project), self._client(key)

    def _binding_error(self, exc: BaseException, what: str, binding: IamBinding) -> PodiumError:
        # A brand-new account may not be usable in policies for a while (IAM is eventually
        # consistent): wait for it durably instead of failing, but only for accounts we ensured.
        if (
            isinstance(exc, gexc.BadRequest)
            and "does not exist" in str(exc)
            and binding.member_sa in self._ensured
        ):
            return NotReady(
                f"{what}: account {binding.member_sa} is not usable in IAM policies yet",
                retry_after=NEW_ACCOUNT_RETRY_SECONDS,
            )
        return api_error(exc, what)


# ---- policy edits (pure) ---------------------------------------------------------------------
def add_member(policy: policy_pb2.Policy, role: str, member: str) -> bool:
    """Add ``member`` to ``role``'s unconditional binding of ``policy`` (creating it if needed).
    Everything else is left as it is. Returns False when the member was already there."""
    for b in policy.bindings:
        if b.role == role and not b.HasField("condition"):
            if member in b.members:
                return False
            b.members.append(member)
            return True
    policy.bindings.add(role=role, members=[member])
    return True


def has_member(policy: policy_pb2.Policy, role: str, member: str) -> bool:
    """Whether ``policy`` grants ``role`` to ``member`` unconditionally."""
    return any(
        b.role == role and not b.HasField("condition") and member in b.members
        for b in policy.bindings
    )


def _etag_conflict(exc: BaseException) -> bool:
    if isinstance(exc, gexc.Conflict) and not isinstance(exc, gexc.AlreadyExists):
        return True  # ABORTED (gRPC) / 409 (REST): the etag no longer matches
    return (
        isinstance(exc, gexc.FailedPrecondition | gexc.PreconditionFailed)
        and "etag" in str(exc).lower()
    )


def _get_request(name: str) -> iam_policy_pb2.GetIamPolicyRequest:
    return iam_policy_pb2.GetIamPolicyRequest(
        resource=name, options=options_pb2.GetPolicyOptions(requested_policy_version=POLICY_VERSION)
    )


def _iam_client() -> Any:
    from google.cloud import iam_admin_v1

    return iam_admin_v1.IAMClient()


def _projects_client() -> Any:
    from google.cloud import resourcemanager_v3

    return resourcemanager_v3.ProjectsClient()


def _publisher() -> Any:
    from google.cloud.pubsub_v1 import PublisherClient

    return PublisherClient()


def _subscriber() -> Any:
    from google.cloud.pubsub_v1 import SubscriberClient

    return SubscriberClient()


def _run_client() -> Any:
    from google.cloud import run_v2

    return run_v2.ServicesClient()


_FACTORIES: dict[str, Callable[[], Any]] = {
    "iam": _iam_client,
    "projects": _projects_client,
    "publisher": _publisher,
    "subscriber": _subscriber,
    "run": _run_client,
}
