"""How each kind of Google Cloud resource holds its IAM policy, behind one small interface.

``GcpIam`` does the same read-modify-write for every resource; what differs is the API and the
policy's shape, which a ``PolicyApi`` hides:

* ``ProtoPolicies``: ``google.iam.v1`` ``Policy`` messages over a GAPIC client (projects,
  Pub/Sub topics and subscriptions, Cloud Run services, Secret Manager secrets);
* ``JsonPolicies``: ``google.api_core.iam.Policy`` over a JSON API (GCS buckets through
  ``google-cloud-storage``, BigQuery tables through ``google-cloud-bigquery``);
* ``DatasetAccess``: a BigQuery dataset's access entries (``update_dataset`` with the etag read).

Every ``add`` is additive (nothing in the policy is removed) and reports whether it changed
anything, so a member already in the role costs no write.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from google.iam.v1 import iam_policy_pb2, options_pb2, policy_pb2

__all__ = [
    "POLICY_VERSION",
    "DatasetAccess",
    "JsonPolicies",
    "PolicyApi",
    "ProtoPolicies",
    "add_member",
    "has_member",
]

POLICY_VERSION = 3  # read conditional bindings too, so a write-back keeps them


class PolicyApi(Protocol):
    def read(self, name: str) -> Any: ...
    def write(self, name: str, policy: Any) -> None: ...
    def has(self, policy: Any, role: str, member: str) -> bool: ...
    def add(self, policy: Any, role: str, member: str) -> bool: ...


# ---- google.iam.v1 messages ----------------------------------------------------------------------
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


class ProtoPolicies:
    def __init__(self, client: Callable[[], Any]) -> None:
        self._client = client

    def read(self, name: str) -> policy_pb2.Policy:
        request = iam_policy_pb2.GetIamPolicyRequest(
            resource=name, options=options_pb2.GetPolicyOptions(requested_policy_version=POLICY_VERSION)
        )
        return self._client().get_iam_policy(request=request)

    def write(self, name: str, policy: policy_pb2.Policy) -> None:
        self._client().set_iam_policy(request=iam_policy_pb2.SetIamPolicyRequest(resource=name, policy=policy))

    has = staticmethod(has_member)
    add = staticmethod(add_member)


# ---- google.api_core.iam.Policy (JSON APIs) ---------------------------------------------------
class JsonPolicies:
    """Buckets (``kind="bucket"``, name ``projects/_/buckets/B``) or BigQuery tables
    (``kind="table"``, name ``projects/P/datasets/D/tables/T``)."""

    def __init__(self, client: Callable[[], Any], kind: str) -> None:
        self._client = client
        self._kind = kind

    def read(self, name: str) -> Any:
        client = self._client()
        if self._kind == "bucket":
            return client.bucket(_last(name)).get_iam_policy(requested_policy_version=POLICY_VERSION)
        return client.get_iam_policy(_table_ref(name))

    def write(self, name: str, policy: Any) -> None:
        client = self._client()
        if self._kind == "bucket":
            client.bucket(_last(name)).set_iam_policy(policy)
        else:
            client.set_iam_policy(_table_ref(name), policy)

    @staticmethod
    def has(policy: Any, role: str, member: str) -> bool:
        return any(
            b.get("role") == role and not b.get("condition") and member in b.get("members", ())
            for b in policy.bindings
        )

    @staticmethod
    def add(policy: Any, role: str, member: str) -> bool:
        for b in policy.bindings:
            if b.get("role") == role and not b.get("condition"):
                members = set(b.get("members", ()))
                if member in members:
                    return False
                b["members"] = members | {member}
                return True
        policy.bindings.append({"role": role, "members": {member}})
        return True


# ---- BigQuery dataset access entries -------------------------------------------------------------
# BigQuery reports the three data roles as its basic ones on datasets.
_BASIC = {"roles/bigquery.dataViewer": "READER", "roles/bigquery.dataEditor": "WRITER",
          "roles/bigquery.dataOwner": "OWNER"}


class DatasetAccess:
    """A dataset's access list (name ``projects/P/datasets/D``); the update carries the etag."""

    def __init__(self, client: Callable[[], Any]) -> None:
        self._client = client

    def read(self, name: str) -> Any:
        project, dataset = name.split("/")[1], _last(name)
        return self._client().get_dataset(f"{project}.{dataset}")

    def write(self, name: str, dataset: Any) -> None:
        self._client().update_dataset(dataset, ["access_entries"])

    @staticmethod
    def _entity(member: str) -> tuple[str, str]:
        kind, _, who = member.partition(":")
        return ("userByEmail", who) if kind in ("serviceAccount", "user") else ("iamMember", member)

    def has(self, dataset: Any, role: str, member: str) -> bool:
        entity = self._entity(member)
        roles = {role, _BASIC.get(role, role)}
        return any(
            e.role in roles and (e.entity_type, e.entity_id) == entity for e in dataset.access_entries
        )

    def add(self, dataset: Any, role: str, member: str) -> bool:
        from google.cloud.bigquery import AccessEntry  # type: ignore[attr-defined,unused-ignore]

        if self.has(dataset, role, member):
            return False
        entity_type, entity_id = self._entity(member)
        dataset.access_entries = [*dataset.access_entries, AccessEntry(role, entity_type, entity_id)]
        return True


def _last(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def _table_ref(name: str) -> str:
    parts = name.split("/")  # projects/P/datasets/D/tables/T
    return f"{parts[1]}.{parts[3]}.{parts[5]}"
