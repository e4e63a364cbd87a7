"""The architecture file: pydantic models with the Go anchor's keys, and one validation pass.

The schema is go-cloud-manager's ``MicroserviceArchitecture`` (see
``docs/architecture-file.md``): same keys, same nesting, so a platform team can hand Podium its
file unchanged. What differs is how a file is checked: every problem is collected and reported
at once, each as ``"<path.in.doc>: <what was expected>"``, and a typo'd key is an error naming the
nearest valid key instead of being ignored.

Pure: parsing text is the only thing done here (no file or network I/O).
"""

from __future__ import annotations

import contextlib
import difflib
import re
import types
import typing
from collections.abc import Iterable, Iterator, Mapping
from typing import Annotated, Any, Literal, NoReturn, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)
from pydantic_core import ErrorDetails

from machines.errors import InvalidArchitecture

__all__ = [
    "Architecture",
    "BigQueryDataset",
    "BigQueryTable",
    "CloudResourcesSpec",
    "CloudSchedulerJob",
    "DeploymentSpec",
    "Environment",
    "FirestoreCollection",
    "FirestoreDatabase",
    "GCSBucket",
    "HealthCheckSpec",
    "IamAccess",
    "Lifecycle",
    "LifecycleRule",
    "Lookup",
    "ResourceGroup",
    "RetryPolicy",
    "SecretEnvVar",
    "ServiceManagerSpec",
    "ServiceMapping",
    "ServiceSpec",
    "Subscription",
    "Topic",
    "document_shape_problem",
    "duration_seconds",
    "env_var_problem",
    "format_path",
    "load_architecture",
    "parse_yaml",
    "prune",
    "relative_path_problem",
]

T = TypeVar("T")

LookupMethod = Literal["", "yaml", "env", "db"]
YAML_METHODS: frozenset[str] = frozenset({"", "yaml"})

# ---------------------------------------------------------------------------------------------
# Real GCP naming rules. Each check returns a problem (what was expected) or None.
# ---------------------------------------------------------------------------------------------

_PUBSUB_ID = re.compile(r"^[A-Za-z][A-Za-z0-9\-_.~+%]*$")
_SA_ID = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])$")
_SA_EMAIL = re.compile(r"^(?P<id>[^@]+)@(?P<project>[^@]+)\.iam\.gserviceaccount\.com$")
_CLOUD_RUN = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_PROJECT_ID = re.compile(r"^[a-z][-a-z0-9]{4,28}[a-z0-9]$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9\-_.]*[a-z0-9]$")
_DATASET = re.compile(r"^[A-Za-z0-9_]{1,1024}$")
_SCHEDULER_JOB = re.compile(r"^[A-Za-z0-9_-]{1,500}$")
_ROLE = re.compile(r"^(roles/|projects/[^/\s]+/roles/|organizations/[^/\s]+/roles/)[A-Za-z0-9_.]+$")
_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h|d))+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d)")
_CRON_FIELD = re.compile(r"^[A-Za-z0-9*/,\-?LW#]+$")
_SIMPLE_KEY = re.compile(r"^[A-Za-z0-9_\-]+$")

_DURATION_UNITS: dict[str, float] = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}


def pubsub_id_problem(value: str, kind: str = "topic") -> str | None:
    """Pub/Sub topic and subscription ids: 3–255 chars, a letter first, ``[A-Za-z0-9-_.~+%]``, not ``goog*``."""
    if not 3 <= len(value) <= 255:
        return f"{kind} id {value!r} must be 3 to 255 characters long (it has {len(value)})"
    if not value[0].isascii() or not value[0].isalpha():
        return f"{kind} id {value!r} must start with a letter"
    if not _PUBSUB_ID.match(value):
        return f"{kind} id {value!r} may only contain letters, digits and - _ . ~ + %"
    if value.lower().startswith("goog"):
        return f"{kind} id {value!r} must not start with 'goog'"
    return None


def service_account_problem(value: str) -> str | None:
    """A service account id (6–30 chars) or a full ``id@project.iam.gserviceaccount.com`` email."""
    if "@" in value:
        match = _SA_EMAIL.match(value)
        if not match:
            return (
                f"service account {value!r} must be an account id or an email of the form "
                "'<id>@<project>.iam.gserviceaccount.com'"
            )
        problem = _sa_id_problem(match.group("id"))
        if problem is None:
            problem = project_id_problem(match.group("project"))
        return None if problem is None else f"service account {value!r}: {problem}"
    return _sa_id_problem(value)


def _sa_id_problem(value: str) -> str | None:
    if not 6 <= len(value) <= 30:
        return f"service account id {value!r} must be 6 to 30 characters long (it has {len(value)})"
    if not _SA_ID.match(value):
        return (
            f"service account id {value!r} must be lowercase letters, digits and dashes, "
            "start with a letter and not end with a dash"
        )
    return None


def cloud_run_name_problem(value: str) -> str | None:
    """Cloud Run service names: at most 49 chars, ``^[a-z]([-a-z0-9]*[a-z0-9])?$``."""
    if not 1 <= len(value) <= 49:
        return f"service name {value!r} must be 1 to 49 characters long (it has {len(value)})"
    if not _CLOUD_RUN.match(value):
        return (
            f"service name {value!r} must be lowercase letters, digits and dashes, "
            "start with a letter and not end with a dash (it is a Cloud Run service name)"
        )
    return None


def project_id_problem(value: str) -> str | None:
    """Project ids: 6–30 chars, ``^[a-z][-a-z0-9]{4,28}[a-z0-9]$``."""
    if not _PROJECT_ID.match(value):
        return (
            f"project id {value!r} must be 6 to 30 lowercase letters, digits and dashes, "
            "start with a letter and not end with a dash"
        )
    return None


def bucket_name_problem(value: str) -> str | None:
    """GCS bucket names: 3–63 chars (222 with dots), lowercase, no 'goog' prefix, no 'google'."""
    limit = 222 if "." in value else 63
    if not 3 <= len(value) <= limit:
        return f"bucket name {value!r} must be 3 to {limit} characters long (it has {len(value)})"
    if not _BUCKET.match(value):
        return (
            f"bucket name {value!r} must be lowercase letters, digits, - _ and ., "
            "and start and end with a letter or digit"
        )
    if value.startswith("goog") or "google" in value:
        return f"bucket name {value!r} must not start with 'goog' or contain 'google'"
    return None


def duration_seconds(value: str) -> float:
    """Seconds in a duration string as the anchor writes them (``"600s"``, ``"1h30m"``, ``"7d"``)."""
    if not _DURATION.match(value):
        raise ValueError(f"{value!r} is not a duration such as '600s', '10m', '1h30m' or '7d'")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(value))


def cron_problem(value: str) -> str | None:
    fields = value.split()
    if len(fields) != 5 or not all(_CRON_FIELD.match(f) for f in fields):
        return (
            f"schedule {value!r} must be a unix-cron expression with 5 fields, e.g. '*/5 * * * *'"
        )
    return None


def relative_path_problem(value: str) -> str | None:
    """Service folders (``source_path``, ``buildable_module_path``) stay under the source root:
    no absolute path, no ``..`` component (the handlers also check where a folder resolves)."""
    if "\x00" in value:
        return f"{value!r} contains a NUL character"
    if value.startswith(("/", "\\")):
        return f"{value!r} is an absolute path; it must be relative to the source root"
    if ".." in re.split(r"[/\\]", value):
        return f"{value!r} has a '..' component; it must stay inside the source root"
    return None


# Variables that make a loader or an interpreter load or run code of the variable's choosing:
# a start command must not be able to run anything beyond the service's own code.
_CODE_VARS = frozenset(
    {
        "BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS", "PS4", "PROMPT_COMMAND",
        "NODE_OPTIONS", "NODE_PATH", "NODE_REPL_EXTERNAL_MODULE",
        "PERL5OPT", "PERL5LIB", "PERLLIB", "PERL5DB",
        "RUBYOPT", "RUBYLIB",
        "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS", "CLASSPATH",
        "GCONV_PATH", "GETCONF_DIR", "HOSTALIASES", "LOCPATH", "NLSPATH", "RESOLV_HOST_CONF",
    }
)
_CODE_VAR_PREFIXES = ("LD_", "DYLD_", "BASH_FUNC_")
# PYTHON* is refused but for these, which only tune the interpreter (PYTHONPATH, PYTHONSTARTUP,
# PYTHONHOME, PYTHONUSERBASE, PYTHONWARNINGS, PYTHONBREAKPOINT, ... all import code).
_HARMLESS_PYTHON_VARS = frozenset(
    {
        "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PYTHONHASHSEED", "PYTHONIOENCODING",
        "PYTHONUTF8", "PYTHONFAULTHANDLER", "PYTHONOPTIMIZE", "PYTHONTRACEMALLOC", "PYTHONDEVMODE",
        "PYTHONASYNCIODEBUG", "PYTHONNOUSERSITE", "PYTHONSAFEPATH", "PYTHONCOERCECLOCALE",
        "PYTHONMALLOC", "PYTHONMALLOCSTATS", "PYTHONINTMAXSTRDIGITS", "PYTHONWARNDEFAULTENCODING",
        "PYTHONVERBOSE", "PYTHONDEBUG", "PYTHONLEGACYWINDOWSSTDIO", "PYTHONNODEBUGRANGES",
    }
)


def env_var_problem(name: str) -> str | None:
    """A variable name a service may be given: not empty, no ``=`` or NUL, and not one that
    makes a loader or interpreter run code (``LD_PRELOAD``, ``PYTHONPATH``, ``NODE_OPTIONS``...)."""
    if not name or "=" in name or "\x00" in name:
        return f"variable name {name!r} must be non-empty, without '=' or NUL"
    upper = name.upper()
    if (
        upper in _CODE_VARS
        or upper.startswith(_CODE_VAR_PREFIXES)
        or (upper.startswith("PYTHON") and upper not in _HARMLESS_PYTHON_VARS)
    ):
        return f"variable {name!r} is refused: it makes the dynamic loader or an interpreter load code"
    return None


# ---------------------------------------------------------------------------------------------
# Annotated field types.
# ---------------------------------------------------------------------------------------------


def _scalar_to_str(value: Any) -> Any:
    """YAML scalars given where a string is expected read as strings, as Go's yaml.v3 does."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


def _none_to_dict(value: Any) -> Any:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return {_scalar_to_str(k): v for k, v in value.items()}
    return value


def _none_to_tuple(value: Any) -> Any:
    return () if value is None else value


def _check(problem_of: typing.Callable[[str], str | None]) -> AfterValidator:
    def validate(value: str) -> str:
        problem = problem_of(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    return AfterValidator(validate)


def _not_empty(value: str) -> str:
    if not value:
        raise ValueError("must not be empty")
    return value


def _duration(check: typing.Callable[[float], str | None] | None = None) -> AfterValidator:
    def validate(value: str) -> str:
        seconds = duration_seconds(value)
        if check is not None:
            problem = check(seconds)
            if problem is not None:
                raise ValueError(f"{value!r}: {problem}")
        return value

    return AfterValidator(validate)


def _retention(seconds: float) -> str | None:
    if not 600 <= seconds <= 31 * 86400:
        return "message retention must be between 10 minutes and 31 days"
    return None


def _backoff(seconds: float) -> str | None:
    if not 0 <= seconds <= 600:
        return "a retry backoff must be between 0s and 600s"
    return None


Text = Annotated[str, BeforeValidator(_scalar_to_str)]
Required = Annotated[str, BeforeValidator(_scalar_to_str), AfterValidator(_not_empty)]
Map = Annotated[dict[str, T], BeforeValidator(_none_to_dict)]
Seq = Annotated[tuple[T, ...], BeforeValidator(_none_to_tuple)]
TopicId = Annotated[
    str, BeforeValidator(_scalar_to_str), _check(lambda v: pubsub_id_problem(v, "topic"))
]
SubscriptionId = Annotated[
    str, BeforeValidator(_scalar_to_str), _check(lambda v: pubsub_id_problem(v, "subscription"))
]
ServiceName = Annotated[str, BeforeValidator(_scalar_to_str), _check(cloud_run_name_problem)]
ServiceAccount = Annotated[str, BeforeValidator(_scalar_to_str), _check(service_account_problem)]
BucketName = Annotated[str, BeforeValidator(_scalar_to_str), _check(bucket_name_problem)]
DatasetName = Annotated[
    str,
    BeforeValidator(_scalar_to_str),
    _check(
        lambda v: (
            None
            if _DATASET.match(v)
            else f"dataset name {v!r} must be 1 to 1024 letters, digits and underscores"
        )
    ),
]


def _duration_input(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError(f"expected a duration string such as '600s', got {_describe(value)}")
    return value


Duration = Annotated[str, BeforeValidator(_duration_input), _duration()]
RetentionDuration = Annotated[str, BeforeValidator(_duration_input), _duration(_retention)]
BackoffDuration = Annotated[str, BeforeValidator(_duration_input), _duration(_backoff)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# ---------------------------------------------------------------------------------------------
# Links.
# ---------------------------------------------------------------------------------------------


class Lookup(_Model):
    """How a service finds a linked resource: ``yaml``/empty → resources.yaml, ``env`` → a variable."""

    key: Text = ""
    method: LookupMethod = ""


class ServiceMapping(_Model):
    """A link from a resource to a service: ``{name, lookup: {key, method}}``."""

    name: Required
    lookup: Lookup = Field(default_factory=Lookup)


class ResourceIO(_Model):
    producers: Seq[ServiceMapping] = ()
    consumers: Seq[ServiceMapping] = ()


# ---------------------------------------------------------------------------------------------
# Services.
# ---------------------------------------------------------------------------------------------


class SecretEnvVar(_Model):
    """An env var read from Secret Manager: ``name`` in the container, ``value_from`` the secret id."""

    name: Annotated[str, BeforeValidator(_scalar_to_str), AfterValidator(_not_empty), _check(env_var_problem)]
    value_from: Required


class DeploymentSpec(_Model):
    source_path: Annotated[
        str, BeforeValidator(_scalar_to_str), AfterValidator(_not_empty), _check(relative_path_problem)
    ]
    buildable_module_path: Annotated[str, BeforeValidator(_scalar_to_str), _check(relative_path_problem)] = ""
    config_templates: Map[Text] = Field(default_factory=dict)  # accepted, not acted on
    image: Text = ""
    image_repo: Text = ""
    service_url: Text = ""
    region: Text = ""
    platform: Text = ""  # accepted, not acted on
    cpu: Text = ""
    memory: Text = ""
    min_instances: Annotated[int, Field(ge=0)] | None = None
    max_instances: Annotated[int, Field(ge=0)] | None = None
    environment_vars: Map[Text] = Field(default_factory=dict)
    secret_environment_vars: Seq[SecretEnvVar] = ()

    @field_validator("environment_vars")
    @classmethod
    def _environment_vars(cls, value: dict[str, str]) -> dict[str, str]:
        problems = [p for p in (env_var_problem(k) for k in value) if p is not None]
        problems += [f"the value of {k!r} contains a NUL character" for k, v in value.items() if "\x00" in v]
        if problems:
            raise ValueError("; ".join(problems))
        return value


class HealthCheckSpec(_Model):
    """Accepted, not acted on (the local backend probes ``GET /healthz``)."""

    port: int | None = None
    path: Text = ""


class ServiceSpec(_Model):
    name: ServiceName
    description: Text = ""
    service_account: ServiceAccount
    deployment: DeploymentSpec | None = None
    dependencies: Seq[Required] = ()
    health_check: HealthCheckSpec | None = None  # accepted, not acted on
    metadata: Map[Any] = Field(default_factory=dict)  # accepted, not acted on


class ServiceManagerSpec(ServiceSpec):
    """The ServiceDirector: a service plus the topics it is commanded on and reports to."""

    command_topic: ServiceMapping | None = None
    completion_topic: ServiceMapping | None = None


# ---------------------------------------------------------------------------------------------
# Resources.
# ---------------------------------------------------------------------------------------------


class IamAccess(_Model):
    """An explicit grant on a resource. ``type: service`` (or empty) names a service,
    ``type: service-account`` a service account."""

    name: Required
    role: Annotated[
        str,
        _check(
            lambda v: (
                None
                if _ROLE.match(v)
                else f"role {v!r} must look like 'roles/pubsub.viewer' or 'projects/<p>/roles/<id>'"
            )
        ),
    ]
    type: Literal["", "service", "service-account"] = ""


class LifecycleAction(_Model):
    type: Text = ""


class LifecycleCondition(_Model):
    age_in_days: int | None = None


class LifecycleRule(_Model):
    action: LifecycleAction = Field(default_factory=LifecycleAction)
    condition: LifecycleCondition = Field(default_factory=LifecycleCondition)


class CloudResource(_Model):
    name: Required
    description: Text = ""
    labels: Map[Text] = Field(default_factory=dict)
    iam_access_policy: Seq[IamAccess] = ()
    lifecycle_rules: Seq[LifecycleRule] = ()
    teardown_protection: bool = False


class Topic(CloudResource):
    name: TopicId
    producer_service: ServiceMapping | None = None


class RetryPolicy(_Model):
    minimum_backoff: BackoffDuration | None = None
    maximum_backoff: BackoffDuration | None = None


class Subscription(CloudResource):
    name: SubscriptionId
    topic: Required
    consumer_service: ServiceMapping | None = None
    ack_deadline_seconds: int | None = None
    message_retention_duration: RetentionDuration | None = None
    retry_policy: RetryPolicy | None = None

    @field_validator("ack_deadline_seconds")
    @classmethod
    def _ack_deadline(cls, value: int | None) -> int | None:
        if value is not None and value != 0 and not 10 <= value <= 600:
            raise ValueError(f"{value} is out of range: an ack deadline is 10 to 600 seconds")
        return value


class BigQueryDataset(CloudResource):
    name: DatasetName
    location: Text = ""


class BigQueryTable(CloudResource, ResourceIO):
    dataset: DatasetName
    schema_type: Text = ""
    schema_import_path: Text = ""
    time_partitioning_field: Text = ""
    time_partitioning_type: Literal["", "HOUR", "DAY", "MONTH", "YEAR"] = ""
    time_partitioning_expiration: Duration | None = None
    clustering_fields: Seq[Text] = ()
    expiration: Duration | None = None


class GCSBucket(CloudResource, ResourceIO):
    name: BucketName
    location: Text = ""
    storage_class: Text = ""
    versioning_enabled: bool = False


class FirestoreDatabase(CloudResource, ResourceIO):
    location_id: Text = ""
    type: Literal["", "NATIVE", "DATASTORE_MODE"] = ""


class FirestoreCollection(CloudResource, ResourceIO):
    database: Text = ""


class CloudSchedulerJob(CloudResource):
    name: Annotated[
        str,
        BeforeValidator(_scalar_to_str),
        _check(
            lambda v: (
                None
                if _SCHEDULER_JOB.match(v)
                else f"job name {v!r} must be 1 to 500 letters, digits, '-' and '_'"
            )
        ),
    ]
    schedule: Annotated[str, BeforeValidator(_scalar_to_str), _check(cron_problem)]
    time_zone: Text = ""
    target_service: Text = ""
    service_account: ServiceAccount | None = None
    message_body: Text = ""


class CloudResourcesSpec(_Model):
    topics: Seq[Topic] = ()
    subscriptions: Seq[Subscription] = ()
    bigquery_datasets: Seq[BigQueryDataset] = ()
    bigquery_tables: Seq[BigQueryTable] = ()
    gcs_buckets: Seq[GCSBucket] = ()
    firestore_databases: Seq[FirestoreDatabase] = ()
    firestore_collections: Seq[FirestoreCollection] = ()
    cloud_scheduler_jobs: Seq[CloudSchedulerJob] = ()


class Lifecycle(_Model):
    strategy: Literal["permanent", "ephemeral"] = "permanent"
    keep_resources_on_test: bool = False  # accepted, not acted on


class ResourceGroup(_Model):
    """A dataflow: services and the resources that link them."""

    name: Required
    description: Text = ""
    services: Map[ServiceSpec] = Field(default_factory=dict)
    resources: CloudResourcesSpec = Field(default_factory=CloudResourcesSpec)
    lifecycle: Lifecycle | None = None

    @property
    def ephemeral(self) -> bool:
        return self.lifecycle is not None and self.lifecycle.strategy == "ephemeral"


class Environment(_Model):
    """An entry of ``deployment_environments`` (accepted, not acted on)."""

    name: Text = ""
    project_id: Text = ""
    labels: Map[Text] = Field(default_factory=dict)
    location: Text = ""
    region: Text = ""
    teardown_protection: bool = False


_ENVIRONMENT_KEYS = ("name", "project_id", "region", "location", "labels", "teardown_protection")


class Architecture(_Model):
    """The root of the architecture file (``MicroserviceArchitecture`` in the anchor)."""

    name: Text = ""
    project_id: Annotated[
        str,
        BeforeValidator(_scalar_to_str),
        _check(lambda v: None if v == "" else project_id_problem(v)),
    ] = ""
    region: Text = ""
    location: Text = ""
    labels: Map[Text] = Field(default_factory=dict)
    teardown_protection: bool = False
    environment: Any = None
    service_manager_spec: ServiceManagerSpec
    dataflows: Map[ResourceGroup] = Field(default_factory=dict)
    deployment_environments: Map[Environment] = Field(default_factory=dict)

    @field_validator("environment", mode="before")
    @classmethod
    def _environment(cls, value: Any) -> Any:
        if value is None or isinstance(value, str | Mapping):
            if not value:
                return None
            return dict(value) if isinstance(value, Mapping) else value
        raise ValueError(f"expected a string or a mapping, got {_describe(value)}")

    # -- constructors ---------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Any, source: str = "<architecture>") -> Architecture:
        """Validate a parsed document (YAML or JSON). Raises ``InvalidArchitecture`` with every problem."""
        if not isinstance(data, Mapping):
            what = (
                "the document is empty"
                if data is None
                else f"expected a mapping, got {_describe(data)}"
            )
            raise InvalidArchitecture([f"(root): {what}"], source=source)
        shape = document_shape_problem(data)
        if shape is not None:
            raise InvalidArchitecture([f"(root): {shape}"], source=source)
        normalized = _normalize(data)
        problems: list[str] = []
        arch: Architecture | None = None
        try:
            arch = cls.model_validate(normalized)
        except ValidationError as exc:
            problems.extend(_translate(err) for err in exc.errors(include_url=False))
        problems.extend(_cross_check(normalized))
        unique = list(dict.fromkeys(problems))
        if unique or arch is None:
            raise InvalidArchitecture(unique or ["(root): invalid architecture"], source=source)
        return arch

    # -- views ----------------------------------------------------------------------------------

    @property
    def director(self) -> ServiceManagerSpec:
        return self.service_manager_spec

    @property
    def infra_dataflow_name(self) -> str:
        """The dataflow hydration generates for the ServiceDirector's topics."""
        return f"{self.service_manager_spec.name}-infra"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe, without empty or default-empty fields; ``from_dict`` reads it back unchanged."""
        result = prune(self.model_dump(mode="json"))
        return result if isinstance(result, dict) else {}

    def to_yaml(self) -> str:
        return yaml.safe_dump(
            self.to_dict(), sort_keys=True, default_flow_style=False, allow_unicode=True
        )


# Maps whose entries are the user's own data: kept verbatim (an empty env var value is a value).
_VERBATIM_KEYS = frozenset(
    {"environment_vars", "labels", "metadata", "config_templates", "environment"}
)


def prune(value: Any) -> Any:
    """Drop ``None``, ``""``, ``False``, empty lists and empty mappings (Go's ``omitempty``).

    Entries of user maps (``environment_vars``, ``labels``, ``metadata``, ...) are kept as they are.
    """
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            pv = v if k in _VERBATIM_KEYS else prune(v)
            if pv is None or pv is False or pv == "" or pv == [] or pv == {}:
                continue
            out[k] = pv
        return out
    if isinstance(value, list | tuple):
        return [prune(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# Loading.
# ---------------------------------------------------------------------------------------------


# Bounds on what one architecture may cost to read: a real file is a few KiB and a few hundred
# nodes; these are far above that and far below what would hurt the daemon.
MAX_ARCHITECTURE_BYTES = 1024 * 1024
MAX_NODES = 50_000
MAX_DEPTH = 64


def _refuse(problem: str, event: yaml.Event) -> NoReturn:
    """Stop composing with a YAML error pointing at ``event`` (reported like any parse error)."""
    mark: Any = event.start_mark  # the C and pure-Python loaders have distinct Mark types
    raise yaml.composer.ComposerError(None, None, problem, mark)


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans (``yes``/``on`` stay strings, as in Go's yaml.v3),
    timestamps kept as strings, duplicate keys refused, and no anchors or aliases (an alias is
    how a 2 KB "billion laughs" document expands to gigabytes), at most ``MAX_NODES`` nodes
    nested at most ``MAX_DEPTH`` deep."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._nodes = 0
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            _refuse(f"found alias *{event.anchor}: anchors and aliases are not supported (write the value out)", event)
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            _refuse(f"found anchor &{anchor}: anchors and aliases are not supported (write the value out)", event)
        self._nodes += 1
        if self._nodes > MAX_NODES:
            _refuse(f"more than {MAX_NODES} nodes: too large for an architecture", event)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                _refuse(f"nested more than {MAX_DEPTH} levels deep", event)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                duplicate = False
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            with contextlib.suppress(TypeError):
                seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


_Loader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp)
        for tag, regexp in resolvers
        if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def parse_yaml(text: str, source: str = "<architecture>") -> Any:
    """Parse YAML text; a syntax error becomes ``InvalidArchitecture`` with its line and column.

    Text over ``MAX_ARCHITECTURE_BYTES`` is refused unread; anchors and aliases are refused. Any
    other failure of the parser (a 5000-digit integer, a recursion limit) is an
    ``InvalidArchitecture`` too: what a user sent never becomes a crash or a redelivery.
    """
    size = len(text) if len(text) > MAX_ARCHITECTURE_BYTES else len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_ARCHITECTURE_BYTES:
        raise InvalidArchitecture(
            [f"(yaml): the text is {size} bytes; an architecture may have at most {MAX_ARCHITECTURE_BYTES}"],
            source=source,
        )
    try:
        return yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = (
            f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "somewhere"
        )
        what = exc.problem or "malformed YAML"
        if exc.context:
            what += f" ({exc.context})"
        raise InvalidArchitecture([f"(yaml) {where}: {what}"], source=source) from exc
    except yaml.YAMLError as exc:
        raise InvalidArchitecture([f"(yaml): {exc}"], source=source) from exc
    except (RecursionError, ValueError, TypeError, OverflowError) as exc:
        raise InvalidArchitecture([f"(yaml): cannot be read: {_short_error(exc)}"], source=source) from exc


def _short_error(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def document_shape_problem(data: Any) -> str | None:
    """A parsed document (YAML or JSON) too big, too deep or circular to validate safely.

    Iterative (a deep document must not exhaust the stack here), and bounded: it stops at the
    first limit it crosses, so a circular structure ends as "too many nodes".
    """
    nodes, chars = 0, 0
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            return f"more than {MAX_NODES} values (too large, or circular)"
        if depth > MAX_DEPTH:
            return f"nested more than {MAX_DEPTH} levels deep"
        if isinstance(value, Mapping):
            for k, v in value.items():
                chars += len(k) if isinstance(k, str) else 0
                stack.append((v, depth + 1))
        elif isinstance(value, list | tuple):
            stack.extend((v, depth + 1) for v in value)
        elif isinstance(value, str):
            chars += len(value)
        if chars > MAX_ARCHITECTURE_BYTES:
            return f"more than {MAX_ARCHITECTURE_BYTES} characters of keys and values"
    return None


def load_architecture(text: str, source: str = "<architecture>") -> Architecture:
    """Parse and validate an architecture file. Raises ``InvalidArchitecture`` listing every problem."""
    return Architecture.from_dict(parse_yaml(text, source), source=source)


def _normalize(data: Mapping[Any, Any]) -> dict[str, Any]:
    """Fill the names the anchor infers from map keys; copy an old-style ``environment`` mapping
    into the root. Never fails: problems are found afterwards, with their paths."""
    out = {_scalar_to_str(k): v for k, v in data.items()}
    env = out.get("environment")
    if isinstance(env, Mapping):
        for key in _ENVIRONMENT_KEYS:
            if key in env and key not in out:
                out[key] = env[key]
    dataflows = out.get("dataflows")
    if isinstance(dataflows, Mapping):
        new_dataflows: dict[str, Any] = {}
        for raw_key, dataflow in dataflows.items():
            key = _scalar_to_str(raw_key)
            if isinstance(dataflow, Mapping):
                dataflow = dict(dataflow)
                if dataflow.get("name") is None:
                    dataflow["name"] = key
                services = dataflow.get("services")
                if isinstance(services, Mapping):
                    new_services: dict[str, Any] = {}
                    for raw_skey, service in services.items():
                        skey = _scalar_to_str(raw_skey)
                        if isinstance(service, Mapping) and service.get("name") is None:
                            service = {**service, "name": skey}
                        new_services[skey] = service
                    dataflow["services"] = new_services
            new_dataflows[key] = dataflow
        out["dataflows"] = new_dataflows
    return out


# ---------------------------------------------------------------------------------------------
# Problems: paths and messages.
# ---------------------------------------------------------------------------------------------


def format_path(loc: Iterable[str | int]) -> str:
    """``("dataflows", "tracer", "resources", "topics", 0, "name")`` → ``dataflows.tracer.resources.topics[0].name``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _SIMPLE_KEY.match(str(part)):
            out += f".{part}" if out else str(part)
        else:
            out += f"[{str(part)!r}]"
    return out or "(root)"


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a number ({value})"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"a string ({shown!r})"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def _unwrap(tp: Any) -> Any:
    """Strip ``Annotated`` and ``X | None`` down to the type that holds the keys."""
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _model_at(loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The model class a document path points into (to list its valid keys)."""
    tp: Any = Architecture
    for part in loc:
        tp = _unwrap(tp)
        origin = typing.get_origin(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(str(part))
            if field is None:
                return None
            tp = field.annotation
        elif origin is dict:
            tp = typing.get_args(tp)[1]
        elif origin in (tuple, list):
            tp = typing.get_args(tp)[0]
        else:
            return None
    tp = _unwrap(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _translate(err: ErrorDetails) -> str:
    loc = tuple(err["loc"])
    kind = err["type"]
    value = err.get("input")
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        valid = sorted(model.model_fields) if model is not None else []
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.6)
        if close:
            return f"{format_path(loc)}: unknown key; did you mean {close[0]!r}?"
        hint = f" (expected one of: {', '.join(valid)})" if valid else ""
        return f"{format_path(loc)}: unknown key{hint}"
    if kind == "missing":
        return f"{format_path(loc)}: required field is missing"
    if kind == "value_error":
        return f"{format_path(loc)}: {ctx.get('error', err['msg'])}"
    if kind == "literal_error":
        return f"{format_path(loc)}: expected one of {ctx.get('expected')}, got {_describe(value)}"
    expected = {
        "string_type": "a string",
        "int_type": "an integer",
        "int_parsing": "an integer",
        "int_from_float": "a whole number",
        "bool_type": "true or false",
        "bool_parsing": "true or false",
        "dict_type": "a mapping",
        "model_type": "a mapping",
        "model_attributes_type": "a mapping",
        "list_type": "a list",
        "tuple_type": "a list",
    }.get(kind)
    if expected is not None:
        return f"{format_path(loc)}: expected {expected}, got {_describe(value)}"
    msg = err["msg"]
    return f"{format_path(loc)}: {msg[:1].lower()}{msg[1:]}"


# ---------------------------------------------------------------------------------------------
# Cross-references, on the raw (normalized) document, so they run even when the schema fails.
# ---------------------------------------------------------------------------------------------

Loc = tuple[str | int, ...]


def _as_map(value: Any) -> Mapping[Any, Any]:
    return value if isinstance(value, Mapping) else {}


def _items(value: Any) -> Iterator[tuple[int, Mapping[Any, Any]]]:
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            if isinstance(item, Mapping):
                yield i, item


def _name(value: Any) -> str | None:
    value = _scalar_to_str(value)
    return value if isinstance(value, str) and value else None


def _well_formed(value: Any, container: type) -> bool:
    """``None`` or a ``container`` whose entries (values of a map, items of a list) are mappings."""
    if value is None:
        return True
    if container is list:
        return isinstance(value, list | tuple) and all(isinstance(v, Mapping) for v in value)
    return isinstance(value, Mapping) and all(isinstance(v, Mapping) for v in value.values())


def _suggest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


_SHARED_RESOURCE_KINDS = ("bigquery_datasets", "firestore_databases")
_RESOURCE_KIND_LABEL = {
    "topics": "topic",
    "subscriptions": "subscription",
    "bigquery_datasets": "dataset",
    "bigquery_tables": "table",
    "gcs_buckets": "bucket",
    "firestore_databases": "Firestore database",
    "firestore_collections": "Firestore collection",
    "cloud_scheduler_jobs": "scheduler job",
}


def _resource_key(kind: str, item: Mapping[Any, Any]) -> str | None:
    name = _name(item.get("name"))
    if name is None:
        return None
    if kind == "bigquery_tables":
        return f"{_name(item.get('dataset')) or ''}.{name}"
    if kind == "firestore_collections":
        return f"{_name(item.get('database')) or '(default)'}/{name}"
    return name


def _cross_check(doc: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []

    def problem(loc: Loc, what: str) -> None:
        problems.append(f"{format_path(loc)}: {what}")

    sd = _as_map(doc.get("service_manager_spec"))
    sd_name = _name(sd.get("name"))
    infra = f"{sd_name}-infra" if sd_name else None
    dataflows = _as_map(doc.get("dataflows"))

    # Services: keys equal names, unique across dataflows and distinct from the director.
    # When a list or map of declarations is itself malformed, links into it cannot be judged:
    # those checks are skipped rather than adding consequences of the schema problem.
    services_known = True
    topics_known = True
    services: dict[str, Loc] = {}
    if sd_name:
        services[sd_name] = ("service_manager_spec",)
    if not isinstance(doc.get("dataflows"), Mapping | None):
        services_known = topics_known = False
    for df_key, df in dataflows.items():
        if not isinstance(df, Mapping):
            services_known = topics_known = False
            continue
        if not _well_formed(df.get("services"), Mapping):
            services_known = False
        if not _well_formed(_as_map(df.get("resources")).get("topics"), list) or not isinstance(
            df.get("resources"), Mapping | None
        ):
            topics_known = False
        explicit = _name(df.get("name"))
        if explicit is not None and explicit != df_key:
            problem(
                ("dataflows", df_key, "name"),
                f"name {explicit!r} does not match its key {df_key!r} (a dataflow's name is its key)",
            )
        for s_key, svc in _as_map(df.get("services")).items():
            if not isinstance(svc, Mapping):
                services_known = False
                continue
            loc: Loc = ("dataflows", df_key, "services", s_key)
            s_name = _name(svc.get("name"))
            if s_name is not None and s_name != s_key:
                problem(
                    (*loc, "name"),
                    f"name {s_name!r} does not match its key {s_key!r} (a service's name is its key)",
                )
                services.setdefault(str(s_key), loc)  # links may use either name meanwhile
            if svc.get("deployment") is None:
                problem(
                    (*loc, "deployment"),
                    "required field is missing (every dataflow service needs a deployment with a source_path)",
                )
            name = s_name or str(s_key)
            if name in services and services[name] != loc:
                first = services[name]
                where = (
                    "is the ServiceDirector's name"
                    if first == ("service_manager_spec",)
                    else f"is already declared at {format_path(first)}"
                )
                problem(loc, f"service {name!r} {where}")
            else:
                services[name] = loc

    # Declared resources, unique across dataflows (datasets and Firestore databases may be shared).
    declared: dict[str, dict[str, Loc]] = {kind: {} for kind in _RESOURCE_KIND_LABEL}
    for df_key, df in dataflows.items():
        if not isinstance(df, Mapping):
            continue
        resources = _as_map(df.get("resources"))
        for kind, label in _RESOURCE_KIND_LABEL.items():
            for i, item in _items(resources.get(kind)):
                key = _resource_key(kind, item)
                if key is None:
                    continue
                loc = ("dataflows", df_key, "resources", kind, i, "name")
                seen = declared[kind]
                if key in seen and (kind not in _SHARED_RESOURCE_KINDS or seen[key][1] == df_key):
                    problem(loc, f"{label} {key!r} is already declared at {format_path(seen[key])}")
                else:
                    seen.setdefault(key, loc)

    # The director's topics: generated into "<director>-infra", so not declared elsewhere.
    topics = declared["topics"]
    director_topics: set[str] = set()
    for field in ("command_topic", "completion_topic"):
        mapping = _as_map(sd.get(field))
        t_name = _name(mapping.get("name"))
        if t_name is None:
            continue
        director_topics.add(t_name)
        id_problem = pubsub_id_problem(t_name, "topic")
        if id_problem is not None:
            problem(("service_manager_spec", field, "name"), id_problem)
        if t_name in topics and topics[t_name][1] != infra:
            problem(
                ("service_manager_spec", field, "name"),
                f"topic {t_name!r} is also declared at {format_path(topics[t_name])}; the director's "
                f"topics are generated into the {infra!r} dataflow and must not be declared elsewhere",
            )
        if field == "command_topic":
            problem_text = pubsub_id_problem(f"{t_name}-sub", "subscription")
            if problem_text is not None and pubsub_id_problem(t_name) is None:
                problem(
                    ("service_manager_spec", field, "name"),
                    f"the generated command subscription: {problem_text}",
                )
            sub_loc = declared["subscriptions"].get(f"{t_name}-sub")
            if sub_loc is not None and sub_loc[1] != infra:
                problem(
                    sub_loc,
                    f"subscription '{t_name}-sub' is the director's command subscription, "
                    f"generated into the {infra!r} dataflow; choose another name",
                )

    known_topics = set(topics) | director_topics

    def check_service(loc: Loc, name: Any, what: str = "service") -> None:
        n = _name(name)
        if n is not None and n not in services and services_known:
            problem(loc, f"{what} {n!r} is not declared in any dataflow{_suggest(n, services)}")

    def check_mapping(loc: Loc, mapping: Any) -> None:
        if isinstance(mapping, Mapping):
            check_service((*loc, "name"), mapping.get("name"))

    # Links: producers, consumers, subscriptions' topics, dependencies, scheduler targets, grants.
    sd_deps = sd.get("dependencies")
    if isinstance(sd_deps, list):
        for i, dep in enumerate(sd_deps):
            check_service(("service_manager_spec", "dependencies", i), dep)
    for df_key, df in dataflows.items():
        if not isinstance(df, Mapping):
            continue
        for s_key, svc in _as_map(df.get("services")).items():
            deps = svc.get("dependencies") if isinstance(svc, Mapping) else None
            if isinstance(deps, list):
                for i, dep in enumerate(deps):
                    check_service(("dataflows", df_key, "services", s_key, "dependencies", i), dep)
        resources = _as_map(df.get("resources"))
        base: Loc = ("dataflows", df_key, "resources")
        for i, topic in _items(resources.get("topics")):
            check_mapping((*base, "topics", i, "producer_service"), topic.get("producer_service"))
        for i, sub in _items(resources.get("subscriptions")):
            check_mapping(
                (*base, "subscriptions", i, "consumer_service"), sub.get("consumer_service")
            )
            t_name = _name(sub.get("topic"))
            if t_name is not None and t_name not in known_topics and topics_known:
                problem(
                    (*base, "subscriptions", i, "topic"),
                    f"topic {t_name!r} is not declared in any dataflow{_suggest(t_name, known_topics)}",
                )
        for kind in (
            "bigquery_tables",
            "gcs_buckets",
            "firestore_databases",
            "firestore_collections",
        ):
            for i, item in _items(resources.get(kind)):
                for role in ("producers", "consumers"):
                    for j, link in _items(item.get(role)):
                        check_service((*base, kind, i, role, j, "name"), link.get("name"))
        for i, job in _items(resources.get("cloud_scheduler_jobs")):
            target = _name(job.get("target_service"))
            if target is None:
                problem(
                    (*base, "cloud_scheduler_jobs", i, "target_service"),
                    "required field is missing",
                )
            else:
                check_service((*base, "cloud_scheduler_jobs", i, "target_service"), target)
            job_name = _name(job.get("name"))
            if job.get("service_account") is None and job_name is not None:
                default_problem = _sa_id_problem(f"{job_name}-sa")
                if default_problem is not None:
                    problem(
                        (*base, "cloud_scheduler_jobs", i, "service_account"),
                        f"no service_account given and the default is not usable: {default_problem}",
                    )
        for kind in _RESOURCE_KIND_LABEL:
            for i, item in _items(resources.get(kind)):
                for j, grant in _items(item.get("iam_access_policy")):
                    loc = (*base, kind, i, "iam_access_policy", j, "name")
                    if grant.get("type") == "service-account":
                        n = _name(grant.get("name"))
                        sa_problem = None if n is None else service_account_problem(n)
                        if sa_problem is not None:
                            problem(loc, sa_problem)
                    else:
                        check_service(loc, grant.get("name"))
    return problems
