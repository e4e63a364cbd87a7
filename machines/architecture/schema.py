"""The architecture file's root, its dataflows and services: pydantic models with the Go anchor's keys.

The schema is go-cloud-manager's ``MicroserviceArchitecture`` (see
``docs/architecture-file.md``): same keys, same nesting, so a platform team can hand Podium its
file unchanged. What differs is how a file is checked: ``Architecture.from_dict`` collects every
problem and reports them at once, each as ``"<path.in.doc>: <what was expected>"``, and a typo'd
key is an error naming the nearest valid key instead of being ignored.

This module holds the services (``ServiceSpec``, ``DeploymentSpec``, the director's
``ServiceManagerSpec``), the dataflows (``ResourceGroup``) and the root (``Architecture``); the
resources a dataflow declares are in ``cloud_resources``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

import yaml
from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator

from machines.architecture.cloud_resources import CloudResourcesSpec, ServiceMapping
from machines.architecture.cloud_run_sizes import sizing_problem
from machines.architecture.cross_checks import cross_check
from machines.architecture.document import document_shape_problem, normalize, prune
from machines.architecture.fields import (
    EnvVarName,
    Map,
    Model,
    ModulePath,
    ProjectId,
    Required,
    Seq,
    ServiceAccount,
    ServiceName,
    SourcePath,
    Text,
)
from machines.architecture.naming import env_var_problem, preflight_program_problem
from machines.architecture.problems import describe, translate
from machines.errors import InvalidArchitecture

__all__ = [
    "Architecture",
    "DeploymentSpec",
    "Environment",
    "HealthCheckSpec",
    "Lifecycle",
    "PreflightSpec",
    "ResourceGroup",
    "SecretEnvVar",
    "ServiceManagerSpec",
    "ServiceSpec",
    "config_templates_problems",
]

# ---------------------------------------------------------------------------------------------
# Services.
# ---------------------------------------------------------------------------------------------


class SecretEnvVar(Model):
    """An env var read from Secret Manager: ``name`` in the container, ``value_from`` the secret id."""

    name: EnvVarName
    value_from: Required


MAX_PREFLIGHT_TIMEOUT_SECONDS = 3600


def _command_input(value: Any) -> Any:
    if isinstance(value, str):
        raise ValueError(
            f"expected a list of strings (the program and its arguments, no shell), "
            f"e.g. [npm, test]; got {describe(value)}"
        )
    return () if value is None else value


def _whole_seconds(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"expected a whole number of seconds, got {describe(value)}")
    return value


class PreflightSpec(Model):
    """How a service's own tests run before it is built (Podium's key; the anchor always ran
    ``go test ./...``). Without ``command`` the runner is chosen from the folder: ``go.mod`` →
    ``go test ./...``, Python → pytest (``handlers/preflight.py``)."""

    command: Annotated[tuple[Required, ...], BeforeValidator(_command_input)] = ()
    timeout_seconds: Annotated[
        int, BeforeValidator(_whole_seconds), Field(ge=1, le=MAX_PREFLIGHT_TIMEOUT_SECONDS)
    ] | None = None
    skip: bool = False

    @field_validator("command")
    @classmethod
    def _no_nul(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any("\x00" in arg for arg in value):
            raise ValueError("an argument contains a NUL character")
        problem = preflight_program_problem(value[0]) if value else None
        if problem:
            raise ValueError(problem)
        return value


# The files configgen generates (and removes when stale): a template may not be copied onto one.
RESERVED_CONFIG_NAMES = ("resources.yaml", "services.yaml")


def _template_path_problem(value: str) -> str | None:
    if not value:
        return "is empty"
    if "\x00" in value:
        return f"{value!r} contains a NUL character"
    if value.startswith(("/", "\\")) or re.match(r"[A-Za-z]:[/\\]", value):
        return f"{value!r} is an absolute path; it must be relative to the service folder"
    if ".." in re.split(r"[/\\]", value):
        return f"{value!r} has a '..' component; it must stay inside the service folder"
    if PurePosixPath(value) == PurePosixPath("."):
        return f"{value!r} is the service folder itself, not a file in it"
    return None


def config_templates_problems(templates: Mapping[str, str]) -> list[str]:
    """What is wrong with a ``deployment.config_templates`` map (src → dest, both relative to the
    service folder), checked without touching the disk: each path relative, without ``..``, naming
    a file; no dest named ``resources.yaml``/``services.yaml`` (at any depth: Podium generates and
    removes those); no two entries with the same dest; no dest that is also an entry's src. Where
    the paths resolve (symlinks, a missing src) is checked when the files are copied
    (``handlers.configgen``)."""
    problems: list[str] = []
    srcs = {PurePosixPath(src): src for src in templates if _template_path_problem(src) is None}
    dests: dict[PurePosixPath, str] = {}
    for src, dest in templates.items():
        entry = f"entry {src!r} -> {dest!r}"
        bad = [f"{entry}: {role} {problem}" for role, value in (("src", src), ("dest", dest))
               if (problem := _template_path_problem(value)) is not None]
        if bad:
            problems.extend(bad)
            continue
        target = PurePosixPath(dest)
        if target.name.casefold() in RESERVED_CONFIG_NAMES:
            problems.append(f"{entry}: dest {dest!r} is named like a file Podium generates "
                            f"({' or '.join(RESERVED_CONFIG_NAMES)}); choose another name")
        elif target in dests:
            problems.append(f"{entry}: dest {dest!r} is also the dest of entry {dests[target]!r}")
        elif target in srcs:
            problems.append(f"{entry}: dest {dest!r} is also the src of entry {srcs[target]!r}; "
                            "a copy must not overwrite what a copy reads")
        dests.setdefault(target, src)
    return problems


class DeploymentSpec(Model):
    source_path: SourcePath
    buildable_module_path: ModulePath = ""
    config_templates: Map[Text] = Field(default_factory=dict)  # src → dest, copied by configgen
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
    preflight: PreflightSpec | None = None  # Podium's: how this service's tests run (or skip: true)

    @model_validator(mode="after")
    def _cloud_run_sizes(self) -> DeploymentSpec:
        problem = sizing_problem(self.cpu, self.memory)
        if problem:
            raise ValueError(problem)
        return self

    @field_validator("config_templates")
    @classmethod
    def _config_templates(cls, value: dict[str, str]) -> dict[str, str]:
        problems = config_templates_problems(value)
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @field_validator("environment_vars")
    @classmethod
    def _environment_vars(cls, value: dict[str, str]) -> dict[str, str]:
        problems = [p for p in (env_var_problem(k) for k in value) if p is not None]
        problems += [f"the value of {k!r} contains a NUL character" for k, v in value.items() if "\x00" in v]
        if problems:
            raise ValueError("; ".join(problems))
        return value


class HealthCheckSpec(Model):
    """Accepted, not acted on (the local backend probes ``GET /healthz``)."""

    port: int | None = None
    path: Text = ""


class ServiceSpec(Model):
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

    @model_validator(mode="after")
    def _director_cpu(self) -> ServiceManagerSpec:
        if self.deployment is not None:
            problem = sizing_problem(self.deployment.cpu, self.deployment.memory, director=True)
            if problem:
                raise ValueError(problem)
        return self


# ---------------------------------------------------------------------------------------------
# Dataflows and the root.
# ---------------------------------------------------------------------------------------------


class Lifecycle(Model):
    strategy: Literal["permanent", "ephemeral"] = "permanent"
    keep_resources_on_test: bool = False  # accepted, not acted on


class ResourceGroup(Model):
    """A dataflow: services and the resources that link them."""

    name: Required
    description: Text = ""
    services: Map[ServiceSpec] = Field(default_factory=dict)
    resources: CloudResourcesSpec = Field(default_factory=CloudResourcesSpec)
    lifecycle: Lifecycle | None = None

    @property
    def ephemeral(self) -> bool:
        return self.lifecycle is not None and self.lifecycle.strategy == "ephemeral"


class Environment(Model):
    """An entry of ``deployment_environments`` (accepted, not acted on)."""

    name: Text = ""
    project_id: Text = ""
    labels: Map[Text] = Field(default_factory=dict)
    location: Text = ""
    region: Text = ""
    teardown_protection: bool = False


class Architecture(Model):
    """The root of the architecture file (``MicroserviceArchitecture`` in the anchor)."""

    name: Text = ""
    project_id: ProjectId = ""
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
        raise ValueError(f"expected a string or a mapping, got {describe(value)}")

    # -- constructors ---------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Any, source: str = "<architecture>") -> Architecture:
        """Validate a parsed document (YAML or JSON). Raises ``InvalidArchitecture`` with every problem."""
        if not isinstance(data, Mapping):
            what = (
                "the document is empty"
                if data is None
                else f"expected a mapping, got {describe(data)}"
            )
            raise InvalidArchitecture([f"(root): {what}"], source=source)
        shape = document_shape_problem(data)
        if shape is not None:
            raise InvalidArchitecture([f"(root): {shape}"], source=source)
        normalized = normalize(data)
        problems: list[str] = []
        arch: Architecture | None = None
        try:
            arch = cls.model_validate(normalized)
        except ValidationError as exc:
            problems.extend(translate(err, Architecture) for err in exc.errors(include_url=False))
        problems.extend(cross_check(normalized))
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
        result = prune(self.model_dump(mode="json", by_alias=True))
        return result if isinstance(result, dict) else {}

    def to_yaml(self) -> str:
        return yaml.safe_dump(
            self.to_dict(), sort_keys=True, default_flow_style=False, allow_unicode=True
        )
