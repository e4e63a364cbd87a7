"""The gcp deploy backend: the exact Cloud Run Admin v2 requests, against an autospec'd client."""

from __future__ import annotations

from typing import Any

import pytest
from google.api_core import exceptions as gexc
from google.cloud import run_v2
from pytest_mock import MockerFixture

from daemon.config import Settings
from handlers.base import EffectContext
from handlers.deploy.gcp import (
    build_template,
    config_digest,
    deploy_gcp,
    is_ours,
    revision_name,
)
from machines.architecture import load_architecture
from machines.architecture.cloud_run_sizes import cpu_count
from machines.errors import HandlerError, NotReady
from machines.hydration import hydrate
from machines.messages import RunView

ARCHITECTURE = """
name: gcp-test
project_id: my-project
region: europe-west1
service_manager_spec:
  name: director
  service_account: director-sa
  deployment: {source_path: ., buildable_module_path: director}
dataflows:
  tracer:
    services:
      publisher:
        name: publisher
        service_account: publisher-sa
        deployment:
          source_path: .
          buildable_module_path: publisher
          region: us-central1
          cpu: "2"
          memory: 1Gi
          min_instances: 0
          max_instances: 3
          environment_vars: {PUBLISH_INTERVAL_SECONDS: "0.5"}
          secret_environment_vars:
            - {name: API_TOKEN, value_from: api-token}
"""

DIGEST = "ab12cd34ef" + "0" * 54
PUBLISHER_IMAGE = f"us-central1-docker.pkg.dev/my-project/podium/publisher@sha256:{DIGEST}"
DIRECTOR_IMAGE = f"europe-west1-docker.pkg.dev/my-project/podium/director@sha256:{'9' * 64}"
PUBLISHER_SA = "publisher-sa@my-project.iam.gserviceaccount.com"
PUBLISHER = "projects/my-project/locations/us-central1/services/publisher"
DIRECTOR = "projects/my-project/locations/europe-west1/services/director"
State = run_v2.Condition.State


def make_ctx(service: str, outputs: dict[str, Any] | None = None) -> EffectContext:
    arch = hydrate(load_architecture(ARCHITECTURE, "test"))
    if outputs is None:
        outputs = {
            "images": {"publisher": PUBLISHER_IMAGE, "director": DIRECTOR_IMAGE},
            "service_accounts": {
                "publisher": PUBLISHER_SA,
                "director": "director-sa@my-project.iam.gserviceaccount.com",
            },
        }
    run = {"run_id": "run-1", "architecture": arch.to_dict(), "outputs": outputs or {}}
    return EffectContext(
        run_id="run-1",
        effect_id=f"deploy-{service}",
        kind="deploy",
        item=service,
        params={},
        attempt=0,
        run=RunView.model_validate(run),
        settings=Settings(project="daemon-project", backend="gcp"),
    )


def publisher_template(revision: str = "") -> run_v2.RevisionTemplate:
    """What the publisher's template must be, field by field (written out, not computed)."""
    return run_v2.RevisionTemplate(
        revision=revision,
        service_account=PUBLISHER_SA,
        scaling=run_v2.RevisionScaling(min_instance_count=0, max_instance_count=3),
        containers=[
            run_v2.Container(
                image=PUBLISHER_IMAGE,
                env=[  # sorted by name: the same whichever order the mapping was read in
                    run_v2.EnvVar(name="DATAFLOW_NAME", value="tracer"),
                    run_v2.EnvVar(name="PROJECT_ID", value="my-project"),
                    run_v2.EnvVar(name="PUBLISH_INTERVAL_SECONDS", value="0.5"),
                    run_v2.EnvVar(name="SERVICE_NAME", value="publisher"),
                    run_v2.EnvVar(
                        name="API_TOKEN",
                        value_source=run_v2.EnvVarSource(
                            secret_key_ref=run_v2.SecretKeySelector(
                                secret="api-token", version="latest"
                            )
                        ),
                    ),
                ],
                resources=run_v2.ResourceRequirements(limits={"cpu": "2", "memory": "1Gi"}),
            )
        ],
    )


PUBLISHER_DIGEST = config_digest(publisher_template())
OURS = f"publisher-{PUBLISHER_DIGEST[:8]}-5"  # what a service at generation 4 was updated to


@pytest.fixture
def client(mocker: MockerFixture) -> Any:
    return mocker.create_autospec(run_v2.ServicesClient, instance=True)


def existing_service(template: run_v2.RevisionTemplate, **status: Any) -> run_v2.Service:
    return run_v2.Service(
        name=PUBLISHER,
        uri="https://publisher-xyz-uc.a.run.app",
        etag="etag-7",
        ingress=run_v2.IngressTraffic.INGRESS_TRAFFIC_INTERNAL_ONLY,
        labels={"team": "data"},
        generation=4,
        template=template,
        **status,
    )


# ---------------------------------------------------------------------------------- create / update


def test_creates_the_service_when_it_does_not_exist_and_does_not_wait(client: Any) -> None:
    client.get_service.side_effect = gexc.NotFound("no such service")
    with pytest.raises(NotReady) as pending:
        deploy_gcp(make_ctx("publisher"), client)
    assert pending.value.retry_after == 5
    client.get_service.assert_called_once_with(name=PUBLISHER)
    client.create_service.assert_called_once_with(
        parent="projects/my-project/locations/us-central1",
        service=run_v2.Service(template=publisher_template(f"publisher-{PUBLISHER_DIGEST[:8]}-1")),
        service_id="publisher",
    )
    client.update_service.assert_not_called()
    # The LRO was never waited on.
    assert client.create_service.return_value.result.call_count == 0


def test_updates_an_existing_service_keeping_what_podium_does_not_own(client: Any) -> None:
    old = run_v2.RevisionTemplate(
        revision="publisher-0000000000",
        service_account=PUBLISHER_SA,
        containers=[
            run_v2.Container(
                image="us-central1-docker.pkg.dev/my-project/podium/publisher@sha256:" + "0" * 64
            )
        ],
    )
    current = existing_service(
        old, latest_ready_revision=f"{PUBLISHER}/revisions/publisher-0000000000"
    )
    client.get_service.return_value = current
    with pytest.raises(NotReady) as pending:
        deploy_gcp(make_ctx("publisher"), client)
    assert pending.value.retry_after == 5
    client.create_service.assert_not_called()
    expected = run_v2.Service(current)
    expected.template = publisher_template(OURS)
    client.update_service.assert_called_once_with(service=expected)
    sent = client.update_service.call_args.kwargs["service"]
    assert sent.etag == "etag-7"  # a concurrent change makes the update fail, not overwrite
    assert sent.ingress == run_v2.IngressTraffic.INGRESS_TRAFFIC_INTERNAL_ONLY
    assert sent.labels == {"team": "data"}
    assert current.template.revision == "publisher-0000000000"  # the fetched object is not mutated


def test_the_director_keeps_an_instance_with_its_cpu_on(client: Any) -> None:
    client.get_service.side_effect = gexc.NotFound("no such service")
    with pytest.raises(NotReady):
        deploy_gcp(make_ctx("director"), client)
    kwargs = client.create_service.call_args.kwargs
    # No deployment region: the architecture's.
    assert kwargs["parent"] == "projects/my-project/locations/europe-west1"
    assert kwargs["service_id"] == "director"
    template = kwargs["service"].template
    assert template.revision.startswith("director-") and template.revision.endswith("-1")
    assert template.service_account == "director-sa@my-project.iam.gserviceaccount.com"
    assert template.scaling.min_instance_count == 1
    container = template.containers[0]
    assert container.image == DIRECTOR_IMAGE
    assert container.resources.cpu_idle is False
    assert dict(container.resources.limits) == {"cpu": "1", "memory": "512Mi"}  # hydrated defaults
    assert [(e.name, e.value) for e in container.env] == [
        ("DATAFLOW_NAME", "director-infra"),
        ("PROJECT_ID", "my-project"),
        ("SERVICE_NAME", "director"),
    ]


def test_the_config_digest_covers_the_whole_template_but_not_the_revision_name() -> None:
    base = publisher_template()
    assert config_digest(base) == config_digest(publisher_template("publisher-anything-9"))
    for change in (
        lambda t: t.containers[0].resources.limits.update({"memory": "2Gi"}),
        lambda t: setattr(t.containers[0], "image", t.containers[0].image + "0"),
        lambda t: t.containers[0].env.append(run_v2.EnvVar(name="NEW", value="1")),
        lambda t: setattr(t.scaling, "max_instance_count", 9),
        lambda t: setattr(t, "service_account", "other@my-project.iam.gserviceaccount.com"),
    ):
        changed = publisher_template()
        change(changed)
        assert config_digest(changed) != config_digest(base)


def test_revision_names_carry_the_digest_and_stay_within_63_characters() -> None:
    digest = "0123456789abcdef" * 4
    assert revision_name("publisher", digest, 3) == "publisher-01234567-3"
    assert is_ours("publisher-01234567-3", "publisher", digest)
    assert not is_ours("publisher-76543210-3", "publisher", digest)
    assert len(revision_name("s" * 49, digest, 9999)) <= 63


def test_below_one_cpu_asks_for_request_based_billing(client: Any) -> None:
    assert (cpu_count("500m"), cpu_count("0.5"), cpu_count("2"), cpu_count("")) == (0.5, 0.5, 2.0, None)
    ctx = make_ctx("publisher")
    raw = ctx.architecture.to_dict()
    raw["dataflows"]["tracer"]["services"]["publisher"]["deployment"].update(cpu="0.5", memory="512Mi")
    run = RunView.model_validate({"run_id": "run-2", "architecture": raw, "outputs": ctx.outputs})
    client.get_service.side_effect = gexc.NotFound("no such service")
    with pytest.raises(NotReady):
        deploy_gcp(EffectContext("run-2", "d", "deploy", "publisher", {}, 0, run, ctx.settings), client)
    container = client.create_service.call_args.kwargs["service"].template.containers[0]
    assert container.resources.cpu_idle is True and container.resources.limits["cpu"] == "0.5"


def test_the_service_account_falls_back_to_the_architecture(client: Any) -> None:
    client.get_service.side_effect = gexc.NotFound("no such service")
    with pytest.raises(NotReady):
        deploy_gcp(make_ctx("publisher", {"images": {"publisher": PUBLISHER_IMAGE}}), client)
    template = client.create_service.call_args.kwargs["service"].template
    assert template.service_account == PUBLISHER_SA


def test_a_concurrent_create_is_not_an_error(client: Any) -> None:
    client.get_service.side_effect = gexc.NotFound("no such service")
    client.create_service.side_effect = gexc.AlreadyExists("created by another replica")
    with pytest.raises(NotReady):
        deploy_gcp(make_ctx("publisher"), client)


# ---------------------------------------------------------------------------------- re-checks


def test_not_ready_while_our_revision_is_rolling_out(client: Any) -> None:
    client.get_service.return_value = existing_service(
        publisher_template(OURS),
        reconciling=True,
        latest_ready_revision=f"{PUBLISHER}/revisions/publisher-0000000000",
        terminal_condition=run_v2.Condition(type_="Ready", state=State.CONDITION_RECONCILING),
    )
    with pytest.raises(NotReady) as pending:
        deploy_gcp(make_ctx("publisher"), client)
    assert pending.value.retry_after == 5
    client.create_service.assert_not_called()
    client.update_service.assert_not_called()


def test_succeeds_when_our_revision_is_the_latest_ready(client: Any) -> None:
    client.get_service.return_value = existing_service(
        publisher_template(OURS),
        latest_ready_revision=f"{PUBLISHER}/revisions/{OURS}",
        terminal_condition=run_v2.Condition(type_="Ready", state=State.CONDITION_SUCCEEDED),
    )
    outcomes = deploy_gcp(make_ctx("publisher"), client)
    assert len(outcomes) == 1
    assert outcomes[0].type == "deploy.succeeded" and outcomes[0].item == "publisher"
    assert outcomes[0].data["url"] == "https://publisher-xyz-uc.a.run.app"
    client.create_service.assert_not_called()
    client.update_service.assert_not_called()  # redoing the same deploy issues nothing


def test_fails_with_cloud_runs_message_when_the_revision_failed(client: Any) -> None:
    message = "Revision 'publisher-ab12cd34ef' is not ready and cannot serve traffic. The container failed to start."
    client.get_service.return_value = existing_service(
        publisher_template(OURS),
        reconciling=False,
        latest_ready_revision=f"{PUBLISHER}/revisions/publisher-0000000000",
        terminal_condition=run_v2.Condition(
            type_="Ready", state=State.CONDITION_FAILED, message=message
        ),
    )
    with pytest.raises(HandlerError) as failed:
        deploy_gcp(make_ctx("publisher"), client)
    assert failed.value.retryable is False
    assert message in failed.value.message and PUBLISHER in failed.value.message


def test_the_template_does_not_depend_on_the_order_the_mapping_was_read_in() -> None:
    ctx = make_ctx("publisher")
    raw = ctx.architecture.to_dict()
    env = raw["dataflows"]["tracer"]["services"]["publisher"]["deployment"]["environment_vars"]
    raw["dataflows"]["tracer"]["services"]["publisher"]["deployment"]["environment_vars"] = dict(reversed(env.items()))
    reordered = RunView.model_validate({"run_id": "run-9", "architecture": raw, "outputs": ctx.outputs})
    other = EffectContext("run-9", "d", "deploy", "publisher", {}, 0, reordered, ctx.settings)
    arch, spec = other.architecture, other.target()[2]
    assert list(spec.deployment.environment_vars) != list(ctx.target()[2].deployment.environment_vars)  # type: ignore[union-attr]
    assert arch.name == ctx.architecture.name
    assert config_digest(_template(other)) == config_digest(_template(ctx))


def _template(ctx: EffectContext) -> run_v2.RevisionTemplate:
    service, _, spec = ctx.target()
    assert spec.deployment is not None
    return build_template(service=service, deployment=spec.deployment, image=PUBLISHER_IMAGE,
                          service_account=PUBLISHER_SA, is_director=False)


def test_a_configuration_only_change_deploys_a_new_revision_of_the_same_image(client: Any) -> None:
    live = publisher_template(OURS)
    live.containers[0].env[2].value = "5"  # PUBLISH_INTERVAL_SECONDS: deployed earlier with another value
    live.revision = f"publisher-{config_digest(live)[:8]}-5"
    client.get_service.return_value = existing_service(
        live,
        latest_ready_revision=f"{PUBLISHER}/revisions/{live.revision}",
        terminal_condition=run_v2.Condition(type_="Ready", state=State.CONDITION_SUCCEEDED),
    )
    with pytest.raises(NotReady):
        deploy_gcp(make_ctx("publisher"), client)
    sent = client.update_service.call_args.kwargs["service"].template
    assert sent.revision == OURS and sent.revision != live.revision
    assert sent.containers[0].image == PUBLISHER_IMAGE  # no rebuild: the same image
    assert sent.containers[0].env[2].value == "0.5"


def test_a_revision_name_taken_meanwhile_is_re_read_not_an_error(client: Any) -> None:
    client.get_service.return_value = existing_service(publisher_template("publisher-00000000-4"))
    client.update_service.side_effect = gexc.AlreadyExists("409 revision publisher-x-5 already exists")
    with pytest.raises(NotReady):
        deploy_gcp(make_ctx("publisher"), client)


# ---------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (gexc.PermissionDenied("run.services.get denied"), False),
        (gexc.InvalidArgument("bad"), False),
        (gexc.ServiceUnavailable("try again"), True),
        (gexc.Aborted("etag mismatch"), True),
    ],
)
def test_api_errors_say_whether_to_retry(client: Any, error: Exception, retryable: bool) -> None:
    client.get_service.side_effect = error
    with pytest.raises(HandlerError) as failed:
        deploy_gcp(make_ctx("publisher"), client)
    assert failed.value.retryable is retryable


def test_no_image_is_a_clear_error(client: Any) -> None:
    with pytest.raises(HandlerError) as failed:
        deploy_gcp(make_ctx("publisher", {"images": {}}), client)
    assert failed.value.retryable is False and "publisher" in failed.value.message
    client.get_service.assert_not_called()


def test_act_as_not_propagated_yet_is_waited_for_not_failed(client: Any) -> None:
    client.get_service.side_effect = gexc.NotFound("no such service")
    client.create_service.side_effect = gexc.PermissionDenied(
        "Permission 'iam.serviceaccounts.actAs' denied on service account publisher-sa@my-project.iam.gserviceaccount.com"
    )
    with pytest.raises(NotReady) as pending:
        deploy_gcp(make_ctx("publisher"), client)
    assert pending.value.retry_after == 15
    client.create_service.side_effect = gexc.PermissionDenied("run.services.create denied")
    with pytest.raises(HandlerError) as denied:
        deploy_gcp(make_ctx("publisher"), client)
    assert denied.value.retryable is False
