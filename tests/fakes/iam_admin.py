"""IAM Admin v1 service accounts and Resource Manager v3 project policies, as gRPC fakes.

``start_iam_fakes(["my-project"])`` serves both on loopback; the real clients connect with
``insecure_client(iam_admin_v1.IAMClient, fakes.admin_endpoint)`` and
``insecure_client(resourcemanager_v3.ProjectsClient, fakes.projects_endpoint)``.

Documented rules enforced here:

* accountId "must be 6-30 characters long, and match the regular expression
  [a-z]([-a-z0-9]*[a-z0-9])" -> INVALID_ARGUMENT
  (https://cloud.google.com/iam/docs/reference/rest/v1/projects.serviceAccounts/create);
  "It is unique within a project" -> ALREADY_EXISTS on a second create. Only displayName
  (max 100 bytes) and description (max 256 bytes) are user assignable.
* The email is ``{accountId}@{project}.iam.gserviceaccount.com``; each account has a numeric
  ``uniqueId`` (https://cloud.google.com/iam/docs/service-account-overview).
* Names: ``projects/{PROJECT_ID}/serviceAccounts/{EMAIL_ADDRESS}`` or ``.../{UNIQUE_ID}``,
  or ``projects/-/...``; with ``-``, "if you try to access the service account
  projects/-/serviceAccounts/fake@example.com, which does not exist, the response contains
  an HTTP 403 Forbidden error instead of a 404 Not Found error"
  (https://cloud.google.com/iam/docs/reference/rest/v1/projects.serviceAccounts, ``name``).
* Eventual consistency: "After you create a service account, you might need to wait for 60
  seconds or more before you use the service account ... read operations are eventually
  consistent" (https://cloud.google.com/iam/docs/service-accounts-create). For
  ``visibility_delay`` seconds a new account is missing from Get/List and its policy calls,
  and granting it a role on a project fails as the real API does: INVALID_ARGUMENT
  "Service account ... does not exist."
* A deleted account stays in policies as ``deleted:serviceAccount:{email}?uid={uniqueId}``
  (https://cloud.google.com/iam/docs/reference/rest/v1/Policy, ``Binding.members``).
* Resource Manager ``projects.getIamPolicy``: "Permission is denied if the policy or the
  resource do not exist" -> PERMISSION_DENIED for unknown projects; the resource is
  ``projects/{ProjectIdOrNumber}``
  (https://cloud.google.com/resource-manager/reference/rest/v3/projects/getIamPolicy).

Policy semantics (etag, version, members) come from ``PolicyStore``.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import grpc
from google.cloud import iam_admin_v1, resourcemanager_v3
from google.protobuf import empty_pb2

from .grpc_server import FakeError, FakeServer, Unary
from .iam_policy import PolicyStore

ServiceAccount = iam_admin_v1.ServiceAccount

_ACCOUNT_ID = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])$")
_SA_NAME = re.compile(r"^projects/([^/]+)/serviceAccounts/([^/]+)$")
_SA_DOMAIN = ".iam.gserviceaccount.com"
_DEFAULT_PAGE_SIZE = 20
_MAX_PAGE_SIZE = 100


@dataclass
class _Account:
    account: iam_admin_v1.ServiceAccount
    created: float


class FakeIamAdmin:
    """Service accounts of the configured projects, and their IAM policies."""

    def __init__(self, projects: Iterable[str], visibility_delay: float = 0.0, *,
                 clock: Callable[[], float] = time.monotonic,
                 on_delete: Callable[[iam_admin_v1.ServiceAccount], None] | None = None) -> None:
        self._projects = set(projects)
        self.visibility_delay = visibility_delay
        self._clock = clock
        self._on_delete = on_delete
        self._lock = threading.Lock()
        self._accounts: dict[str, _Account] = {}  # by email
        self._unique_ids = itertools.count(104_000_000_000_000_000_001)
        self.policies = PolicyStore(resolve=self._policy_resource, check_member=self.check_member)

    # --- state, for tests and for the other fakes ----------------------------------------

    def accounts(self, project: str) -> dict[str, iam_admin_v1.ServiceAccount]:
        """Every account of ``project`` by email, visible yet or not."""
        with self._lock:
            return {email: iam_admin_v1.ServiceAccount(entry.account)
                    for email, entry in self._accounts.items() if entry.account.project_id == project}

    def visible(self, email: str) -> bool:
        """Whether reads see ``email`` yet (created, and ``visibility_delay`` has passed)."""
        with self._lock:
            entry = self._accounts.get(email)
            return entry is not None and self._clock() - entry.created >= self.visibility_delay

    def hosts(self, email: str) -> bool:
        """Whether ``email`` is a user-managed account address of a project this fake serves."""
        domain = email.partition("@")[2]
        return domain.endswith(_SA_DOMAIN) and domain[: -len(_SA_DOMAIN)] in self._projects

    def check_member(self, member: str) -> None:
        """Reject granting a role to an account of a served project that reads cannot see.

        Only those accounts are known here; others (Google-managed agents) pass."""
        email = member.removeprefix("serviceAccount:")
        if member.startswith("serviceAccount:") and self.hosts(email) and not self.visible(email):
            raise FakeError(grpc.StatusCode.INVALID_ARGUMENT, f"Service account {email} does not exist.")

    # --- the RPCs --------------------------------------------------------------------------

    def create(self, request: iam_admin_v1.CreateServiceAccountRequest, _: object = None) -> iam_admin_v1.ServiceAccount:
        project = _project_of(request.name)
        if project not in self._projects:
            raise FakeError(grpc.StatusCode.NOT_FOUND, f"Project {project} not found.")
        account_id = request.account_id
        if not (6 <= len(account_id) <= 30 and _ACCOUNT_ID.match(account_id)):
            raise FakeError(grpc.StatusCode.INVALID_ARGUMENT,
                            f"Invalid account_id {account_id!r}: must be 6-30 characters long and match "
                            "[a-z]([-a-z0-9]*[a-z0-9]).")
        given = request.service_account
        if len(given.display_name.encode()) > 100 or len(given.description.encode()) > 256:
            raise FakeError(grpc.StatusCode.INVALID_ARGUMENT, "display_name/description too long.")
        email = f"{account_id}@{project}{_SA_DOMAIN}"
        with self._lock:
            # Writes are consistent: a second create conflicts even before the first is visible.
            if email in self._accounts:
                raise FakeError(grpc.StatusCode.ALREADY_EXISTS, f"Service account {account_id} already exists within project projects/{project}.")
            unique_id = str(next(self._unique_ids))
            account = iam_admin_v1.ServiceAccount(
                name=f"projects/{project}/serviceAccounts/{email}", project_id=project, unique_id=unique_id,
                email=email, display_name=given.display_name, description=given.description,
                oauth2_client_id=unique_id, etag=b"MDEwMjE5MjA=",
            )
            self._accounts[email] = _Account(account, self._clock())
            return iam_admin_v1.ServiceAccount(account)

    def get(self, request: iam_admin_v1.GetServiceAccountRequest, _: object = None) -> iam_admin_v1.ServiceAccount:
        return iam_admin_v1.ServiceAccount(self._find(request.name))

    def list(self, request: iam_admin_v1.ListServiceAccountsRequest,
             _: object = None) -> iam_admin_v1.ListServiceAccountsResponse:
        project = _project_of(request.name)
        if project not in self._projects:
            raise FakeError(grpc.StatusCode.NOT_FOUND, f"Project {project} not found.")
        size = min(request.page_size or _DEFAULT_PAGE_SIZE, _MAX_PAGE_SIZE)
        try:
            start = int(request.page_token or "0")
        except ValueError:
            raise FakeError(grpc.StatusCode.INVALID_ARGUMENT, "Invalid page token.") from None
        visible = sorted((a for a in self.accounts(project).values() if self.visible(a.email)),
                         key=lambda account: account.email)
        page = visible[start:start + size]
        token = str(start + size) if start + size < len(visible) else ""
        return iam_admin_v1.ListServiceAccountsResponse(accounts=page, next_page_token=token)

    def delete(self, request: iam_admin_v1.DeleteServiceAccountRequest, _: object = None) -> empty_pb2.Empty:
        account = self._find(request.name)
        with self._lock:
            self._accounts.pop(account.email, None)
        self.policies.forget(account.name)
        if self._on_delete is not None:
            self._on_delete(account)
        return empty_pb2.Empty()

    def methods(self) -> dict[str, Unary]:
        policy = self.policies.methods()
        return {
            "CreateServiceAccount": Unary(iam_admin_v1.CreateServiceAccountRequest, iam_admin_v1.ServiceAccount, self.create),
            "GetServiceAccount": Unary(iam_admin_v1.GetServiceAccountRequest, iam_admin_v1.ServiceAccount, self.get),
            "ListServiceAccounts": Unary(iam_admin_v1.ListServiceAccountsRequest,
                                         iam_admin_v1.ListServiceAccountsResponse, self.list),
            "DeleteServiceAccount": Unary(iam_admin_v1.DeleteServiceAccountRequest, empty_pb2.Empty, self.delete),
            "GetIamPolicy": policy["GetIamPolicy"],
            "SetIamPolicy": policy["SetIamPolicy"],
            "TestIamPermissions": policy["TestIamPermissions"],
        }

    def _find(self, name: str) -> iam_admin_v1.ServiceAccount:
        """The visible account ``name`` refers to (by email or unique id, project or ``-``)."""
        match = _SA_NAME.match(name)
        if not match:
            raise FakeError(grpc.StatusCode.INVALID_ARGUMENT, f"Invalid service account name {name!r}.")
        project, key = match.groups()
        with self._lock:
            entry = self._accounts.get(key) or next(
                (e for e in self._accounts.values() if e.account.unique_id == key), None)
            seen = entry is not None and self._clock() - entry.created >= self.visibility_delay
        if entry is None or not seen or project not in ("-", entry.account.project_id):
            # The documented wildcard quirk: "-" hides a 404 behind a 403.
            code = grpc.StatusCode.PERMISSION_DENIED if project == "-" else grpc.StatusCode.NOT_FOUND
            raise FakeError(code, f"Unknown service account {key}.")
        return entry.account

    def _policy_resource(self, name: str) -> str:
        return self._find(name).name


class FakeProjects:
    """Resource Manager v3: GetProject and project IAM policies for known project ids."""

    def __init__(self, projects: Iterable[str], check_member: Callable[[str], None] | None = None) -> None:
        self._numbers = {project: str(100_000_000_001 + index) for index, project in enumerate(projects)}
        self.policies = PolicyStore(self._known, missing=grpc.StatusCode.PERMISSION_DENIED,
                                    resolve=self._by_id, check_member=check_member)

    def number(self, project: str) -> str:
        return self._numbers[project]

    def get_project(self, request: resourcemanager_v3.GetProjectRequest, _: object = None) -> resourcemanager_v3.Project:
        name = self._by_id(request.name)
        if not self._known(name):
            raise FakeError(grpc.StatusCode.PERMISSION_DENIED, f"The caller does not have permission on {request.name}.")
        project = name[len("projects/"):]
        return resourcemanager_v3.Project(name=f"projects/{self._numbers[project]}", project_id=project,
                                          display_name=project, state=resourcemanager_v3.Project.State.ACTIVE)

    def methods(self) -> dict[str, Unary]:
        return {"GetProject": Unary(resourcemanager_v3.GetProjectRequest, resourcemanager_v3.Project, self.get_project),
                **self.policies.methods()}

    def _by_id(self, name: str) -> str:
        """``projects/{id}`` for ``projects/{number}`` (the API takes either); others unchanged."""
        for project, number in self._numbers.items():
            if name == f"projects/{number}":
                return f"projects/{project}"
        return name

    def _known(self, name: str) -> bool:
        return name.startswith("projects/") and name[len("projects/"):] in self._numbers


class IamFakes:
    """An IAM Admin fake and a Resource Manager fake sharing one view of service accounts."""

    def __init__(self, projects: list[str], visibility_delay: float = 0.0, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.admin = FakeIamAdmin(projects, visibility_delay, clock=clock, on_delete=self._deleted)
        self.projects = FakeProjects(projects, check_member=self.admin.check_member)
        self._admin_server = FakeServer()
        self._admin_server.add("google.iam.admin.v1.IAM", self.admin.methods())
        self._projects_server = FakeServer()
        self._projects_server.add("google.cloud.resourcemanager.v3.Projects", self.projects.methods())
        self.admin_endpoint = self._admin_server.start()
        self.projects_endpoint = self._projects_server.start()

    @property
    def account_policies(self) -> PolicyStore:
        """Policies on service accounts, keyed ``projects/{p}/serviceAccounts/{email}``."""
        return self.admin.policies

    @property
    def project_policies(self) -> PolicyStore:
        """Policies on projects, keyed ``projects/{id}``."""
        return self.projects.policies

    def accounts(self, project: str) -> dict[str, iam_admin_v1.ServiceAccount]:
        return self.admin.accounts(project)

    def stop(self) -> None:
        self._admin_server.stop()
        self._projects_server.stop()

    def _deleted(self, account: iam_admin_v1.ServiceAccount) -> None:
        old = f"serviceAccount:{account.email}"
        new = f"deleted:{old}?uid={account.unique_id}"
        self.project_policies.replace_member(old, new)
        self.account_policies.replace_member(old, new)


def start_iam_fakes(projects: list[str], visibility_delay: float = 0) -> IamFakes:
    """Start both fakes on loopback; call ``.stop()`` when done."""
    return IamFakes(projects, visibility_delay)


def _project_of(name: str) -> str:
    if not name.startswith("projects/") or "/" in name[len("projects/"):]:
        raise FakeError(grpc.StatusCode.INVALID_ARGUMENT, f"Invalid project resource name {name!r}.")
    return name[len("projects/"):]
