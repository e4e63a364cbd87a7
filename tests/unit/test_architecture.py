"""The architecture model: the anchor's keys, and every problem reported at once with its path."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from machines.architecture import (
    Architecture,
    cloud_run_name_problem,
    duration_seconds,
    format_path,
    load_architecture,
    project_id_problem,
    pubsub_id_problem,
    service_account_problem,
)
from machines.errors import InvalidArchitecture, PodiumError
from tests.architectures import rich_yaml

TESTDATA = Path(__file__).resolve().parents[2] / "testdata" / "architecture.yaml"


def base() -> dict[str, Any]:
    """The testdata architecture as plain data, to break one thing at a time."""
    data = yaml.safe_load(TESTDATA.read_text())
    assert isinstance(data, dict)
    return copy.deepcopy(data)


def problems_of(data: Any) -> list[str]:
    with pytest.raises(InvalidArchitecture) as info:
        Architecture.from_dict(data, source="test")
    return info.value.problems


def problems_of_yaml(text: str) -> list[str]:
    with pytest.raises(InvalidArchitecture) as info:
        load_architecture(text, source="test.yaml")
    return info.value.problems


def tracer(data: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = data["dataflows"]["tracer"]
    return result


# ---------------------------------------------------------------------------------------------
# The good file.
# ---------------------------------------------------------------------------------------------


def test_testdata_loads() -> None:
    arch = load_architecture(TESTDATA.read_text(), source=str(TESTDATA))
    assert arch.name == "podium-demo"
    assert arch.project_id == "podium-local"
    assert arch.director.name == "director"
    assert arch.infra_dataflow_name == "director-infra"
    flow = arch.dataflows["tracer"]
    assert flow.name == "tracer"  # taken from the key
    assert set(flow.services) == {"publisher", "subscriber"}
    assert flow.services["publisher"].name == "publisher"  # taken from the key
    assert flow.services["publisher"].dependencies == ("director",)
    assert flow.services["publisher"].deployment is not None
    assert flow.services["publisher"].deployment.environment_vars == {
        "PUBLISH_INTERVAL_SECONDS": "0.5"
    }
    assert flow.resources.subscriptions[0].ack_deadline_seconds == 20
    assert flow.ephemeral


def test_models_are_frozen() -> None:
    arch = load_architecture(TESTDATA.read_text())
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen-instance ValidationError
        arch.name = "other"  # type: ignore[misc]


def test_to_dict_round_trips() -> None:
    arch = load_architecture(TESTDATA.read_text())
    again = Architecture.from_dict(arch.to_dict())
    assert again == arch
    assert load_architecture(arch.to_yaml()) == arch


def test_from_dict_accepts_json_shaped_data() -> None:
    arch = Architecture.from_dict(base(), source="start command")
    assert arch.dataflows["tracer"].services["subscriber"].service_account == "subscriber-sa"


def test_invalid_architecture_is_a_podium_error_naming_the_source() -> None:
    with pytest.raises(InvalidArchitecture) as info:
        load_architecture("name: [", source="my.yaml")
    assert isinstance(info.value, PodiumError)
    assert info.value.source == "my.yaml"
    assert info.value.message.startswith("my.yaml: 1 problem(s):")
    assert not info.value.retryable


# ---------------------------------------------------------------------------------------------
# Malformed YAML and the wrong document shape.
# ---------------------------------------------------------------------------------------------


def test_malformed_yaml_reports_line_and_column() -> None:
    text = "name: demo\nservice_manager_spec:\n  name: director\n  service_account: [sd\n"
    (problem,) = problems_of_yaml(text)
    assert problem.startswith("(yaml) line ")
    assert "column" in problem


def test_yaml_mapping_value_error_position() -> None:
    (problem,) = problems_of_yaml("name: a: b\n")
    # libyaml's wording, or the pure-Python parser's where PyYAML has no libyaml
    assert problem in ("(yaml) line 1, column 8: mapping values are not allowed in this context",
                       "(yaml) line 1, column 8: mapping values are not allowed here")


def test_duplicate_yaml_key_is_an_error() -> None:
    text = TESTDATA.read_text().replace(
        "      subscriber:\n", "      publisher:\n        name: publisher\n      subscriber:\n", 1
    )
    (problem,) = problems_of_yaml(text)
    assert "duplicate key 'publisher'" in problem
    assert problem.startswith("(yaml) line ")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "(root): the document is empty"),
        ("- a\n- b\n", "(root): expected a mapping, got a list"),
        ("just a string", "(root): expected a mapping, got a string ('just a string')"),
    ],
)
def test_root_must_be_a_mapping(text: str, expected: str) -> None:
    assert problems_of_yaml(text) == [expected]


# ---------------------------------------------------------------------------------------------
# Schema violations.
# ---------------------------------------------------------------------------------------------


def test_missing_required_fields() -> None:
    data = base()
    del data["service_manager_spec"]["service_account"]
    del tracer(data)["services"]["subscriber"]["deployment"]["source_path"]
    del tracer(data)["services"]["publisher"]["service_account"]
    found = problems_of(data)
    assert "service_manager_spec.service_account: required field is missing" in found
    assert (
        "dataflows.tracer.services.subscriber.deployment.source_path: required field is missing"
        in found
    )
    assert "dataflows.tracer.services.publisher.service_account: required field is missing" in found


def test_service_manager_spec_is_required() -> None:
    data = base()
    del data["service_manager_spec"]
    assert "service_manager_spec: required field is missing" in problems_of(data)


def test_dataflow_service_needs_a_deployment() -> None:
    data = base()
    del tracer(data)["services"]["subscriber"]["deployment"]
    assert problems_of(data) == [
        "dataflows.tracer.services.subscriber.deployment: required field is missing "
        "(every dataflow service needs a deployment with a source_path)"
    ]


def test_director_deployment_is_optional() -> None:
    data = base()
    del data["service_manager_spec"]["deployment"]
    assert Architecture.from_dict(data).director.deployment is None


def test_empty_required_string() -> None:
    data = base()
    data["service_manager_spec"]["deployment"]["source_path"] = ""
    assert problems_of(data) == ["service_manager_spec.deployment.source_path: must not be empty"]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda d: d.__setitem__("dataflows", ["tracer"]),
            "dataflows: expected a mapping, got a list",
        ),
        (
            lambda d: tracer(d)["resources"].__setitem__("topics", {"name": "x"}),
            "dataflows.tracer.resources.topics: expected a list, got a mapping",
        ),
        (
            lambda d: tracer(d)["resources"]["subscriptions"][0].__setitem__(
                "ack_deadline_seconds", "soon"
            ),
            "dataflows.tracer.resources.subscriptions[0].ack_deadline_seconds: "
            "expected an integer, got a string ('soon')",
        ),
        (
            lambda d: d.__setitem__("teardown_protection", "maybe"),
            "teardown_protection: expected true or false, got a string ('maybe')",
        ),
        (
            lambda d: tracer(d)["services"]["publisher"].__setitem__("dependencies", "director"),
            "dataflows.tracer.services.publisher.dependencies: expected a list, got a string ('director')",
        ),
        (
            lambda d: tracer(d)["resources"]["topics"][0].__setitem__(
                "producer_service", "publisher"
            ),
            "dataflows.tracer.resources.topics[0].producer_service: expected a mapping, got a string ('publisher')",
        ),
        (
            lambda d: d.__setitem__("environment", 3),
            "environment: expected a string or a mapping, got an integer (3)",
        ),
        (
            lambda d: tracer(d).__setitem__("lifecycle", {"strategy": "forever"}),
            "dataflows.tracer.lifecycle.strategy: expected one of 'permanent' or 'ephemeral', "
            "got a string ('forever')",
        ),
        (
            lambda d: tracer(d)["resources"]["subscriptions"][0].__setitem__(
                "ack_deadline_seconds", 5
            ),
            "dataflows.tracer.resources.subscriptions[0].ack_deadline_seconds: "
            "5 is out of range: an ack deadline is 10 to 600 seconds",
        ),
    ],
)
def test_wrong_types(mutate: Any, expected: str) -> None:
    data = base()
    mutate(data)
    assert problems_of(data) == [expected]


def test_lookup_method_must_be_known() -> None:
    data = base()
    tracer(data)["resources"]["topics"][0]["producer_service"]["lookup"]["method"] = "ymal"
    assert problems_of(data) == [
        "dataflows.tracer.resources.topics[0].producer_service.lookup.method: "
        "expected one of '', 'yaml', 'env' or 'db', got a string ('ymal')"
    ]


# ---------------------------------------------------------------------------------------------
# Typo'd keys.
# ---------------------------------------------------------------------------------------------


def test_typo_key_names_path_and_nearest_key() -> None:
    text = TESTDATA.read_text().replace(
        "        service_account: publisher-sa\n        deployment:",
        "        service_account: publisher-sa\n        deploymnet:",
    )
    found = problems_of_yaml(text)
    assert (
        "dataflows.tracer.services.publisher.deploymnet: unknown key; did you mean 'deployment'?"
        in found
    )
    # ...and the deployment it was meant to be is then missing, reported in the same pass.
    assert any(p.startswith("dataflows.tracer.services.publisher.deployment:") for p in found)


@pytest.mark.parametrize(
    ("where", "typo", "expected"),
    [
        ((), "projet_id", "projet_id: unknown key; did you mean 'project_id'?"),
        (
            ("service_manager_spec",),
            "service_acount",
            "service_manager_spec.service_acount: unknown key; did you mean 'service_account'?",
        ),
        (
            ("dataflows", "tracer", "resources"),
            "topcis",
            "dataflows.tracer.resources.topcis: unknown key; did you mean 'topics'?",
        ),
        (
            ("dataflows", "tracer", "resources", "subscriptions", 0),
            "ack_deadline_second",
            "dataflows.tracer.resources.subscriptions[0].ack_deadline_second: unknown key; "
            "did you mean 'ack_deadline_seconds'?",
        ),
        (
            ("dataflows", "tracer", "resources", "topics", 0, "producer_service", "lookup"),
            "methd",
            "dataflows.tracer.resources.topics[0].producer_service.lookup.methd: unknown key; "
            "did you mean 'method'?",
        ),
    ],
)
def test_typo_keys_everywhere(where: tuple[Any, ...], typo: str, expected: str) -> None:
    data = base()
    node: Any = data
    for part in where:
        node = node[part]
    node[typo] = "x"
    assert expected in problems_of(data)


def test_unknown_key_without_close_match_lists_valid_keys() -> None:
    data = base()
    tracer(data)["lifecycle"]["zzz"] = 1
    (problem,) = problems_of(data)
    assert problem == (
        "dataflows.tracer.lifecycle.zzz: unknown key (expected one of: keep_resources_on_test, strategy)"
    )


def test_accepted_but_unused_keys_are_silent() -> None:
    data = base()
    data["deployment_environments"] = {"prod": {"name": "prod", "project_id": "prod-project"}}
    data["environment"] = "test"
    service = tracer(data)["services"]["publisher"]
    service["health_check"] = {"port": 8080, "path": "/healthz"}
    service["metadata"] = {"team": "core", "tier": 1}
    service["deployment"]["platform"] = "gcp-cloud-run"
    service["deployment"]["service_url"] = ""
    tracer(data)["lifecycle"]["keep_resources_on_test"] = True
    tracer(data)["resources"]["topics"][0]["producer_service"]["lookup"]["method"] = "db"
    tracer(data)["resources"]["topics"][0]["lifecycle_rules"] = [
        {"action": {"type": "Delete"}, "condition": {"age_in_days": 3}}
    ]
    arch = Architecture.from_dict(data)
    assert arch.environment == "test"
    assert arch.deployment_environments["prod"].project_id == "prod-project"


def test_old_style_environment_mapping_fills_the_root() -> None:
    data = base()
    env = {k: data.pop(k) for k in ("name", "project_id", "region")}
    data["environment"] = env
    arch = Architecture.from_dict(data)
    assert (arch.name, arch.project_id, arch.region) == (
        "podium-demo",
        "podium-local",
        "europe-west1",
    )


def test_yaml_scalars_read_as_go_would() -> None:
    text = (
        TESTDATA.read_text()
        .replace(
            'PUBLISH_INTERVAL_SECONDS: "0.5"',
            "PUBLISH_INTERVAL_SECONDS: 0.5\n            DEBUG: yes\n            ON_DATE: 2024-01-02",
        )
        .replace(
            "          buildable_module_path: subscriber",
            "          buildable_module_path: subscriber\n          cpu: 2",
        )
    )
    arch = load_architecture(text)
    flow = arch.dataflows["tracer"]
    deployment = flow.services["publisher"].deployment
    assert deployment is not None
    assert deployment.environment_vars == {
        "PUBLISH_INTERVAL_SECONDS": "0.5",
        "DEBUG": "yes",  # YAML 1.2: not a boolean
        "ON_DATE": "2024-01-02",  # not a date object
    }
    sub_deployment = flow.services["subscriber"].deployment
    assert sub_deployment is not None and sub_deployment.cpu == "2"


# ---------------------------------------------------------------------------------------------
# Dangling links.
# ---------------------------------------------------------------------------------------------


def test_subscription_to_unknown_topic() -> None:
    data = base()
    tracer(data)["resources"]["subscriptions"][0]["topic"] = "nope"
    assert problems_of(data) == [
        "dataflows.tracer.resources.subscriptions[0].topic: topic 'nope' is not declared in any dataflow"
    ]


def test_subscription_to_unknown_topic_suggests_close_name() -> None:
    data = base()
    tracer(data)["resources"]["subscriptions"][0]["topic"] = "tracer-topc"
    assert problems_of(data) == [
        "dataflows.tracer.resources.subscriptions[0].topic: topic 'tracer-topc' is not declared "
        "in any dataflow; did you mean 'tracer-topic'?"
    ]


def test_subscription_to_director_topic_is_fine() -> None:
    data = base()
    tracer(data)["resources"]["subscriptions"].append(
        {"name": "watch-completions", "topic": "director-completions"}
    )
    Architecture.from_dict(data)


def test_producer_to_unknown_service() -> None:
    data = base()
    tracer(data)["resources"]["topics"][0]["producer_service"]["name"] = "ghost"
    assert problems_of(data) == [
        "dataflows.tracer.resources.topics[0].producer_service.name: "
        "service 'ghost' is not declared in any dataflow"
    ]


def test_consumer_to_unknown_service() -> None:
    data = base()
    tracer(data)["resources"]["subscriptions"][0]["consumer_service"]["name"] = "subscriber2"
    assert problems_of(data) == [
        "dataflows.tracer.resources.subscriptions[0].consumer_service.name: "
        "service 'subscriber2' is not declared in any dataflow; did you mean 'subscriber'?"
    ]


def test_dependency_to_unknown_service() -> None:
    data = base()
    tracer(data)["services"]["publisher"]["dependencies"] = ["director", "direktor"]
    assert problems_of(data) == [
        "dataflows.tracer.services.publisher.dependencies[1]: "
        "service 'direktor' is not declared in any dataflow; did you mean 'director'?"
    ]


def test_resource_io_and_scheduler_links() -> None:
    data = base()
    tracer(data)["resources"]["gcs_buckets"] = [
        {
            "name": "demo-bucket",
            "producers": [{"name": "publisher"}],
            "consumers": [{"name": "nobody"}],
        }
    ]
    tracer(data)["resources"]["cloud_scheduler_jobs"] = [
        {"name": "tick", "schedule": "* * * * *", "target_service": "missing"},
        {"name": "tk", "schedule": "* * * * *"},
    ]
    assert problems_of(data) == [
        "dataflows.tracer.resources.gcs_buckets[0].consumers[0].name: "
        "service 'nobody' is not declared in any dataflow",
        "dataflows.tracer.resources.cloud_scheduler_jobs[0].target_service: "
        "service 'missing' is not declared in any dataflow",
        "dataflows.tracer.resources.cloud_scheduler_jobs[1].target_service: required field is missing",
        "dataflows.tracer.resources.cloud_scheduler_jobs[1].service_account: no service_account "
        "given and the default is not usable: service account id 'tk-sa' must be 6 to 30 "
        "characters long (it has 5)",
    ]


def test_iam_access_policy_names_a_service_or_an_account() -> None:
    data = base()
    tracer(data)["resources"]["topics"][0]["iam_access_policy"] = [
        {"name": "subscriber", "role": "roles/pubsub.viewer", "type": "service"},
        {"name": "auditor-account", "role": "roles/pubsub.viewer", "type": "service-account"},
        {"name": "nobody", "role": "roles/pubsub.viewer"},
        {"name": "Bad", "role": "roles/pubsub.viewer", "type": "service-account"},
        {"name": "subscriber", "role": "pubsub.viewer"},
    ]
    found = problems_of(data)
    assert found == [
        "dataflows.tracer.resources.topics[0].iam_access_policy[4].role: role 'pubsub.viewer' must "
        "look like 'roles/pubsub.viewer' or 'projects/<p>/roles/<id>'",
        "dataflows.tracer.resources.topics[0].iam_access_policy[2].name: "
        "service 'nobody' is not declared in any dataflow",
        "dataflows.tracer.resources.topics[0].iam_access_policy[3].name: service account id 'Bad' "
        "must be 6 to 30 characters long (it has 3)",
    ]


# ---------------------------------------------------------------------------------------------
# Names: the real GCP rules.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("ab", "must be 3 to 255 characters long"),
        ("a" * 256, "must be 3 to 255 characters long"),
        ("1topic", "must start with a letter"),
        ("-topic", "must start with a letter"),
        ("my topic", "may only contain letters, digits and - _ . ~ + %"),
        ("topic/x", "may only contain"),
        ("googtopic", "must not start with 'goog'"),
        ("GOOG-topic", "must not start with 'goog'"),
    ],
)
def test_pubsub_id_rules(value: str, fragment: str) -> None:
    problem = pubsub_id_problem(value)
    assert problem is not None and fragment in problem
    data = base()
    tracer(data)["resources"]["topics"][0]["name"] = value
    tracer(data)["resources"]["subscriptions"][0]["topic"] = value
    (found,) = problems_of(data)
    assert found.startswith("dataflows.tracer.resources.topics[0].name: topic id ")
    assert fragment in found


@pytest.mark.parametrize("value", ["abc", "a-b_c.d~e+f%g", "A" * 255, "Topic-1"])
def test_pubsub_id_valid(value: str) -> None:
    assert pubsub_id_problem(value) is None


def test_subscription_names_checked_too() -> None:
    data = base()
    tracer(data)["resources"]["subscriptions"][0]["name"] = "goog-sub"
    assert problems_of(data) == [
        "dataflows.tracer.resources.subscriptions[0].name: subscription id 'goog-sub' must not "
        "start with 'goog'"
    ]


def test_director_topic_names_checked() -> None:
    data = base()
    data["service_manager_spec"]["command_topic"]["name"] = "cm"
    assert problems_of(data) == [
        "service_manager_spec.command_topic.name: topic id 'cm' must be 3 to 255 characters long (it has 2)"
    ]


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("abc", "must be 6 to 30 characters long"),
        ("a" * 31, "must be 6 to 30 characters long"),
        ("Publisher-sa", "must be lowercase letters"),
        ("1publisher", "must be lowercase letters"),
        ("publisher-", "must be lowercase letters"),
        ("pub_sa_acct", "must be lowercase letters"),
        ("me@gmail.com", "must be an account id or an email"),
        ("ab@proj-123.iam.gserviceaccount.com", "must be 6 to 30"),
        ("publisher@P.iam.gserviceaccount.com", "project id 'P'"),
    ],
)
def test_service_account_rules(value: str, fragment: str) -> None:
    problem = service_account_problem(value)
    assert problem is not None and fragment in problem
    data = base()
    tracer(data)["services"]["publisher"]["service_account"] = value
    (found,) = problems_of(data)
    assert found.startswith("dataflows.tracer.services.publisher.service_account: ")
    assert fragment in found


@pytest.mark.parametrize(
    "value", ["abcdef", "a" * 30, "pub-sa-1", "publisher@my-project.iam.gserviceaccount.com"]
)
def test_service_account_valid(value: str) -> None:
    assert service_account_problem(value) is None


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("a" * 50, "must be 1 to 49 characters long"),
        ("Publisher", "must be lowercase letters"),
        ("pub_lisher", "must be lowercase letters"),
        ("publisher-", "must be lowercase letters"),
        ("1publisher", "must be lowercase letters"),
    ],
)
def test_cloud_run_name_rules(value: str, fragment: str) -> None:
    problem = cloud_run_name_problem(value)
    assert problem is not None and fragment in problem
    data = base()
    svc = tracer(data)["services"].pop("subscriber")
    svc["name"] = value
    tracer(data)["services"][value] = svc
    tracer(data)["resources"]["subscriptions"][0]["consumer_service"]["name"] = value
    (found,) = problems_of(data)
    assert found.startswith(f"{format_path(('dataflows', 'tracer', 'services', value, 'name'))}: ")
    assert fragment in found


@pytest.mark.parametrize("value", ["a", "a" * 49, "pub-1"])
def test_cloud_run_name_valid(value: str) -> None:
    assert cloud_run_name_problem(value) is None


def test_director_name_is_a_cloud_run_name() -> None:
    data = base()
    data["service_manager_spec"]["name"] = "Director"
    tracer(data)["services"]["publisher"]["dependencies"] = []
    (found,) = problems_of(data)
    assert found.startswith("service_manager_spec.name: service name 'Director' must be lowercase")


@pytest.mark.parametrize("value", ["abc", "Bad_Project", "my-project-", "1project", "a" * 31])
def test_project_id_rules(value: str) -> None:
    assert project_id_problem(value) is not None
    data = base()
    data["project_id"] = value
    (found,) = problems_of(data)
    assert found.startswith(f"project_id: project id {value!r} must be 6 to 30")


@pytest.mark.parametrize("value", ["podium-local", "abcdef", "a" * 30])
def test_project_id_valid(value: str) -> None:
    assert project_id_problem(value) is None


def test_bucket_and_dataset_names() -> None:
    data = base()
    tracer(data)["resources"]["gcs_buckets"] = [
        {"name": "Bad_Bucket"},
        {"name": "my-google-bucket"},
    ]
    tracer(data)["resources"]["bigquery_datasets"] = [{"name": "bad-dataset"}]
    found = problems_of(data)
    assert len(found) == 3
    assert found[0].startswith("dataflows.tracer.resources.bigquery_datasets[0].name: dataset name")
    assert found[1].startswith(
        "dataflows.tracer.resources.gcs_buckets[0].name: bucket name 'Bad_Bucket'"
    )
    assert found[2].endswith("must not start with 'goog' or contain 'google'")


def test_generated_command_subscription_name_checked() -> None:
    data = base()
    data["service_manager_spec"]["command_topic"]["name"] = "c" * 253
    (found,) = problems_of(data)
    assert found.startswith(
        "service_manager_spec.command_topic.name: the generated command subscription"
    )


# ---------------------------------------------------------------------------------------------
# Duplicates and key/name mismatches.
# ---------------------------------------------------------------------------------------------


def other_dataflow() -> dict[str, Any]:
    return {
        "services": {
            "publisher": {
                "service_account": "publisher-sa",
                "deployment": {"source_path": ".", "buildable_module_path": "other"},
            }
        },
        "resources": {
            "topics": [{"name": "tracer-topic"}],
            "subscriptions": [{"name": "tracer-sub", "topic": "tracer-topic"}],
        },
    }


def test_duplicates_across_dataflows() -> None:
    data = base()
    data["dataflows"]["other"] = other_dataflow()
    assert problems_of(data) == [
        "dataflows.other.services.publisher: service 'publisher' is already declared at "
        "dataflows.tracer.services.publisher",
        "dataflows.other.resources.topics[0].name: topic 'tracer-topic' is already declared at "
        "dataflows.tracer.resources.topics[0].name",
        "dataflows.other.resources.subscriptions[0].name: subscription 'tracer-sub' is already "
        "declared at dataflows.tracer.resources.subscriptions[0].name",
    ]


def test_duplicate_topic_in_one_dataflow() -> None:
    data = base()
    tracer(data)["resources"]["topics"].append({"name": "tracer-topic"})
    assert problems_of(data) == [
        "dataflows.tracer.resources.topics[1].name: topic 'tracer-topic' is already declared at "
        "dataflows.tracer.resources.topics[0].name"
    ]


def test_service_named_like_the_director() -> None:
    data = base()
    tracer(data)["services"]["director"] = {
        "service_account": "other-sa",
        "deployment": {"source_path": "."},
    }
    assert problems_of(data) == [
        "dataflows.tracer.services.director: service 'director' is the ServiceDirector's name"
    ]


def test_shared_datasets_are_allowed_across_dataflows() -> None:
    data = base()
    tracer(data)["resources"]["bigquery_datasets"] = [{"name": "shared"}]
    data["dataflows"]["other"] = {"resources": {"bigquery_datasets": [{"name": "shared"}]}}
    Architecture.from_dict(data)


def test_director_topic_declared_in_a_dataflow() -> None:
    data = base()
    tracer(data)["resources"]["topics"].append({"name": "director-commands"})
    (found,) = problems_of(data)
    assert found.startswith(
        "service_manager_spec.command_topic.name: topic 'director-commands' is also declared at "
        "dataflows.tracer.resources.topics[1].name"
    )


def test_dataflow_key_name_mismatch() -> None:
    data = base()
    tracer(data)["name"] = "tracr"
    assert problems_of(data) == [
        "dataflows.tracer.name: name 'tracr' does not match its key 'tracer' (a dataflow's name is its key)"
    ]


def test_service_key_name_mismatch() -> None:
    data = base()
    tracer(data)["services"]["publisher"]["name"] = "publisher2"
    assert problems_of(data) == [
        "dataflows.tracer.services.publisher.name: name 'publisher2' does not match its key "
        "'publisher' (a service's name is its key)"
    ]


# ---------------------------------------------------------------------------------------------
# Durations round-trip (the anchor's Duration could not).
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("600s", 600), ("10m", 600), ("1h", 3600), ("1h30m", 5400), ("7d", 604800)],
)
def test_durations_kept_as_given(value: str, seconds: float) -> None:
    assert duration_seconds(value) == seconds
    data = base()
    sub = tracer(data)["resources"]["subscriptions"][0]
    sub["message_retention_duration"] = value
    sub["retry_policy"] = {"minimum_backoff": "10s", "maximum_backoff": "600s"}
    arch = Architecture.from_dict(data)
    parsed = arch.dataflows["tracer"].resources.subscriptions[0]
    assert parsed.message_retention_duration == value
    assert load_architecture(arch.to_yaml()) == arch
    assert f"message_retention_duration: {value}" in arch.to_yaml()


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        (
            "message_retention_duration",
            "10x",
            "'10x' is not a duration such as '600s', '10m', '1h30m' or '7d'",
        ),
        (
            "message_retention_duration",
            600,
            "expected a duration string such as '600s', got an integer (600)",
        ),
        (
            "message_retention_duration",
            "5m",
            "'5m': message retention must be between 10 minutes and 31 days",
        ),
        (
            "message_retention_duration",
            "32d",
            "'32d': message retention must be between 10 minutes and 31 days",
        ),
    ],
)
def test_bad_durations(field: str, value: Any, expected: str) -> None:
    data = base()
    tracer(data)["resources"]["subscriptions"][0][field] = value
    assert problems_of(data) == [f"dataflows.tracer.resources.subscriptions[0].{field}: {expected}"]


def test_bad_backoff() -> None:
    data = base()
    tracer(data)["resources"]["subscriptions"][0]["retry_policy"] = {"maximum_backoff": "11m"}
    assert problems_of(data) == [
        "dataflows.tracer.resources.subscriptions[0].retry_policy.maximum_backoff: "
        "'11m': a retry backoff must be between 0s and 600s"
    ]


def test_bad_schedule() -> None:
    data = base()
    tracer(data)["resources"]["cloud_scheduler_jobs"] = [
        {
            "name": "nightly",
            "schedule": "every night",
            "target_service": "subscriber",
            "service_account": "nightly-sa",
        }
    ]
    assert problems_of(data) == [
        "dataflows.tracer.resources.cloud_scheduler_jobs[0].schedule: schedule 'every night' must "
        "be a unix-cron expression with 5 fields, e.g. '*/5 * * * *'"
    ]


# ---------------------------------------------------------------------------------------------
# All at once.
# ---------------------------------------------------------------------------------------------


def test_every_problem_reported_in_one_error() -> None:
    data = base()
    data["project_id"] = "X"
    data["service_manager_spec"]["servce_account"] = data["service_manager_spec"].pop(
        "service_account"
    )
    tracer(data)["name"] = "tracr"
    tracer(data)["resources"]["subscriptions"][0]["topic"] = "nope"
    tracer(data)["resources"]["topics"][0]["producer_service"]["name"] = "ghost"
    tracer(data)["services"]["publisher"]["dependencies"] = ["nobody"]
    tracer(data)["services"]["subscriber"]["service_account"] = "S"
    found = problems_of(data)
    prefixes = [
        "project_id:",
        "service_manager_spec.service_account: required field is missing",
        "service_manager_spec.servce_account: unknown key; did you mean 'service_account'?",
        "dataflows.tracer.services.subscriber.service_account:",
        "dataflows.tracer.name:",
        "dataflows.tracer.services.publisher.dependencies[0]:",
        "dataflows.tracer.resources.topics[0].producer_service.name:",
        "dataflows.tracer.resources.subscriptions[0].topic:",
    ]
    assert len(found) == len(prefixes)
    for prefix in prefixes:
        assert any(p.startswith(prefix) for p in found), prefix
    assert found == list(dict.fromkeys(found))  # no repeats


def test_format_path() -> None:
    assert format_path(()) == "(root)"
    assert format_path(("dataflows", "a", "resources", "topics", 3, "name")) == (
        "dataflows.a.resources.topics[3].name"
    )
    assert format_path(("labels", "a.b")) == "labels['a.b']"


# ---------------------------------------------------------------------------------------------
# Hostile input (issue 10): service folders stay under the source root, no code-loading variables.
# ---------------------------------------------------------------------------------------------

PUBLISHER = "dataflows.tracer.services.publisher.deployment"


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("source_path", "..", "'..' has a '..' component; it must stay inside the source root"),
        ("source_path", "src/../../etc", "has a '..' component"),
        ("source_path", "/etc", "'/etc' is an absolute path; it must be relative to the source root"),
        ("source_path", "\\\\server\\share", "is an absolute path"),
        ("buildable_module_path", "../elsewhere", "has a '..' component"),
        ("buildable_module_path", "/opt/app", "is an absolute path"),
        ("buildable_module_path", "pub\x00lisher", "contains a NUL character"),
    ],
)
def test_service_paths_must_stay_under_the_source_root(field: str, value: str, expected: str) -> None:
    data = base()
    tracer(data)["services"]["publisher"]["deployment"][field] = value
    (problem,) = problems_of(data)
    assert problem.startswith(f"{PUBLISHER}.{field}: {value!r} ") and expected in problem, problem


TEMPLATES = f"{PUBLISHER}.config_templates"


@pytest.mark.parametrize(
    ("templates", "expected"),
    [
        ({"/etc/passwd": "passwd.txt"},
         "entry '/etc/passwd' -> 'passwd.txt': src '/etc/passwd' is an absolute path; "
         "it must be relative to the service folder"),
        ({"a.tmpl": "/tmp/a.yaml"}, "entry 'a.tmpl' -> '/tmp/a.yaml': dest '/tmp/a.yaml' is an absolute path"),
        ({"a.tmpl": "C:\\temp\\a.yaml"}, "dest 'C:\\\\temp\\\\a.yaml' is an absolute path"),
        ({"../x": "x.yaml"},
         "entry '../x' -> 'x.yaml': src '../x' has a '..' component; it must stay inside the service folder"),
        ({"a.tmpl": "conf/../../x"}, "dest 'conf/../../x' has a '..' component"),
        ({"a.tmpl": "conf\\..\\x"}, "has a '..' component"),
        ({"a.tmpl": ""}, "entry 'a.tmpl' -> '': dest is empty"),
        ({"a.tmpl": "./"}, "dest './' is the service folder itself, not a file in it"),
        ({"a\x00b": "a.yaml"}, "src 'a\\x00b' contains a NUL character"),
        ({"a.tmpl": "resources.yaml"},
         "entry 'a.tmpl' -> 'resources.yaml': dest 'resources.yaml' is named like a file Podium "
         "generates (resources.yaml or services.yaml); choose another name"),
        ({"a.tmpl": "./services.yaml"}, "dest './services.yaml' is named like a file Podium generates"),
        ({"a.tmpl": "conf/Resources.YAML"}, "is named like a file Podium generates"),
        ({"a.tmpl": "a.yaml", "b.tmpl": "./a.yaml"},
         "entry 'b.tmpl' -> './a.yaml': dest './a.yaml' is also the dest of entry 'a.tmpl'"),
        ({"a.tmpl": "b.tmpl", "b.tmpl": "b.yaml"},
         "entry 'a.tmpl' -> 'b.tmpl': dest 'b.tmpl' is also the src of entry 'b.tmpl'; "
         "a copy must not overwrite what a copy reads"),
        ({"a.yaml": "a.yaml"}, "dest 'a.yaml' is also the src of entry 'a.yaml'"),
    ],
)
def test_config_templates_are_checked_at_load(templates: dict[str, str], expected: str) -> None:
    data = base()
    tracer(data)["services"]["publisher"]["deployment"]["config_templates"] = templates
    (problem,) = problems_of(data)
    assert problem.startswith(f"{TEMPLATES}: ") and expected in problem, problem


def test_every_config_templates_problem_is_reported_at_once() -> None:
    data = base()
    tracer(data)["services"]["publisher"]["deployment"]["config_templates"] = {
        "/abs": "../up", "ok.tmpl": "ok.yaml", "x.tmpl": "resources.yaml"
    }
    assert problems_of(data) == [
        f"{TEMPLATES}: entry '/abs' -> '../up': src '/abs' is an absolute path; it must be relative "
        "to the service folder; entry '/abs' -> '../up': dest '../up' has a '..' component; it must "
        "stay inside the service folder; entry 'x.tmpl' -> 'resources.yaml': dest 'resources.yaml' "
        "is named like a file Podium generates (resources.yaml or services.yaml); choose another name"
    ]


def test_plain_config_templates_load_and_round_trip() -> None:
    data = base()
    templates = {"tracer-config.tmpl.yaml": "tracer-config.yaml", "conf/app.ini": "conf/app.local.ini",
                 "3": "three.txt"}
    tracer(data)["services"]["publisher"]["deployment"]["config_templates"] = templates
    arch = Architecture.from_dict(data)
    deployment = arch.dataflows["tracer"].services["publisher"].deployment
    assert deployment is not None and deployment.config_templates == templates
    assert Architecture.from_dict(arch.to_dict()) == arch


def test_plain_relative_service_paths_are_fine() -> None:
    data = base()
    deployment = tracer(data)["services"]["publisher"]["deployment"]
    deployment.update({"source_path": "./services", "buildable_module_path": "py/..hidden/publisher"})
    Architecture.from_dict(data)


@pytest.mark.parametrize(
    "name",
    ["LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "ld_preload", "DYLD_INSERT_LIBRARIES", "PYTHONPATH",
     "PYTHONSTARTUP", "PYTHONHOME", "PYTHONINSPECT", "PYTHONUSERBASE", "PYTHONWARNINGS", "PYTHONBREAKPOINT",
     "BASH_ENV", "ENV", "BASH_FUNC_ls%%", "NODE_OPTIONS", "PERL5OPT", "RUBYOPT", "JAVA_TOOL_OPTIONS",
     "GCONV_PATH"],
)
def test_code_loading_variables_are_refused(name: str) -> None:
    data = base()
    deployment = tracer(data)["services"]["publisher"]["deployment"]
    deployment["environment_vars"] = {"FINE": "1", name: "/tmp/x"}
    deployment["secret_environment_vars"] = [{"name": name, "value_from": "s"}]
    refused = f"variable {name!r} is refused: it makes the dynamic loader or an interpreter load code"
    assert problems_of(data) == [
        f"{PUBLISHER}.environment_vars: {refused}",
        f"{PUBLISHER}.secret_environment_vars[0].name: {refused}",
    ]


def test_harmless_variables_are_accepted_and_malformed_names_are_not() -> None:
    data = base()
    deployment = tracer(data)["services"]["publisher"]["deployment"]
    deployment["environment_vars"] = {"PYTHONUNBUFFERED": "1", "PYTHONHASHSEED": "0", "LOG_LEVEL": "debug",
                                      "PATH_PREFIX": "/api"}
    Architecture.from_dict(data)
    deployment["environment_vars"] = {"A=B": "x", "OK": "nul\x00"}
    assert problems_of(data) == [
        f"{PUBLISHER}.environment_vars: variable name 'A=B' must be non-empty, without '=' or NUL; "
        "the value of 'OK' contains a NUL character"
    ]


def test_a_firestore_databases_grant_is_limited_to_firestore_roles() -> None:
    """It becomes a project binding: anything else would let an architecture grant itself the
    project (and the daemon's conditioned projectIamAdmin would refuse it only at run time)."""
    doc = yaml.safe_load(rich_yaml())
    database = doc["dataflows"]["ingest"]["resources"]["firestore_databases"][0]
    database["iam_access_policy"] = [{"name": "reader", "role": "roles/datastore.viewer"}]
    load_architecture(yaml.safe_dump(doc))
    for role in ("roles/owner", "roles/iam.securityAdmin", "roles/datastore.importExportAdmin"):
        database["iam_access_policy"] = [{"name": "reader", "role": role}]
        with pytest.raises(InvalidArchitecture) as bad:
            load_architecture(yaml.safe_dump(doc))
        assert "firestore_databases[0].iam_access_policy[0].role" in str(bad.value) and role in str(bad.value)


# ---------------------------------------------------------------------------------------------
# deployment.preflight (Podium's key).
# ---------------------------------------------------------------------------------------------


def test_preflight_block_is_read_kept_and_survives_hydration() -> None:
    from machines.hydration import hydrate

    data = base()
    tracer(data)["services"]["publisher"]["deployment"]["preflight"] = {
        "command": ["./scripts/test.sh", "--", 3], "timeout_seconds": 90,
    }
    tracer(data)["services"]["subscriber"]["deployment"]["preflight"] = {"skip": True}
    arch = Architecture.from_dict(data)
    publisher = arch.dataflows["tracer"].services["publisher"].deployment
    subscriber = arch.dataflows["tracer"].services["subscriber"].deployment
    assert publisher is not None and publisher.preflight is not None
    assert publisher.preflight.command == ("./scripts/test.sh", "--", "3")  # scalars read as strings
    assert publisher.preflight.timeout_seconds == 90 and not publisher.preflight.skip
    assert subscriber is not None and subscriber.preflight is not None and subscriber.preflight.skip
    assert subscriber.preflight.command == () and subscriber.preflight.timeout_seconds is None
    read_back = Architecture.from_dict(hydrate(arch).to_dict())  # what a run document holds
    hydrated = read_back.dataflows["tracer"].services["publisher"].deployment
    assert hydrated is not None and hydrated.preflight == publisher.preflight
    skipped = read_back.dataflows["tracer"].services["subscriber"].deployment
    assert skipped is not None and skipped.preflight is not None and skipped.preflight.skip


@pytest.mark.parametrize(
    ("preflight", "expected"),
    [
        ("npm test", "preflight: expected a mapping, got a string ('npm test')"),
        ({"command": "npm test"}, "preflight.command: expected a list of strings (the program and its "
                                  "arguments, no shell), e.g. [npm, test]; got a string ('npm test')"),
        ({"command": ["./t.sh", ""]}, "preflight.command[1]: must not be empty"),
        ({"command": ["./t.sh", {"run": "test"}]}, "preflight.command[1]: expected a string, got a mapping"),
        ({"command": ["./t.sh", "te\x00st"]}, "preflight.command: an argument contains a NUL character"),
        ({"timeout_seconds": 0}, "preflight.timeout_seconds: input should be greater than or equal to 1"),
        ({"timeout_seconds": 3601}, "preflight.timeout_seconds: input should be less than or equal to 3600"),
        ({"timeout_seconds": "soon"}, "preflight.timeout_seconds: expected an integer, got a string ('soon')"),
        ({"timeout_seconds": 1.5}, "preflight.timeout_seconds: expected a whole number, got a number (1.5)"),
        ({"timeout_seconds": True}, "preflight.timeout_seconds: expected a whole number of seconds, "
                                    "got a boolean (true)"),
        ({"skip": "maybe"}, "preflight.skip: expected true or false, got a string ('maybe')"),
        ({"comand": ["make", "test"]}, "preflight.comand: unknown key; did you mean 'command'?"),
    ],
)
def test_malformed_preflight_block_is_refused(preflight: Any, expected: str) -> None:
    data = base()
    tracer(data)["services"]["publisher"]["deployment"]["preflight"] = preflight
    assert problems_of(data) == [f"{PUBLISHER}.{expected}"]


@pytest.mark.parametrize("program", ["npm", "sh", "/bin/sh", "../x/t.sh", "scripts/../../t.sh", "\\\\host\\t"])
def test_a_preflight_command_runs_only_a_file_of_the_service(program: str) -> None:
    data = base()
    tracer(data)["services"]["publisher"]["deployment"]["preflight"] = {"command": [program, "-c", "x"]}
    (problem,) = problems_of(data)
    assert problem.startswith(f"{PUBLISHER}.preflight.command: {program!r}: the program must be a file of the service")
    for ok in ("./test.sh", "scripts/test.sh"):
        tracer(data)["services"]["publisher"]["deployment"]["preflight"] = {"command": [ok]}
        Architecture.from_dict(data)


def test_preflight_belongs_under_deployment() -> None:
    data = base()
    tracer(data)["services"]["publisher"]["preflight"] = {"skip": True}
    (problem,) = problems_of(data)
    assert problem.startswith("dataflows.tracer.services.publisher.preflight: unknown key"), problem


@pytest.mark.parametrize("name", ["GOFLAGS", "GOENV", "GOTOOLCHAIN", "CGO_LDFLAGS", "CC", "CXX"])
def test_variables_that_make_go_test_run_other_code_are_refused(name: str) -> None:
    data = base()
    tracer(data)["services"]["publisher"]["deployment"]["environment_vars"] = {name: "-toolexec=/tmp/x"}
    (problem,) = problems_of(data)
    assert f"variable {name!r} is refused" in problem


def test_the_plan_says_what_a_teardown_keeps() -> None:
    from machines.hydration import hydrate
    from machines.start import plan_of

    doc = yaml.safe_load(rich_yaml())
    doc["dataflows"]["ingest"]["resources"]["gcs_buckets"][0]["teardown_protection"] = True
    doc["dataflows"]["ingest"]["resources"]["bigquery_tables"][0]["teardown_protection"] = True
    plan = plan_of(hydrate(load_architecture(yaml.safe_dump(doc))))
    assert plan["ephemeral_dataflows"] == ["ingest"]
    # Named as outputs.resources names them, so a reader can match the two lists.
    assert [(k["kind"], k["name"], k["why"]) for k in plan["kept"]] == [
        ("bigquery_table", "warehouse.facts", "teardown_protection"),
        ("gcs_bucket", "rich-archive", "teardown_protection"),
        ("dataflow", "report", "permanent dataflow"),
        ("dataflow", "sd-infra", "the director's own infrastructure"),
    ]


def test_a_protected_architecture_keeps_every_dataflow() -> None:
    from machines.hydration import hydrate
    from machines.start import plan_of

    doc = yaml.safe_load(rich_yaml())
    doc["teardown_protection"] = True
    plan = plan_of(hydrate(load_architecture(yaml.safe_dump(doc))))
    assert plan["ephemeral_dataflows"] == []
    assert {(k["name"], k["why"]) for k in plan["kept"]} == {
        ("ingest", "the architecture's teardown_protection"),
        ("report", "the architecture's teardown_protection"),
        ("sd-infra", "the director's own infrastructure"),
    }
