"""Hydration: the anchor's defaults, deterministic and idempotent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from machines.architecture import Architecture, load_architecture
from machines.errors import InvalidArchitecture
from machines.hydration import (
    all_services,
    env_var_name,
    hydrate,
    image_base,
    service_account_email,
    service_dir,
)
from tests.architectures import RICH, TESTDATA


def env_of(arch: Architecture, service: str) -> dict[str, str]:
    spec = all_services(arch)[service][1]
    assert spec.deployment is not None
    return dict(spec.deployment.environment_vars)


# ---------------------------------------------------------------------------------------------
# The director's infra dataflow.
# ---------------------------------------------------------------------------------------------


def test_director_infra_dataflow(demo: Architecture) -> None:
    h = hydrate(demo)
    assert list(h.dataflows) == ["director-infra", "tracer"]
    infra = h.dataflows["director-infra"]
    assert infra.name == "director-infra"
    assert infra.lifecycle is not None and infra.lifecycle.strategy == "permanent"
    assert infra.services == {}
    command, completion = infra.resources.topics
    assert command.name == "director-commands" and command.producer_service is None
    assert completion.name == "director-completions"
    assert completion.producer_service is not None
    assert completion.producer_service.name == "director"
    assert completion.producer_service.lookup.key == "completion-topic-id"
    (sub,) = infra.resources.subscriptions
    assert sub.name == "director-commands-sub"
    assert sub.topic == "director-commands"
    assert sub.consumer_service is not None
    assert sub.consumer_service.name == "director"
    assert sub.consumer_service.lookup.key == "command-subscription-id"
    assert sub.consumer_service.lookup.method == "yaml"  # copied from the command topic


def test_completion_key_defaults_and_method_is_copied(rich: Architecture) -> None:
    h = hydrate(rich)
    assert h.service_manager_spec.completion_topic is not None
    assert h.service_manager_spec.completion_topic.lookup.key == "completion-topic-id"
    infra = h.dataflows["sd-infra"]
    assert infra.resources.topics[1].producer_service is not None
    assert infra.resources.topics[1].producer_service.lookup.key == "completion-topic-id"
    sub = infra.resources.subscriptions[0]
    assert sub.consumer_service is not None
    assert sub.consumer_service.lookup.method == "env"
    # method env → injected into the director under the key, as the anchor does
    assert env_of(h, "sd")["command-subscription-id"] == "sd-commands-sub"


def test_director_topics_default_when_absent(demo: Architecture) -> None:
    sd = demo.service_manager_spec.model_copy(
        update={"command_topic": None, "completion_topic": None}
    )
    h = hydrate(demo.model_copy(update={"service_manager_spec": sd}))
    topics = [t.name for t in h.dataflows["director-infra"].resources.topics]
    assert topics == ["director-commands", "director-completions"]
    assert h.service_manager_spec.command_topic is not None
    assert h.service_manager_spec.command_topic.lookup.key == "command-topic-id"


def test_existing_infra_dataflow_is_upserted(demo: Architecture) -> None:
    h = hydrate(demo)
    infra = h.dataflows["director-infra"]
    extra = infra.resources.model_copy(
        update={
            "topics": (
                *infra.resources.topics,
                infra.resources.topics[0].model_copy(update={"name": "extra-topic"}),
            )
        }
    )
    edited = h.model_copy(
        update={
            "dataflows": {
                **h.dataflows,
                "director-infra": infra.model_copy(update={"resources": extra}),
            }
        }
    )
    again = hydrate(edited)
    names = [t.name for t in again.dataflows["director-infra"].resources.topics]
    assert names == ["director-commands", "director-completions", "extra-topic"]


# ---------------------------------------------------------------------------------------------
# Deployment defaults and env vars.
# ---------------------------------------------------------------------------------------------


def test_deployment_defaults(demo: Architecture) -> None:
    h = hydrate(demo, image_repo="images")
    for name in ("director", "publisher", "subscriber"):
        d = all_services(h)[name][1].deployment
        assert d is not None
        assert d.region == "europe-west1"
        assert d.image_repo == "images"
        assert d.cpu == "1"
        assert d.memory == "512Mi"
        assert d.image == f"europe-west1-docker.pkg.dev/podium-local/images/{name}"


def test_explicit_deployment_values_win(rich: Architecture) -> None:
    h = hydrate(rich)
    writer = all_services(h)["writer"][1].deployment
    reader = all_services(h)["reader"][1].deployment
    assert writer is not None and reader is not None
    # each has some values of its own and gets the defaults for the rest
    assert (writer.region, writer.image_repo) == ("us-central1", "custom")
    assert writer.image == "us-central1-docker.pkg.dev/rich-project/custom/writer"
    assert (writer.cpu, writer.memory) == ("1", "512Mi")
    assert (reader.cpu, reader.memory, reader.region) == ("2", "1Gi", "europe-west4")
    assert reader.image == "europe-west4-docker.pkg.dev/rich-project/podium/reader"


def test_standard_env_vars(demo: Architecture) -> None:
    h = hydrate(demo)
    assert env_of(h, "publisher") == {
        "PUBLISH_INTERVAL_SECONDS": "0.5",
        "PROJECT_ID": "podium-local",
        "SERVICE_NAME": "publisher",
        "DATAFLOW_NAME": "tracer",
    }
    assert env_of(h, "director") == {
        "PROJECT_ID": "podium-local",
        "SERVICE_NAME": "director",
        "DATAFLOW_NAME": "director-infra",
    }


def test_standard_env_vars_override_user_values(rich: Architecture) -> None:
    env = env_of(hydrate(rich), "writer")
    assert env["PROJECT_ID"] == "rich-project"
    assert env["KEEP"] == "me"


def test_env_links_are_injected(rich: Architecture) -> None:
    h = hydrate(rich)
    writer = env_of(h, "writer")
    assert writer["EVENTS_V1_TOPIC_ID"] == "events.v1"  # '.' mapped to '_' too
    assert writer["AUDIT"] == "audit"  # lookup.key wins
    assert writer["ENV_ONLY_WRITE_TABLE"] == "env-only"
    assert writer["SESSIONS_WRITE_COLLECTION"] == "sessions"
    assert "RICH_ARCHIVE_WRITE_BUCKET" not in writer  # yaml link: resources.yaml, not env
    reader = env_of(h, "reader")
    assert reader["EVENTS_SUB_SUB_ID"] == "events-sub"
    assert reader["RICH_EXPORTS_READ_BUCKET"] == "rich-exports"
    assert reader["FACTS"] == "facts"
    assert reader["SESSIONS_READ_COLLECTION"] == "sessions"
    # a link across dataflows works too
    assert env_of(h, "reporter")["AUDIT_SUB"] == "audit-sub"


def test_yaml_links_inject_nothing(demo: Architecture) -> None:
    assert set(env_of(hydrate(demo), "subscriber")) == {
        "PROJECT_ID",
        "SERVICE_NAME",
        "DATAFLOW_NAME",
    }


def test_env_var_name() -> None:
    assert env_var_name("tracer-topic", "TOPIC_ID") == "TRACER_TOPIC_TOPIC_ID"
    assert env_var_name("tracer-topic", "TOPIC_ID", "MY_KEY") == "MY_KEY"
    assert env_var_name("a.b~c", "SUB_ID") == "A_B_C_SUB_ID"


# ---------------------------------------------------------------------------------------------
# Images, accounts, other defaults.
# ---------------------------------------------------------------------------------------------


def test_image_has_no_random_tag_and_a_pinned_digest_is_kept(demo: Architecture) -> None:
    h = hydrate(demo)
    pub = h.dataflows["tracer"].services["publisher"]
    assert pub.deployment is not None
    base = image_base("europe-west1", "podium-local", "podium", "publisher")
    assert pub.deployment.image == base
    pinned = pub.model_copy(
        update={
            "deployment": pub.deployment.model_copy(update={"image": f"{base}@sha256:{'a' * 64}"})
        }
    )
    flow = h.dataflows["tracer"]
    built = h.model_copy(
        update={
            "dataflows": {
                **h.dataflows,
                "tracer": flow.model_copy(
                    update={"services": {**flow.services, "publisher": pinned}}
                ),
            }
        }
    )
    again = hydrate(built).dataflows["tracer"].services["publisher"].deployment
    assert again is not None and again.image == f"{base}@sha256:{'a' * 64}"
    # an image from elsewhere is replaced, as the anchor does
    other = pub.model_copy(
        update={"deployment": pub.deployment.model_copy(update={"image": "gcr.io/x/y:latest"})}
    )
    replaced = h.model_copy(
        update={
            "dataflows": {
                **h.dataflows,
                "tracer": flow.model_copy(
                    update={"services": {**flow.services, "publisher": other}}
                ),
            }
        }
    )
    again = hydrate(replaced).dataflows["tracer"].services["publisher"].deployment
    assert again is not None and again.image == base


def test_service_account_email() -> None:
    assert service_account_email("pub-sa", "proj-1") == "pub-sa@proj-1.iam.gserviceaccount.com"
    email = "pub-sa@other-project.iam.gserviceaccount.com"
    assert service_account_email(email, "proj-1") == email


def test_service_account_ids_stay_ids(demo: Architecture) -> None:
    assert hydrate(demo).dataflows["tracer"].services["publisher"].service_account == "publisher-sa"


def test_datasets_from_table_refs_and_scheduler_accounts(rich: Architecture) -> None:
    h = hydrate(rich)
    datasets = [(d.name, d.location) for d in h.dataflows["ingest"].resources.bigquery_datasets]
    assert datasets == [("warehouse", "US"), ("other", "EU")]  # declared, then from env-only
    assert h.dataflows["report"].resources.bigquery_datasets == ()  # declared once only
    (job,) = h.dataflows["ingest"].resources.cloud_scheduler_jobs
    assert job.service_account == "nightly-sa"


# ---------------------------------------------------------------------------------------------
# Determinism, idempotence, purity.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [TESTDATA.read_text(), RICH], ids=["testdata", "rich"])
def test_idempotent_and_deterministic(text: str) -> None:
    arch = load_architecture(text)
    once = hydrate(arch)
    assert hydrate(once) == once
    assert hydrate(load_architecture(text)) == once
    assert once.to_yaml() == hydrate(once).to_yaml()


@pytest.mark.parametrize("text", [TESTDATA.read_text(), RICH], ids=["testdata", "rich"])
def test_hydrated_round_trips(text: str) -> None:
    h = hydrate(load_architecture(text))
    assert load_architecture(h.to_yaml()) == h  # services.yaml reads back as it was
    assert Architecture.from_dict(h.to_dict()) == h
    assert Architecture.model_validate(json.loads(h.model_dump_json(exclude_none=True))) == h


def test_input_is_not_changed(demo: Architecture) -> None:
    before = demo.model_dump()
    hydrate(demo)
    assert demo.model_dump() == before
    assert "director-infra" not in demo.dataflows


# ---------------------------------------------------------------------------------------------
# Helpers.
# ---------------------------------------------------------------------------------------------


def test_all_services(rich: Architecture) -> None:
    services = all_services(hydrate(rich))
    assert list(services) == ["sd", "writer", "reader", "reporter"]
    assert services["sd"][0] == "sd-infra"
    assert services["sd"][1].name == "sd"
    assert services["reporter"][0] == "report"


def test_all_services_before_hydration(demo: Architecture) -> None:
    assert all_services(demo)["director"][0] == "director-infra"


def test_service_dir(demo: Architecture, tmp_path: Path) -> None:
    services = all_services(demo)
    assert service_dir(services["publisher"][1], tmp_path) == tmp_path / "publisher"
    spec = services["publisher"][1]
    assert spec.deployment is not None
    absolute = spec.model_copy(
        update={
            "deployment": spec.deployment.model_copy(
                update={"source_path": "/abs/src", "buildable_module_path": ""}
            )
        }
    )
    # model_copy skips validation: service_dir still refuses a folder outside the root
    with pytest.raises(InvalidArchitecture, match=r"'publisher'.*source_path.*'/abs/src' is an absolute path"):
        service_dir(absolute, tmp_path)
    assert not (tmp_path / "publisher").exists()  # path math only


@pytest.mark.parametrize(
    ("source_path", "module", "field"),
    [("..", "", "source_path"), ("a/../../b", "", "source_path"), (".", "../x", "buildable_module_path"),
     (".", "/etc", "buildable_module_path"), (".", "x/..", "buildable_module_path")],
)
def test_service_dir_refuses_paths_that_leave_the_root(
    demo: Architecture, tmp_path: Path, source_path: str, module: str, field: str
) -> None:
    spec = all_services(demo)["publisher"][1]
    assert spec.deployment is not None
    escaping = spec.model_copy(
        update={"deployment": spec.deployment.model_copy(
            update={"source_path": source_path, "buildable_module_path": module})}
    )
    with pytest.raises(InvalidArchitecture, match=f"'publisher'.*deployment.{field}") as caught:
        service_dir(escaping, tmp_path)
    assert not caught.value.retryable


def test_service_dir_needs_a_deployment(demo: Architecture) -> None:
    sd = demo.service_manager_spec.model_copy(update={"deployment": None})
    with pytest.raises(InvalidArchitecture):
        service_dir(sd, Path("/src"))
