"""The ``gcp`` IAM backend: IAM Admin for accounts, each resource's own IAM API for bindings.

Resource types covered by ``add_binding`` / ``bindings_visible`` (``handlers.iam.gcp_policies``):

* ``project``: Resource Manager ``ProjectsClient`` (``projects/{p}``)
* ``pubsub_topic`` / ``pubsub_subscription``: Pub/Sub's ``google.iam.v1.IAMPolicy``
* ``cloudrun_service``: Cloud Run v2 ``ServicesClient``
  (``projects/{p}/locations/{region}/services/{name}``)
* ``secret``: Secret Manager (``projects/{p}/secrets/{name}``)
* ``gcs_bucket``: ``google-cloud-storage`` bucket policies
* ``bigquery_table``: ``google-cloud-bigquery`` table policies; ``bigquery_dataset``: the
  dataset's access entries

Resources named by id alone live in the architecture's project: ``in_project`` binds a backend
to it for one run (the daemon's own ``PODIUM_PROJECT`` may be another project).

Every policy change is a read-modify-write: read the policy (requesting version 3, so
conditional bindings survive), add the member to the role's unconditional binding (or add that
binding), write it back carrying the etag that was read. A concurrent change (ABORTED / 409 on
the etag) makes us re-read and try again, up to ``max_policy_attempts`` times. Nothing already
in a policy is removed or replaced, and a member already in the role costs no write.

Clients come from ``handlers.gcp_clients`` on first use and may be injected (tests pass
autospecced mocks).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import structlog
from google.api_core import exceptions as gexc

from handlers.gcp_clients import GcpClients
from handlers.iam.base import USER_MANAGED, account_name, api_error, describe, resource_name
from handlers.iam.gcp_policies import (
    DatasetAccess,
    JsonPolicies,
    PolicyApi,
    ProtoPolicies,
    add_member,
    has_member,
)
from machines.errors import HandlerError, NotReady, PodiumError
from machines.iam_plan import IamBinding, ServiceAccountPlan

__all__ = ["GcpIam", "add_member", "has_member"]

log = structlog.get_logger("podium.iam.gcp")

NEW_ACCOUNT_RETRY_SECONDS = 5.0
CREATED_BY_PODIUM = "Created by Podium"  # the start of the description of every account it creates
# The client (GcpClients API name) each injectable client slot comes from.
_APIS = {"iam": "iam", "projects": "projects", "publisher": "pubsub", "subscriber": "pubsub", "run": "run",
         "secrets": "secretmanager", "storage": "storage", "bigquery": "bigquery"}


class GcpIam:
    """``IamBackend`` on Google Cloud. ``project`` names the resources the plan names by id alone
    (topics, subscriptions, Cloud Run services, secrets, BigQuery); accounts are created in the
    project of their email, project bindings on the project they name."""

    def __init__(
        self,
        project: str,
        *,
        clients: GcpClients | None = None,
        iam_client: Any = None,
        projects_client: Any = None,
        publisher: Any = None,
        subscriber: Any = None,
        run_client: Any = None,
        secrets_client: Any = None,
        storage_client: Any = None,
        bigquery_client: Any = None,
        deployer: str = "",
        max_policy_attempts: int = 5,
    ) -> None:
        self.project = project
        # The daemon's own account: it gets serviceAccountUser on each account it creates (to
        # deploy services as them) instead of on every account of the project.
        self.deployer = deployer
        self.max_policy_attempts = max_policy_attempts
        self._made = clients or GcpClients(project)
        self._clients: dict[str, Any] = {
            "iam": iam_client,
            "projects": projects_client,
            "publisher": publisher,
            "subscriber": subscriber,
            "run": run_client,
            "secrets": secrets_client,
            "storage": storage_client,
            "bigquery": bigquery_client,
        }
        self._ensured: set[str] = set()  # accounts this process created or found
        self._policies: dict[str, PolicyApi] = {
            "project": ProtoPolicies(lambda: self._client("projects")),
            "pubsub_topic": ProtoPolicies(lambda: self._client("publisher")),
            "pubsub_subscription": ProtoPolicies(lambda: self._client("subscriber")),
            "cloudrun_service": ProtoPolicies(lambda: self._client("run")),
            "secret": ProtoPolicies(lambda: self._client("secrets")),
            "gcs_bucket": JsonPolicies(lambda: self._client("storage"), "bucket"),
            "bigquery_table": JsonPolicies(lambda: self._client("bigquery"), "table"),
            "bigquery_dataset": DatasetAccess(lambda: self._client("bigquery")),
            "service_account": ProtoPolicies(lambda: self._client("iam")),
        }

    def in_project(self, project: str) -> GcpIam:
        """This backend for one run's architecture: same clients, resources in ``project``."""
        if not project or project == self.project:
            return self
        scoped = copy.copy(self)
        scoped.project = project
        return scoped

    # ---- clients (lazy) ------------------------------------------------------------------
    def _client(self, key: str) -> Any:
        client = self._clients[key]
        return client if client is not None else self._made.get(_APIS[key])

    # ---- accounts -------------------------------------------------------------------------
    def ensure_service_account(self, account: ServiceAccountPlan) -> str:
        from google.cloud import iam_admin_v1

        email = account.email
        match = USER_MANAGED.match(email)
        if match is None:  # a Google-managed or default account: nothing Podium can create
            self._ensured.add(email)
            return email
        project = match["project"]
        request = iam_admin_v1.CreateServiceAccountRequest(
            name=f"projects/{project}",
            account_id=account.account_id,
            service_account=iam_admin_v1.ServiceAccount(
                display_name=f"podium {account.kind} {account.service}"[:100],
                description=f"{CREATED_BY_PODIUM} for the {account.kind.replace('_', ' ')} "
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
        if self.deployer and self.deployer != email:
            # A new account may not be readable for a moment: NotFound is retryable (api_error).
            self.add_binding(IamBinding(
                member_sa=self.deployer, resource_type="service_account", resource_id=email,
                role="roles/iam.serviceAccountUser", phase="project",
                reason=f"the daemon deploys services that run as {email}",
            ))
        return email

    def account_visible(self, email: str) -> bool:
        try:
            self._client("iam").get_service_account(request={"name": account_name(email)})
        except gexc.NotFound:
            return False
        except Exception as exc:  # noqa: BLE001
            raise api_error(exc, f"reading service account {email}") from exc
        return True

    def remove_service_account(self, email: str) -> bool:
        """Delete an account Podium created (its description says so, which survives a crash
        between the create and its record); any other account is kept."""
        if USER_MANAGED.match(email) is None:  # a Google-managed or default account: never Podium's
            return False
        name = account_name(email)
        try:
            account = self._client("iam").get_service_account(request={"name": name})
        except gexc.NotFound:
            return False
        except Exception as exc:  # noqa: BLE001
            raise api_error(exc, f"reading service account {email}") from exc
        if not str(account.description).startswith(CREATED_BY_PODIUM):
            return False
        try:
            self._client("iam").delete_service_account(request={"name": name})
        except gexc.NotFound:
            return False
        except Exception as exc:  # noqa: BLE001
            raise api_error(exc, f"deleting service account {email}") from exc
        log.info("service account deleted", email=email)
        return True

    # ---- bindings -------------------------------------------------------------------------
    def add_binding(self, binding: IamBinding) -> None:
        name, api = self._policy_api(binding)
        what = f"granting {describe(binding)} ({name})"
        for attempt in range(1, self.max_policy_attempts + 1):
            try:
                policy = api.read(name)
            except Exception as exc:  # noqa: BLE001
                raise api_error(exc, what) from exc
            if not api.add(policy, binding.role, binding.member):
                return  # already granted: no write
            try:
                api.write(name, policy)
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

    def bindings_visible(self, bindings: Sequence[IamBinding]) -> list[bool]:
        if not bindings:
            return []
        name, api = self._policy_api(bindings[0])
        if any(self._policy_api(b)[0] != name for b in bindings[1:]):
            raise ValueError(f"bindings_visible: bindings on more than one resource ({name}, …)")
        try:
            policy = api.read(name)
        except gexc.NotFound:
            return [False] * len(bindings)
        except Exception as exc:  # noqa: BLE001
            raise api_error(
                exc, f"reading the IAM policy of {name} for {describe(bindings[0])}"
                + (f" and {len(bindings) - 1} more" if len(bindings) > 1 else "")
            ) from exc
        return [api.has(policy, b.role, b.member) for b in bindings]

    def _policy_api(self, binding: IamBinding) -> tuple[str, PolicyApi]:
        kind = binding.resource_type
        api = self._policies.get(kind)
        if api is None:
            raise HandlerError(
                f"IAM bindings on {kind.replace('_', ' ')}s are not supported by the gcp backend: "
                f"{describe(binding)} ({binding.reason})",
                retryable=False,
            )
        if kind == "cloudrun_service" and not binding.resource_location:
            raise HandlerError(
                f"no region for Cloud Run service {binding.resource_id}: {describe(binding)}",
                retryable=False,
            )
        return resource_name(binding, self.project), api

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


def _etag_conflict(exc: BaseException) -> bool:
    if isinstance(exc, gexc.Conflict) and not isinstance(exc, gexc.AlreadyExists):
        return True  # ABORTED (gRPC) / 409 (REST): the etag no longer matches
    if isinstance(exc, gexc.PreconditionFailed):
        return True  # 412 (JSON APIs): the If-Match etag no longer matches
    return isinstance(exc, gexc.FailedPrecondition) and "etag" in str(exc).lower()
