"""Field types the models are built from: pydantic ``Annotated`` types and the base model.

Each type bundles how YAML input is read (a scalar where a string is expected reads as a string,
as Go's yaml.v3 does; ``null`` reads as an empty map or list) with the naming rule it must meet,
so a model declares ``name: TopicId`` and the check comes with it. ``Model`` is the frozen base
every model derives from: an unknown key is an error, never silently ignored.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict

from machines.architecture.naming import (
    bucket_name_problem,
    cloud_run_name_problem,
    cron_problem,
    dataset_name_problem,
    duration_seconds,
    env_var_problem,
    project_id_problem,
    pubsub_id_problem,
    relative_path_problem,
    role_problem,
    scheduler_job_name_problem,
    service_account_problem,
)
from machines.architecture.problems import describe

__all__ = [
    "BackoffDuration",
    "BucketName",
    "CronSchedule",
    "DatasetName",
    "Duration",
    "EnvVarName",
    "Map",
    "Model",
    "ModulePath",
    "ProjectId",
    "Required",
    "RetentionDuration",
    "RoleName",
    "SchedulerJobName",
    "Seq",
    "ServiceAccount",
    "ServiceName",
    "SourcePath",
    "SubscriptionId",
    "Text",
    "TopicId",
    "scalar_to_str",
]

T = TypeVar("T")


def scalar_to_str(value: Any) -> Any:
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
        return {scalar_to_str(k): v for k, v in value.items()}
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


def _duration_input(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError(f"expected a duration string such as '600s', got {describe(value)}")
    return value


def _project_id_or_empty(value: str) -> str | None:
    return None if value == "" else project_id_problem(value)


# Plain values.
Text = Annotated[str, BeforeValidator(scalar_to_str)]
Required = Annotated[str, BeforeValidator(scalar_to_str), AfterValidator(_not_empty)]
Map = Annotated[dict[str, T], BeforeValidator(_none_to_dict)]
Seq = Annotated[tuple[T, ...], BeforeValidator(_none_to_tuple)]

# Names Google Cloud puts rules on.
TopicId = Annotated[
    str, BeforeValidator(scalar_to_str), _check(lambda v: pubsub_id_problem(v, "topic"))
]
SubscriptionId = Annotated[
    str, BeforeValidator(scalar_to_str), _check(lambda v: pubsub_id_problem(v, "subscription"))
]
ServiceName = Annotated[str, BeforeValidator(scalar_to_str), _check(cloud_run_name_problem)]
ServiceAccount = Annotated[str, BeforeValidator(scalar_to_str), _check(service_account_problem)]
BucketName = Annotated[str, BeforeValidator(scalar_to_str), _check(bucket_name_problem)]
DatasetName = Annotated[str, BeforeValidator(scalar_to_str), _check(dataset_name_problem)]
SchedulerJobName = Annotated[
    str, BeforeValidator(scalar_to_str), _check(scheduler_job_name_problem)
]
CronSchedule = Annotated[str, BeforeValidator(scalar_to_str), _check(cron_problem)]
RoleName = Annotated[str, _check(role_problem)]  # a number here is "expected a string", not read
ProjectId = Annotated[str, BeforeValidator(scalar_to_str), _check(_project_id_or_empty)]
"""A project id, or ``""`` for none given."""

# What a service is given: its folders and its variables.
SourcePath = Annotated[
    str, BeforeValidator(scalar_to_str), AfterValidator(_not_empty), _check(relative_path_problem)
]
ModulePath = Annotated[str, BeforeValidator(scalar_to_str), _check(relative_path_problem)]
EnvVarName = Annotated[
    str, BeforeValidator(scalar_to_str), AfterValidator(_not_empty), _check(env_var_problem)
]

# Durations as the anchor writes them ("600s", "1h30m").
Duration = Annotated[str, BeforeValidator(_duration_input), _duration()]
RetentionDuration = Annotated[str, BeforeValidator(_duration_input), _duration(_retention)]
BackoffDuration = Annotated[str, BeforeValidator(_duration_input), _duration(_backoff)]


class Model(BaseModel):
    """Base of every model: frozen, and an unknown key is an error (``extra="forbid"``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
