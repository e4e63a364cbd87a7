"""google.iam.v1 policy methods (Get/SetIamPolicy, TestIamPermissions) for any fake resource.

A hosting fake mounts ``PolicyStore.methods()`` under its own service name, e.g.
``server.add("google.cloud.run.v2.Services", {**run_methods, **store.methods()})``.

Rules, from https://cloud.google.com/iam/docs/policies and
https://cloud.google.com/iam/docs/reference/rest/v1/Policy (the ``Policy``/``Binding`` fields):

* ``etag`` is optimistic concurrency control: "An etag is returned in the response to
  getIamPolicy, and systems are expected to put that etag in the request to setIamPolicy";
  every successful set yields a new etag; a set carrying a stale etag fails with ABORTED
  (HTTP 409, "There were concurrent policy changes"), a set without an etag overwrites blindly.
* ``version``: "Valid values are 0, 1, and 3. Requests that specify an invalid value are
  rejected." "Any operation that affects conditional role bindings must specify version 3"
  (adding/changing a conditional binding, or removing any binding from a policy with
  conditions) -> INVALID_ARGUMENT otherwise; "If no etag is provided in the call to
  setIamPolicy, version compliance checks against the stored policy are skipped."
  Reading a conditional policy with ``requested_policy_version`` < 3 returns version 1 with
  the conditions dropped and the role renamed ``{role}_withcond_{hash}`` (policies#versions).
* ``members`` take the documented forms (``user:``, ``serviceAccount:``, ``group:``,
  ``domain:``, ``deleted:...``, ``allUsers``, ``allAuthenticatedUsers``, ``principal://``,
  ``principalSet://``); anything else is INVALID_ARGUMENT. Duplicate members collapse, as do
  bindings of the same role and condition; a binding left without members is dropped
  ("Each of the bindings must contain at least one member").
* ``SetIamPolicyRequest.update_mask``: "If no mask is provided, the following default mask is
  used: paths: "bindings, etag"" -- so ``audit_configs`` only change when the mask names them.
* TestIamPermissions: "Permissions with wildcards (such as ``*`` or ``storage.*``) are not
  allowed" -> INVALID_ARGUMENT; it returns the subset the caller holds (all, unless a test
  calls ``deny``).

A resource the host says does not exist answers ``missing`` (NOT_FOUND by default; Resource
Manager documents "Permission is denied if the policy or the resource do not exist").
Hosts with aliases (``projects/-/...``, a number for an id) pass ``resolve`` to map a requested
name onto the stored one; ``check_member`` lets a host reject principals it knows are missing
(IAM answers INVALID_ARGUMENT "Service account ... does not exist").
"""

from __future__ import annotations

import hashlib
import itertools
import re
import threading
from collections.abc import Callable

import grpc
from google.iam.v1 import iam_policy_pb2, policy_pb2

from .grpc_server import FakeError, Unary

# What an untouched resource's policy carries (the real API answers "ACAB" in base64).
INITIAL_ETAG = b"\x00\x20\x01"

_VALID_VERSIONS = (0, 1, 3)
_EMAIL = re.compile(r"^[^@\s:]+@[^@\s:]+$")
_K8S_SA = re.compile(r"^[a-z0-9.-]+\.svc\.id\.goog\[[^/\]]+/[^/\]]+\]$")
_ROLE = re.compile(r"^(roles/[A-Za-z0-9_.]+|(projects|organizations)/[^/]+/roles/[A-Za-z0-9_.]+)$")


def valid_member(member: str) -> bool:
    """Whether ``member`` has one of the forms documented for ``Binding.members``."""
    if member in ("allUsers", "allAuthenticatedUsers"):
        return True
    if member.startswith(("principal://", "principalSet://")):
        return len(member.split("://", 1)[1]) > 0
    if member.startswith("deleted:"):  # deleted:user:{email}?uid={id}, etc.
        kind_and_rest = member[len("deleted:"):]
        return valid_member(kind_and_rest.split("?uid=", 1)[0])
    kind, sep, value = member.partition(":")
    if not sep or not value:
        return False
    if kind in ("user", "group"):
        return bool(_EMAIL.match(value))
    if kind == "serviceAccount":
        return bool(_EMAIL.match(value) or _K8S_SA.match(value))
    if kind == "domain":
        return "@" not in value and "." in value
    return False


def _has_conditions(policy: policy_pb2.Policy) -> bool:
    return any(binding.HasField("condition") for binding in policy.bindings)


def _binding_key(binding: policy_pb2.Binding) -> tuple[str, bytes]:
    condition = binding.condition.SerializeToString(deterministic=True) if binding.HasField("condition") else b""
    return binding.role, condition


def _normalized(policy: policy_pb2.Policy) -> list[policy_pb2.Binding]:
    """Validated bindings, duplicates merged, empty ones dropped (order of first appearance)."""
    merged: dict[tuple[str, bytes], policy_pb2.Binding] = {}
    for binding in policy.bindings:
        if not _ROLE.match(binding.role):
            raise FakeError(grpc.StatusCode.INVALID_ARGUMENT, f"Role {binding.role!r} is not a valid role name.")
        if binding.HasField("condition") and not binding.condition.expression:
            raise FakeError(grpc.StatusCode.INVALID_ARGUMENT, f"Condition on {binding.role} has no expression.")
        for member in binding.members:
            if not valid_member(member):
                raise FakeError(grpc.StatusCode.INVALID_ARGUMENT,
                                f"Invalid member {member!r}: policy members must be of the form \"<type>:<value>\".")
        key = _binding_key(binding)
        if key not in merged:
            merged[key] = policy_pb2.Binding(role=binding.role)
            if binding.HasField("condition"):
                merged[key].condition.CopyFrom(binding.condition)
        for member in binding.members:
            if member not in merged[key].members:
                merged[key].members.append(member)
    return [binding for binding in merged.values() if binding.members]


class PolicyStore:
    """IAM policies by resource name, with the documented etag/version/member rules."""

    def __init__(self, exists: Callable[[str], bool] | None = None, *,
                 missing: grpc.StatusCode = grpc.StatusCode.NOT_FOUND,
                 resolve: Callable[[str], str] | None = None,
                 check_member: Callable[[str], None] | None = None) -> None:
        self._exists = exists
        self._missing = missing
        self._resolve = resolve
        self._check_member = check_member
        self._lock = threading.Lock()
        self._policies: dict[str, policy_pb2.Policy] = {}
        self._sets: dict[str, int] = {}
        self._denied: set[str] = set()
        self._etags = itertools.count(1)

    # --- the RPCs -------------------------------------------------------------------------

    def get_iam_policy(self, request: iam_policy_pb2.GetIamPolicyRequest, _: object = None) -> policy_pb2.Policy:
        resource = self._key(request.resource)
        requested = request.options.requested_policy_version
        if requested not in _VALID_VERSIONS:
            raise FakeError(grpc.StatusCode.INVALID_ARGUMENT, f"Invalid requested policy version {requested}.")
        stored = self.policy(resource)
        if requested >= 3 or not _has_conditions(stored):
            return stored
        # policies#versions: an older reader sees the conditions stripped and roles renamed.
        downgraded = policy_pb2.Policy(version=1, etag=stored.etag)
        downgraded.audit_configs.extend(stored.audit_configs)
        for binding in stored.bindings:
            role = binding.role
            if binding.HasField("condition"):
                digest = hashlib.sha1(binding.condition.SerializeToString(deterministic=True)).hexdigest()[:16]
                role = f"{role}_withcond_{digest}"
            downgraded.bindings.add(role=role, members=binding.members)
        return downgraded

    def set_iam_policy(self, request: iam_policy_pb2.SetIamPolicyRequest, _: object = None) -> policy_pb2.Policy:
        resource, incoming = self._key(request.resource), request.policy
        if incoming.version not in _VALID_VERSIONS:
            raise FakeError(grpc.StatusCode.INVALID_ARGUMENT, f"Invalid policy version {incoming.version}.")
        if _has_conditions(incoming) and incoming.version < 3:
            raise FakeError(grpc.StatusCode.INVALID_ARGUMENT,
                            "Conditional role bindings require policy version 3.")
        bindings = _normalized(incoming)
        if self._check_member is not None:
            for binding in bindings:
                for member in binding.members:
                    self._check_member(member)
        paths = set(request.update_mask.paths) if request.update_mask.paths else {"bindings", "etag"}
        with self._lock:
            current = self._policies.get(resource)
            current_etag = current.etag if current is not None else INITIAL_ETAG
            if incoming.etag and incoming.etag != current_etag:
                raise FakeError(grpc.StatusCode.ABORTED,
                                "There were concurrent policy changes. Please retry the whole "
                                "read-modify-write with exponential backoff.")
            # Version compliance against the stored policy is only checked when an etag is sent.
            if incoming.etag and current is not None and _has_conditions(current) and incoming.version < 3:
                raise FakeError(grpc.StatusCode.INVALID_ARGUMENT,
                                "The stored policy has conditional role bindings; modify it with version 3.")
            updated = policy_pb2.Policy()
            if current is not None:
                updated.CopyFrom(current)
            if "bindings" in paths:
                del updated.bindings[:]
                updated.bindings.extend(bindings)
            if "audit_configs" in paths or "auditConfigs" in paths:
                del updated.audit_configs[:]
                updated.audit_configs.extend(incoming.audit_configs)
            updated.version = 3 if _has_conditions(updated) else 1
            updated.etag = b"BwX" + next(self._etags).to_bytes(8, "big")
            self._policies[resource] = updated
            self._sets[resource] = self._sets.get(resource, 0) + 1
            return _copy(updated)

    def test_iam_permissions(self, request: iam_policy_pb2.TestIamPermissionsRequest,
                             _: object = None) -> iam_policy_pb2.TestIamPermissionsResponse:
        self._key(request.resource)
        for permission in request.permissions:
            if "*" in permission:
                raise FakeError(grpc.StatusCode.INVALID_ARGUMENT,
                                f"Permissions with wildcards are not allowed: {permission}")
        with self._lock:
            held = [p for p in request.permissions if p not in self._denied]
        return iam_policy_pb2.TestIamPermissionsResponse(permissions=held)

    def methods(self) -> dict[str, Unary]:
        return {
            "GetIamPolicy": Unary(iam_policy_pb2.GetIamPolicyRequest, policy_pb2.Policy, self.get_iam_policy),
            "SetIamPolicy": Unary(iam_policy_pb2.SetIamPolicyRequest, policy_pb2.Policy, self.set_iam_policy),
            "TestIamPermissions": Unary(iam_policy_pb2.TestIamPermissionsRequest,
                                        iam_policy_pb2.TestIamPermissionsResponse, self.test_iam_permissions),
        }

    # --- for tests ------------------------------------------------------------------------

    def policy(self, resource: str) -> policy_pb2.Policy:
        """The stored policy (an empty version-1 policy if never set)."""
        with self._lock:
            stored = self._policies.get(resource)
            return _copy(stored) if stored is not None else policy_pb2.Policy(version=1, etag=INITIAL_ETAG)

    def bindings(self, resource: str) -> dict[str, set[str]]:
        """role -> members (conditional and unconditional bindings of a role together)."""
        result: dict[str, set[str]] = {}
        for binding in self.policy(resource).bindings:
            result.setdefault(binding.role, set()).update(binding.members)
        return result

    def resources(self) -> list[str]:
        """Resources whose policy has been set at least once."""
        with self._lock:
            return sorted(self._policies)

    def set_count(self, resource: str) -> int:
        """Successful SetIamPolicy calls on ``resource``."""
        with self._lock:
            return self._sets.get(resource, 0)

    def deny(self, *permissions: str) -> None:
        """Make TestIamPermissions report the caller lacks ``permissions``."""
        with self._lock:
            self._denied.update(permissions)

    def replace_member(self, old: str, new: str) -> None:
        """Rename ``old`` to ``new`` in every binding (IAM shows a deleted service account as
        ``deleted:serviceAccount:{email}?uid={id}``), without changing etags."""
        with self._lock:
            for policy in self._policies.values():
                for binding in policy.bindings:
                    if old in binding.members:
                        members = [new if m == old else m for m in binding.members]
                        del binding.members[:]
                        binding.members.extend(dict.fromkeys(members))

    def forget(self, resource: str) -> None:
        """Drop a resource's policy (a host calls this when it deletes the resource)."""
        with self._lock:
            self._policies.pop(resource, None)
            self._sets.pop(resource, None)

    def _key(self, requested: str) -> str:
        """The stored name for ``requested``; raises ``missing`` for a resource that is not there."""
        if not requested:
            raise FakeError(grpc.StatusCode.INVALID_ARGUMENT, "resource is required")
        resource = self._resolve(requested) if self._resolve is not None else requested
        if self._exists is not None and not self._exists(resource):
            raise FakeError(self._missing, f"Resource {requested} does not exist (or permission denied).")
        return resource


def _copy(policy: policy_pb2.Policy) -> policy_pb2.Policy:
    copy = policy_pb2.Policy()
    copy.CopyFrom(policy)
    return copy
