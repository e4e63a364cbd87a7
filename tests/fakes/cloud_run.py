"""A stateful fake of the Cloud Run Admin API v2 ``Services`` (``google.cloud.run.v2.Services``).

The real ``run_v2.ServicesClient`` talks to it over loopback gRPC
(``insecure_client(run_v2.ServicesClient, fake.endpoint)``); create, update and delete are
long-running operations polled through ``google.longrunning.Operations`` like the real API.
``start_cloud_run_fake()`` starts one; ``fake.services()``, ``fake.revisions(name)`` and
``fake.bindings(name)`` let a test look at what was deployed.

What it enforces, and where the rule is documented (REST reference:
https://cloud.google.com/run/docs/reference/rest/v2/projects.locations.services and the
``google.cloud.run_v2`` type docs, which carry the same text):

* ``service_id`` (services/create): "It must begin with letter, and cannot end with hyphen;
  must contain fewer than 50 characters"; lowercase letters, digits and hyphens, as every
  Cloud Run resource name ("Resource name must use only lowercase letters, numbers and '-'",
  the API's own message). Violations -> INVALID_ARGUMENT. A second create -> ALREADY_EXISTS
  ("Resource 'x' already exists."); get/update/delete of a missing service -> NOT_FOUND, worded
  as the API words it ("Resource 'x' of kind 'SERVICE' in region 'r' in project 'p' does not
  exist."). ``UpdateServiceRequest.allow_missing``: "If set to true, and if the Service does
  not exist, it will create a new one." ``validate_only``: "validated ... without persisting".
* etag (https://google.aip.dev/154, "Resource freshness validation"): "If a user sends back an
  etag which does not match the current etag value, the service must send an ABORTED error
  response" (changed on 2021-03-05 from FAILED_PRECONDITION to ABORTED, HTTP 409); no etag ->
  the write is permitted. Update takes the etag from ``service.etag``, delete from
  ``DeleteServiceRequest.etag``. The etag changes on every create/update (not on status
  changes such as becoming ready).
* Revisions (``RevisionTemplate.revision``: "The unique name for the revision. If this field is
  omitted, it will be automatically generated based on the Service name"). Cloud Run keeps
  Knative's "bring your own revision name" rules (https://github.com/knative/serving/pull/3562):
  the name "must be prefixed by the name of the enclosing Service ... with a trailing -", and
  must change whenever the template changes; reusing a name for another configuration fails
  with ALREADY_EXISTS, which the API reports as "409 Revision named '<name>' with different
  configuration already exists." (googleapis/google-cloud-python#14259). A write whose
  template equals the current one creates no revision. Generated names look like the real
  ones, ``{service}-{generation:05d}-{3 random [a-z0-9]}`` (e.g. ``inventory-00001-958``,
  ``ci-static-ct-00001-6hx`` in real error messages). Every revision is kept with its template.
* CPU (https://cloud.google.com/run/docs/configuring/services/cpu): "The minimum vCPU setting
  is 0.08 vCPU"; below 1 "any value between 0.08 and 1, in increments of 0.001"; above 1 the
  table's values 1, 2, 4, 6, 8 ("Values greater than 1 must be integer values", "The maximum
  amount of vCPU you can configure is 8 vCPU"). Less than 1 vCPU requires "Maximum concurrency
  must be set to 1" (``max_instance_request_concurrency`` 0 means 1 below 1 CPU: "If not
  specified or 0, concurrency defaults to 80 when requested CPU >= 1 and defaults to 1 when
  requested CPU < 1"), "The billing settings must be set to request-based billing" (i.e.
  ``resources.cpu_idle`` true, https://cloud.google.com/run/docs/configuring/billing-settings:
  request-based billing "was previously called CPU only allocated during request processing";
  ``cpu_idle`` is a proto3 bool, "if ResourceRequirements is set, the caller must explicitly set
  this field to true to preserve the default behavior") and "the first generation execution
  environment" (so an explicit GEN2 is refused). The API's message is "Invalid value specified
  for cpu. Total cpu < 1 is not supported with concurrency > 1."
* Memory (https://cloud.google.com/run/docs/configuring/services/memory-limits): the CPU page's
  table ".08 vCPU up to 512 MiB, .5 up to 1 GiB, 1 up to 4 GiB, 2 up to 8 GiB, 4: 2 to 16 GiB,
  6: 4 to 24 GiB, 8: 4 to 32 GiB" (the memory page's "More than 4 GiB: 2 / More than 8 GiB: 4 /
  More than 16 GiB: 6 / More than 24 GiB: 8" minimum CPUs), "The maximum amount of memory you
  can configure is 32 gibibyte", "The minimum memory setting ... 128 MiB for first generation,
  512 MiB for second generation" (enforced for an explicit GEN2; an unspecified environment
  lets Cloud Run pick, and the API then answers "For 1.0 CPU, memory must be between 128Mi and
  4Gi inclusive"). Sizes are "a fixed or floating point number followed by a unit: G, M, or K
  ... or ... Gi, Mi, Ki". Unset limits default to 1 CPU and 512 MiB ("By default, each instance
  is limited to 1 vCPU", "By default, the memory allocated to each instance of a revision is
  512 MiB"). The docs do not say that instance-based billing needs 512 MiB, so it is not
  enforced. Message: "Invalid value specified for container memory. For 1.0 CPU, memory must
  be between 128Mi and 4Gi inclusive." (as the API answers).
* Concurrency at most 1000 (https://cloud.google.com/run/docs/about-concurrency: "You can
  increase this to a maximum of 1,000"); scaling instance counts are non-negative and min does
  not exceed max (max 0 = unset: "When unspecified, the field is set to the server default value
  of 100"); ``ingress`` must be an ``IngressTraffic`` value (unset reads back as
  INGRESS_TRAFFIC_ALL); ``template.service_account`` must be a service account email: an
  ``*.iam.gserviceaccount.com`` account id "must be 6-30 characters long, and match the regular
  expression [a-z]([-a-z0-9]*[a-z0-9])" (iam_admin_v1 CreateServiceAccountRequest), or another
  Google-managed ``*.gserviceaccount.com`` account (``N-compute@developer...``).
* Readiness (``Service.reconciling``): "While reconciliation is in process,
  observed_generation, latest_ready_revision, traffic_statuses, and uri will have transient
  values"; "If reconciliation succeeded ... latest_ready_revision and latest_created_revision"
  match and ``observed_generation`` equals ``generation``; "If reconciliation failed ...
  latest_ready_revision will have the state of the last serving revision, or empty for newly
  created Services". Here a write sets ``reconciling`` and a ``Ready`` terminal condition
  CONDITION_PENDING for ``ready_delay`` seconds (``latest_created_revision`` is set at once),
  then CONDITION_SUCCEEDED with ``latest_ready_revision`` and ``uri``
  (``https://{service}-{hash}-{region code}.a.run.app``), and the operation completes with the
  Service. An image marked failing (``image_failure`` hook or ``fail_image``) ends in
  CONDITION_FAILED, reason REVISION_FAILED, with the API's message "Revision '<name>' is not
  ready and cannot serve traffic. The user-provided container failed to start ..." and the
  operation fails with that message (FAILED_PRECONDITION by default; real operations have
  reported both code 9 and code 13 for it, hence ``failure_code``).
* Get/SetIamPolicy and TestIamPermissions on services: ``tests.fakes.iam_policy.PolicyStore``
  (its own rules), NOT_FOUND for a service that does not exist; deleting a service drops its
  policy.

Not modelled: traffic splits beyond "100% to the latest" (``traffic`` is stored as sent),
update masks below the top-level field (``scaling.min_instance_count`` updates all of
``scaling``), the server filling default limits into the stored template, and the Revisions
API (``google.cloud.run.v2.Revisions``).
"""

from __future__ import annotations

import hashlib
import random
import re
import string
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import grpc
from google.cloud import run_v2
from google.longrunning import operations_pb2

from .grpc_server import FakeError, FakeServer, Unary
from .iam_policy import PolicyStore

__all__ = [
    "SERVICE",
    "CloudRunFake",
    "FakeRevision",
    "START_FAILURE",
    "start_cloud_run_fake",
]

SERVICE = "google.cloud.run.v2.Services"
START_FAILURE = (
    "The user-provided container failed to start and listen on the port defined provided by the "
    "PORT=8080 environment variable within the allocated timeout. Logs for this revision might "
    "contain more information."
)

State = run_v2.Condition.State
Ingress = run_v2.IngressTraffic
Gen = run_v2.ExecutionEnvironment

_PARENT = re.compile(r"^projects/([^/]+)/locations/([^/]+)$")
_NAME = re.compile(r"^projects/([^/]+)/locations/([^/]+)/services/([^/]+)$")
_SERVICE_ID = re.compile(r"^[a-z]([a-z0-9-]{0,47}[a-z0-9])?$")  # <= 49 characters
_REVISION_ID = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")  # a DNS label, <= 63
_SA_ACCOUNT_ID = re.compile(r"^[a-z]([-a-z0-9]{4,28}[a-z0-9])$")  # 6-30 characters
_SA_DOMAIN = re.compile(r"^[a-z0-9]([a-z0-9.:-]*[a-z0-9])?\.gserviceaccount\.com$")
_QUANTITY = re.compile(r"^(?P<number>[0-9]+(\.[0-9]*)?|\.[0-9]+)(?P<unit>[A-Za-z]*)$")
_MEMORY_UNITS = {
    "": 1, "K": 10**3, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
}
_SUFFIX_CHARS = string.ascii_lowercase + string.digits
Mi, Gi = 2**20, 2**30
DEFAULT_CPU = Decimal(1)
DEFAULT_MEMORY = 512 * Mi
MAX_CONCURRENCY = 1000
# The CPU page's table: integer vCPU -> (minimum, maximum) memory.
_WHOLE_CPU_MEMORY = {
    1: (128 * Mi, 4 * Gi), 2: (128 * Mi, 8 * Gi), 4: (2 * Gi, 16 * Gi),
    6: (4 * Gi, 24 * Gi), 8: (4 * Gi, 32 * Gi),
}
# Legacy ``*.a.run.app`` URLs end in a region code; the few known here, else the initials.
_REGION_CODES = {
    "us-central1": "uc", "us-east1": "ue", "us-east4": "uk", "us-west1": "uw",
    "europe-west1": "ew", "europe-west2": "nw", "europe-west3": "ey", "europe-west4": "ez",
    "asia-northeast1": "an", "asia-east1": "de",
}


def _invalid(message: str) -> FakeError:
    return FakeError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _copy(message: Any) -> Any:
    return type(message).deserialize(type(message).serialize(message))


def _now() -> datetime:
    return datetime.now(UTC)


# ---- revisions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FakeRevision:
    """One revision and the template it was created from (as sent: ``template.revision`` may
    be empty for a generated name). ``state`` is PENDING until ``ready_at``, then READY or
    FAILED (``failure`` holds the reason)."""

    name: str  # projects/{p}/locations/{r}/services/{s}/revisions/{revision_id}
    revision_id: str
    service: str
    generation: int
    template: run_v2.RevisionTemplate = field(compare=False)
    ready_at: float = field(compare=False)
    failure: str | None = None

    @property
    def state(self) -> str:
        if time.monotonic() < self.ready_at:
            return "PENDING"
        return "FAILED" if self.failure else "READY"

    @property
    def container(self) -> run_v2.Container:
        return self.template.containers[0]

    @property
    def image(self) -> str:
        return str(self.container.image)

    @property
    def limits(self) -> dict[str, str]:
        return dict(self.container.resources.limits)

    @property
    def cpu(self) -> str | None:
        return self.limits.get("cpu")

    @property
    def memory(self) -> str | None:
        return self.limits.get("memory")

    @property
    def cpu_idle(self) -> bool:
        return _cpu_idle(self.container)

    @property
    def env(self) -> dict[str, str]:
        """Plain values as they are; secrets as ``secret:{secret}:{version}``."""
        out: dict[str, str] = {}
        for var in self.container.env:
            ref = var.value_source.secret_key_ref
            out[var.name] = f"secret:{ref.secret}:{ref.version}" if ref.secret else var.value
        return out

    @property
    def service_account(self) -> str:
        return str(self.template.service_account)

    @property
    def scaling(self) -> tuple[int, int]:
        return self.template.scaling.min_instance_count, self.template.scaling.max_instance_count


# ---- validation (pure) --------------------------------------------------------------------


def validate_service_id(service_id: str) -> None:
    if not _SERVICE_ID.match(service_id):
        raise _invalid(
            f"service_id '{service_id}': Resource name must use only lowercase letters, numbers "
            "and '-'. Must begin with a letter and cannot end with a '-'. Maximum length is 49 "
            "characters."
        )


def parse_cpu(value: str) -> Decimal:
    """A CPU quantity: ``"1"``, ``"0.5"``, ``"500m"``, ``"1000m"``."""
    match = _QUANTITY.match(value.strip())
    if not match or match["unit"] not in ("", "m"):
        raise _invalid(
            f"template.containers.resources.limits.cpu: Invalid value specified for cpu: '{value}'."
        )
    number = Decimal(match["number"])
    return number / 1000 if match["unit"] == "m" else number


def parse_memory(value: str) -> int:
    """A memory size in bytes: a number followed by K/M/G or Ki/Mi/Gi (memory-limits page)."""
    match = _QUANTITY.match(value.strip())
    if not match or match["unit"] not in _MEMORY_UNITS:
        raise _invalid(
            f"template.containers.resources.limits.memory: Invalid value specified for memory: "
            f"'{value}'. The format is a fixed or floating point number followed by a unit: G, M "
            "or K, or Gi, Mi or Ki."
        )
    try:
        return int(Decimal(match["number"]) * _MEMORY_UNITS[match["unit"]])
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only numbers
        raise _invalid(f"Invalid memory '{value}'") from exc


def _size(n: int) -> str:
    return f"{n // Gi}Gi" if n % Gi == 0 else f"{n // Mi}Mi"


def _cpu_text(cpu: Decimal) -> str:
    return f"{cpu:.1f}" if cpu == cpu.to_integral_value() else f"{cpu.normalize()}"


def _cpu_idle(container: run_v2.Container) -> bool:
    """``cpu_idle`` is "true by default", but once ``resources`` is set only an explicit true
    keeps it (run_v2.ResourceRequirements)."""
    return bool(container.resources.cpu_idle) if "resources" in container else True


def memory_bounds(cpu: Decimal, environment: int = 0) -> tuple[int, int]:
    """The (minimum, maximum) memory for ``cpu`` vCPU (services/cpu table)."""
    if cpu < Decimal("0.5"):
        low, high = 128 * Mi, 512 * Mi
    elif cpu < 1:
        low, high = 128 * Mi, 1 * Gi
    else:
        low, high = _WHOLE_CPU_MEMORY[int(cpu)]
    if environment == Gen.EXECUTION_ENVIRONMENT_GEN2:
        low = max(low, 512 * Mi)
    return low, high


def _check_cpu(cpu: Decimal) -> None:
    where = "template.containers.resources.limits.cpu: Invalid value specified for cpu."
    if cpu < Decimal("0.08"):
        raise _invalid(f"{where} The minimum vCPU setting is 0.08 vCPU.")
    if cpu < 1:
        if cpu * 1000 != (cpu * 1000).to_integral_value():
            raise _invalid(f"{where} Values below 1 must be set in increments of 0.001.")
        return
    if cpu != cpu.to_integral_value() or int(cpu) not in _WHOLE_CPU_MEMORY:
        raise _invalid(
            f"{where} Values of 1 or more must be one of 1, 2, 4, 6 or 8 (the maximum is 8 vCPU)."
        )


def validate_template(template: run_v2.RevisionTemplate, service_id: str) -> None:
    """The template rules of the module docstring; raises INVALID_ARGUMENT."""
    if template.revision:
        if not template.revision.startswith(f"{service_id}-"):
            raise _invalid(
                f"template.revision: Revision name '{template.revision}' must begin with the "
                f"Service name followed by a hyphen ('{service_id}-')."
            )
        if not _REVISION_ID.match(template.revision):
            raise _invalid(
                f"template.revision: '{template.revision}' must use only lowercase letters, "
                "numbers and '-', and cannot end with a '-'. Maximum length is 63 characters."
            )
    if not template.containers:
        raise _invalid("template.containers: at least one container is required.")
    environment = int(template.execution_environment)
    total_cpu = Decimal(0)
    all_idle = True
    for index, container in enumerate(template.containers):
        if not container.image:
            raise _invalid(f"template.containers[{index}].image: Required field.")
        limits = container.resources.limits
        cpu = parse_cpu(limits["cpu"]) if "cpu" in limits else DEFAULT_CPU
        memory = parse_memory(limits["memory"]) if "memory" in limits else DEFAULT_MEMORY
        _check_cpu(cpu)
        low, high = memory_bounds(cpu, environment)
        if not low <= memory <= high:
            gen2 = " with gen2 execution environment" if environment == Gen.EXECUTION_ENVIRONMENT_GEN2 else ""
            raise _invalid(
                "template.containers.resources.limits.memory: Invalid value specified for "
                f"container memory{gen2}. For {_cpu_text(cpu)} CPU, memory must be between "
                f"{_size(low)} and {_size(high)} inclusive."
            )
        total_cpu += cpu
        all_idle = all_idle and _cpu_idle(container)
    concurrency = template.max_instance_request_concurrency
    if concurrency < 0 or concurrency > MAX_CONCURRENCY:
        raise _invalid(
            "template.max_instance_request_concurrency: must be between 0 and "
            f"{MAX_CONCURRENCY}, got {concurrency}."
        )
    if total_cpu < 1:
        where = "template.containers.resources.limits.cpu: Invalid value specified for cpu."
        if concurrency > 1:
            raise _invalid(f"{where} Total cpu < 1 is not supported with concurrency > 1.")
        if not all_idle:
            raise _invalid(
                f"{where} Total cpu < 1 is only supported with request-based billing "
                "(resources.cpu_idle = true); instance-based billing needs at least 1 CPU."
            )
        if environment == Gen.EXECUTION_ENVIRONMENT_GEN2:
            raise _invalid(
                f"{where} Total cpu < 1 is not supported with the second generation execution "
                "environment."
            )
    _check_scaling("template.scaling", template.scaling.min_instance_count,
                   template.scaling.max_instance_count)
    if template.service_account:
        _check_service_account(template.service_account)


def _check_scaling(where: str, minimum: int, maximum: int) -> None:
    if minimum < 0:
        raise _invalid(f"{where}.min_instance_count: must be non-negative, got {minimum}.")
    if maximum < 0:
        raise _invalid(f"{where}.max_instance_count: must be non-negative, got {maximum}.")
    if maximum and minimum > maximum:
        raise _invalid(
            f"{where}.min_instance_count: {minimum} must not exceed max_instance_count {maximum}."
        )


def _check_service_account(email: str) -> None:
    local, at, domain = email.partition("@")
    ok = bool(at) and bool(local) and bool(_SA_DOMAIN.match(domain))
    if ok and domain.endswith(".iam.gserviceaccount.com"):
        ok = bool(_SA_ACCOUNT_ID.match(local))
    if not ok:
        raise _invalid(
            f"template.service_account: Invalid service account '{email}': expected the email of "
            "a service account, such as NAME@PROJECT_ID.iam.gserviceaccount.com (NAME: 6-30 "
            "lowercase letters, digits and hyphens)."
        )


def validate_service(service: run_v2.Service, service_id: str) -> None:
    if "template" not in service:
        raise _invalid("template: Required field.")
    validate_template(service.template, service_id)
    ingress = type(service).pb(service).ingress  # the raw number: proto-plus warns on unknowns
    if ingress not in set(Ingress.__members__.values()):  # IntEnum: ints compare
        raise _invalid(f"ingress: Invalid value {ingress} for IngressTraffic.")
    if "scaling" in service:
        _check_scaling("scaling", service.scaling.min_instance_count,
                       service.scaling.max_instance_count)


# ---- the fake ---------------------------------------------------------------------------------

# Fields a caller sets on a Service; everything else is output only (run_v2.Service docs).
_SPEC_FIELDS = (
    "description", "labels", "annotations", "client", "client_version", "ingress",
    "launch_stage", "binary_authorization", "template", "traffic", "scaling",
    "invoker_iam_disabled", "default_uri_disabled", "iap_enabled", "multi_region_settings",
    "custom_audiences", "build_config",
)


@dataclass(frozen=True)
class _Rollout:
    started: float
    revision_id: str
    failure: str | None


@dataclass(frozen=True)
class _Entry:
    service: run_v2.Service  # spec + output fields as of the last write/settle
    revisions: tuple[FakeRevision, ...]
    rollout: _Rollout | None


def _camel_to_snake(path: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", path).lower()


class CloudRunFake:
    """The fake's state and RPCs; see the module docstring for the rules."""

    def __init__(
        self,
        ready_delay: float = 0.2,
        *,
        image_failure: Callable[[str], str | None] | None = None,
        failure_code: grpc.StatusCode = grpc.StatusCode.FAILED_PRECONDITION,
        seed: int | None = None,
    ) -> None:
        self.ready_delay = ready_delay
        self.image_failure = image_failure
        self.failure_code = failure_code
        self.server = FakeServer()
        self.policies = PolicyStore(exists=self._exists)
        self.endpoint = ""
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._failing: dict[str, str] = {}
        self._random = random.Random(seed)
        self.server.add(SERVICE, {**self.methods(), **self.policies.methods()})

    # ---- lifecycle / test helpers --------------------------------------------------------

    def start(self) -> CloudRunFake:
        self.endpoint = self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def client(self) -> run_v2.ServicesClient:
        from .grpc_server import insecure_client

        return insecure_client(run_v2.ServicesClient, self.endpoint)

    def fail_image(self, image: str, detail: str = START_FAILURE) -> None:
        """Revisions created from now on with ``image`` fail to become ready with ``detail``."""
        with self._lock:
            self._failing[image] = detail

    def services(self) -> dict[str, run_v2.Service]:
        """Every service by full name, as GetService would return it now."""
        with self._lock:
            return {name: self._read(name) for name in sorted(self._entries)}

    def revisions(self, service: str) -> list[FakeRevision]:
        """The revisions of ``service`` (full name, or a service id if only one has it), oldest
        first."""
        with self._lock:
            return list(self._entries[self._resolve(service)].revisions)

    def bindings(self, service: str) -> dict[str, set[str]]:
        """role -> members of the service's IAM policy."""
        if "/" not in service:
            with self._lock:
                service = self._resolve(service)
        return self.policies.bindings(service)

    def _resolve(self, service: str) -> str:
        if service in self._entries:
            return service
        matches = [name for name in self._entries if name.endswith(f"/services/{service}")]
        if len(matches) != 1:
            raise KeyError(f"no single service {service!r} (have {sorted(self._entries)})")
        return matches[0]

    def _exists(self, name: str) -> bool:
        with self._lock:
            return name in self._entries

    # ---- RPCs ----------------------------------------------------------------------------

    def methods(self) -> dict[str, Unary]:
        return {
            "CreateService": Unary(run_v2.CreateServiceRequest, operations_pb2.Operation, self.create_service),
            "GetService": Unary(run_v2.GetServiceRequest, run_v2.Service, self.get_service),
            "ListServices": Unary(run_v2.ListServicesRequest, run_v2.ListServicesResponse, self.list_services),
            "UpdateService": Unary(run_v2.UpdateServiceRequest, operations_pb2.Operation, self.update_service),
            "DeleteService": Unary(run_v2.DeleteServiceRequest, operations_pb2.Operation, self.delete_service),
        }

    def create_service(self, request: run_v2.CreateServiceRequest, _: Any = None) -> operations_pb2.Operation:
        match = _PARENT.match(request.parent)
        if not match:
            raise _invalid(f"parent '{request.parent}' must be projects/{{project}}/locations/{{location}}.")
        validate_service_id(request.service_id)
        name = f"{request.parent}/services/{request.service_id}"
        desired = _copy(request.service)
        validate_service(desired, request.service_id)
        with self._lock:
            if name in self._entries:
                raise FakeError(grpc.StatusCode.ALREADY_EXISTS, f"Resource '{request.service_id}' already exists.")
            entry = self._write(name, desired, None)
            if not request.validate_only:
                self._entries[name] = entry
            snapshot = self._view(entry)
        return self._operation(name, entry, snapshot, request.validate_only)

    def get_service(self, request: run_v2.GetServiceRequest, _: Any = None) -> run_v2.Service:
        with self._lock:
            self._require(request.name)
            return self._read(request.name)

    def list_services(self, request: run_v2.ListServicesRequest, _: Any = None) -> run_v2.ListServicesResponse:
        match = _PARENT.match(request.parent)
        if not match:
            raise _invalid(f"parent '{request.parent}' must be projects/{{project}}/locations/{{location}}.")
        project, location = match.groups()
        with self._lock:
            names = [
                name for name in sorted(self._entries)
                if (m := _NAME.match(name)) and m[1] == project and location in ("-", m[2])
            ]
            start = int(request.page_token) if request.page_token else 0
            size = request.page_size or len(names) or 1
            page = names[start:start + size]
            token = str(start + size) if start + size < len(names) else ""
            return run_v2.ListServicesResponse(
                services=[self._read(name) for name in page], next_page_token=token
            )

    def update_service(self, request: run_v2.UpdateServiceRequest, _: Any = None) -> operations_pb2.Operation:
        incoming = request.service
        match = _NAME.match(incoming.name)
        if not match:
            raise _invalid(
                f"service.name '{incoming.name}' must be projects/{{project}}/locations/{{location}}/services/{{service}}."
            )
        name, service_id = incoming.name, match[3]
        paths = [_camel_to_snake(p).split(".")[0] for p in request.update_mask.paths]
        unknown = [p for p in paths if p not in _SPEC_FIELDS]
        if unknown:
            raise _invalid(f"update_mask: unknown or output-only field(s) {unknown}.")
        with self._lock:
            existing = self._entries.get(name)
            if existing is None:
                if not request.allow_missing:
                    raise self._not_found(name)
                validate_service_id(service_id)
                desired = _copy(incoming)
            else:
                existing = self._settle(existing)
                current_etag = existing.service.etag
                if incoming.etag and incoming.etag != current_etag:
                    raise FakeError(
                        grpc.StatusCode.ABORTED,
                        f"Etag mismatch for {name}: the Service changed since it was read "
                        f"(sent {incoming.etag}, current {current_etag}); read it again and retry.",
                    )
                desired = _copy(existing.service)
                for spec_field in paths or _SPEC_FIELDS:
                    if spec_field in incoming:
                        setattr(desired, spec_field, getattr(incoming, spec_field))
                    else:
                        type(desired).pb(desired).ClearField(spec_field)
            validate_service(desired, service_id)
            entry = self._write(name, desired, existing)
            if not request.validate_only:
                self._entries[name] = entry
            snapshot = self._view(entry)
        return self._operation(name, entry, snapshot, request.validate_only)

    def delete_service(self, request: run_v2.DeleteServiceRequest, _: Any = None) -> operations_pb2.Operation:
        with self._lock:
            existing = self._require(request.name)
            if request.etag and request.etag != existing.service.etag:
                raise FakeError(
                    grpc.StatusCode.ABORTED,
                    f"Etag mismatch for {request.name}: sent {request.etag}, current {existing.service.etag}.",
                )
            snapshot = self._read(request.name)
            if not request.validate_only:
                del self._entries[request.name]
                snapshot.delete_time = _now()
        if not request.validate_only:
            self.policies.forget(request.name)
        parent = request.name.rsplit("/services/", 1)[0]
        return self.server.operations.start(parent, lambda _elapsed: snapshot, metadata=snapshot)

    # ---- internals (called with self._lock held, except _operation) ------------------------

    def _not_found(self, name: str) -> FakeError:
        match = _NAME.match(name)
        if not match:
            return _invalid(f"name '{name}' must be projects/{{project}}/locations/{{location}}/services/{{service}}.")
        project, region, service_id = match.groups()
        return FakeError(
            grpc.StatusCode.NOT_FOUND,
            f"Resource '{service_id}' of kind 'SERVICE' in region '{region}' in project '{project}' does not exist.",
        )

    def _require(self, name: str) -> _Entry:
        entry = self._entries.get(name)
        if entry is None:
            raise self._not_found(name)
        return entry

    def _read(self, name: str) -> run_v2.Service:
        entry = self._settle(self._entries[name])
        self._entries[name] = entry
        return self._view(entry)

    def _failure(self, template: run_v2.RevisionTemplate) -> str | None:
        for container in template.containers:
            detail = self._failing.get(container.image)
            if detail is None and self.image_failure is not None:
                detail = self.image_failure(container.image)
            if detail:
                return detail
        return None

    def _write(self, name: str, desired: run_v2.Service, existing: _Entry | None) -> _Entry:
        """The entry after writing ``desired`` (validated) over ``existing`` (settled)."""
        project, region, service_id = _NAME.match(name).groups()  # type: ignore[union-attr]
        now, clock = _now(), time.monotonic()
        service = run_v2.Service()
        for spec_field in _SPEC_FIELDS:
            if spec_field in desired:
                setattr(service, spec_field, getattr(desired, spec_field))
        if not service.ingress:
            service.ingress = Ingress.INGRESS_TRAFFIC_ALL  # type: ignore[assignment]
        if not service.traffic:
            service.traffic = [run_v2.TrafficTarget(
                type_=run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST, percent=100,
            )]
        template = service.template
        revisions = existing.revisions if existing else ()
        if existing is None:
            service.uid, service.create_time, service.generation = str(uuid.uuid4()), now, 1
        else:
            old = existing.service
            service.uid, service.create_time, service.generation = old.uid, old.create_time, old.generation + 1
            for kept in ("observed_generation", "latest_ready_revision", "latest_created_revision", "uri", "urls",
                         "traffic_statuses", "creator"):
                setattr(service, kept, getattr(old, kept))
        service.name, service.update_time = name, now
        # Which revision this write rolls out (an unchanged template creates none).
        by_id = {revision.revision_id: revision for revision in revisions}
        current = existing.service.latest_created_revision.rsplit("/", 1)[-1] if existing else ""
        if existing is not None and current and template == existing.service.template:
            target = by_id[current]
        elif template.revision and template.revision in by_id:
            target = by_id[template.revision]
            if target.template != template:
                raise FakeError(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"Revision named '{template.revision}' with different configuration already exists.",
                )
        else:
            revision_id = template.revision or (
                f"{service_id}-{service.generation:05d}-{''.join(self._random.choices(_SUFFIX_CHARS, k=3))}"
            )
            target = FakeRevision(
                name=f"{name}/revisions/{revision_id}", revision_id=revision_id, service=name,
                generation=service.generation, template=_copy(template),
                ready_at=clock + self.ready_delay, failure=self._failure(template),
            )
            revisions = (*revisions, target)
        service.latest_created_revision = target.name
        service.creator = service.creator or "fake-user@example.com"
        service.last_modifier = "fake-user@example.com"
        service.etag = '"' + hashlib.sha1(f"{service.uid}/{service.generation}".encode()).hexdigest()[:20] + '"'
        rollout = _Rollout(started=clock, revision_id=target.revision_id, failure=target.failure)
        self._mark(service, State.CONDITION_PENDING, reconciling=True)
        return _Entry(service=service, revisions=revisions, rollout=rollout)

    def _settle(self, entry: _Entry) -> _Entry:
        """Apply a rollout whose ``ready_delay`` has passed."""
        rollout = entry.rollout
        if rollout is None or time.monotonic() - rollout.started < self.ready_delay:
            return entry
        service = _copy(entry.service)
        name = service.name
        project, region, service_id = _NAME.match(name).groups()  # type: ignore[union-attr]
        revision = f"{name}/revisions/{rollout.revision_id}"
        if rollout.failure is None:
            service.latest_ready_revision = revision
            service.observed_generation = service.generation
            service.traffic_statuses = [run_v2.TrafficTargetStatus(
                type_=run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST,
                revision=rollout.revision_id, percent=100,
            )]
            if not service.uri:
                digest = hashlib.sha1(project.encode()).digest()
                token = "".join(_SUFFIX_CHARS[b % len(_SUFFIX_CHARS)] for b in digest[:10])
                code = _REGION_CODES.get(region) or "".join(part[0] for part in region.split("-"))[:2]
                number = int.from_bytes(digest[10:16], "big") % 10**12
                service.uri = f"https://{service_id}-{token}-{code}.a.run.app"
                service.urls = [f"https://{service_id}-{number:012d}.{region}.run.app", service.uri]
            self._mark(service, State.CONDITION_SUCCEEDED, reconciling=False)
        else:
            message = f"Revision '{rollout.revision_id}' is not ready and cannot serve traffic. {rollout.failure}"
            self._mark(service, State.CONDITION_FAILED, reconciling=False, message=message,
                       reason=run_v2.Condition.CommonReason.REVISION_FAILED)
        return replace(entry, service=service, rollout=None)

    @staticmethod
    def _mark(service: run_v2.Service, state: int, *, reconciling: bool, message: str = "",
              reason: int | None = None) -> None:
        now = _now()
        ready = run_v2.Condition(type_="Ready", state=state, message=message, last_transition_time=now,
                                 severity=run_v2.Condition.Severity.ERROR if message else 0)
        if reason is not None:
            ready.reason = reason  # type: ignore[assignment]
        service.terminal_condition = ready
        service.conditions = [
            run_v2.Condition(type_="ConfigurationsReady", state=state, message=message, last_transition_time=now),
            run_v2.Condition(type_="RoutesReady", state=state, message=message, last_transition_time=now),
        ]
        service.reconciling = reconciling

    @staticmethod
    def _view(entry: _Entry) -> run_v2.Service:
        return _copy(entry.service)

    def _operation(self, name: str, entry: _Entry, snapshot: run_v2.Service,
                   validate_only: bool) -> operations_pb2.Operation:
        """An operation that finishes when the rollout settles (at once for validate_only)."""
        parent = name.rsplit("/services/", 1)[0]
        rollout = entry.rollout
        if validate_only or rollout is None:
            return self.server.operations.start(parent, lambda _elapsed: snapshot, metadata=snapshot)

        def finish(elapsed: float) -> run_v2.Service | None:
            if elapsed < self.ready_delay:
                return None
            if rollout.failure is not None:
                raise FakeError(
                    self.failure_code,
                    f"Revision '{rollout.revision_id}' is not ready and cannot serve traffic. {rollout.failure}",
                )
            with self._lock:
                return self._read(name) if name in self._entries else snapshot

        return self.server.operations.start(parent, finish, metadata=snapshot)


def start_cloud_run_fake(
    ready_delay: float = 0.2,
    *,
    image_failure: Callable[[str], str | None] | None = None,
    failure_code: grpc.StatusCode = grpc.StatusCode.FAILED_PRECONDITION,
    seed: int | None = None,
) -> CloudRunFake:
    """A started fake on loopback: ``.endpoint``, ``.services()``, ``.revisions(name)``,
    ``.bindings(name)``, ``.fail_image(image)``, ``.stop()``.

    ``image_failure(image)`` returns why a revision with that image fails to start (``None``:
    it starts); it runs under the fake's lock, so it must not call the fake. ``ready_delay`` is
    how long a rollout stays reconciling; ``seed`` fixes the generated revision suffixes.
    """
    return CloudRunFake(ready_delay, image_failure=image_failure, failure_code=failure_code, seed=seed).start()
