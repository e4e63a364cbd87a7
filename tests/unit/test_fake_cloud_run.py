"""The Cloud Run Admin v2 fake (tests/fakes/cloud_run.py), through the real ServicesClient."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from google.api_core import exceptions as gexc
from google.api_core.future import polling
from google.cloud import run_v2
from google.iam.v1 import iam_policy_pb2, policy_pb2

from tests.fakes.cloud_run import CloudRunFake, start_cloud_run_fake
from tests.fakes.grpc_server import insecure_client

PARENT = "projects/my-project/locations/us-central1"
NAME = f"{PARENT}/services/api"
IMAGE = "us-docker.pkg.dev/my-project/podium/api@sha256:" + "a" * 64
SA = "api-runner@my-project.iam.gserviceaccount.com"
State = run_v2.Condition.State
FAST = polling.DEFAULT_POLLING.with_delay(initial=0.01, maximum=0.05, multiplier=1.5).with_timeout(5)


@pytest.fixture
def fake() -> Iterator[CloudRunFake]:
    server = start_cloud_run_fake(ready_delay=0.05, seed=7)
    yield server
    server.stop()


@pytest.fixture
def client(fake: CloudRunFake) -> run_v2.ServicesClient:
    return insecure_client(run_v2.ServicesClient, fake.endpoint)


def template(*, image: str = IMAGE, cpu: str | None = "1", memory: str | None = "512Mi",
             cpu_idle: bool | None = None, revision: str = "", **fields: Any) -> run_v2.RevisionTemplate:
    limits = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v is not None}
    resources = run_v2.ResourceRequirements(limits=limits)
    if cpu_idle is not None:
        resources.cpu_idle = cpu_idle
    return run_v2.RevisionTemplate(
        revision=revision,
        containers=[run_v2.Container(image=image, resources=resources,
                                     env=[run_v2.EnvVar(name="MODE", value="a")])],
        **fields,
    )


def create(client: run_v2.ServicesClient, tmpl: run_v2.RevisionTemplate | None = None,
           service_id: str = "api", **fields: Any) -> Any:
    return client.create_service(
        parent=PARENT, service_id=service_id,
        service=run_v2.Service(template=tmpl if tmpl is not None else template(), **fields),
    )


def deployed(client: run_v2.ServicesClient, tmpl: run_v2.RevisionTemplate | None = None) -> run_v2.Service:
    create(client, tmpl).result(polling=FAST)
    return client.get_service(name=NAME)


def update(client: run_v2.ServicesClient, service: run_v2.Service) -> run_v2.Service:
    client.update_service(service=service).result(polling=FAST)
    return client.get_service(name=NAME)


# ---- lifecycle and readiness ---------------------------------------------------------------


def test_create_reconciles_then_becomes_ready_with_a_uri() -> None:
    fake = start_cloud_run_fake(ready_delay=0.3)
    try:
        client = fake.client()
        op = create(client)
        pending = client.get_service(name=NAME)
        assert pending.reconciling
        assert pending.terminal_condition.type_ == "Ready"
        assert pending.terminal_condition.state == State.CONDITION_PENDING
        assert pending.latest_created_revision.startswith(f"{NAME}/revisions/api-00001-")
        assert pending.latest_ready_revision == "" and pending.uri == ""
        assert not op.done()

        result = op.result(polling=FAST)
        assert result.terminal_condition.state == State.CONDITION_SUCCEEDED
        ready = client.get_service(name=NAME)
        assert not ready.reconciling
        assert ready.terminal_condition.state == State.CONDITION_SUCCEEDED
        assert ready.latest_ready_revision == ready.latest_created_revision
        assert ready.observed_generation == ready.generation == 1
        assert re.fullmatch(r"https://api-[a-z0-9]{10}-uc\.a\.run\.app", ready.uri)
        assert ready.ingress == run_v2.IngressTraffic.INGRESS_TRAFFIC_ALL
        assert ready.etag and ready.uid and ready.create_time
    finally:
        fake.stop()


def test_get_list_and_delete(fake: CloudRunFake, client: run_v2.ServicesClient) -> None:
    for service_id in ("api", "web", "worker"):
        create(client, service_id=service_id).result(polling=FAST)
    first = client.list_services(request=run_v2.ListServicesRequest(parent=PARENT, page_size=2))
    assert [s.name.rsplit("/", 1)[1] for s in first] == ["api", "web", "worker"]  # pager follows tokens
    other = client.list_services(parent="projects/my-project/locations/europe-west1")
    assert list(other) == []

    deleted = client.delete_service(name=NAME).result(polling=FAST)
    assert deleted.name == NAME
    with pytest.raises(gexc.NotFound):
        client.get_service(name=NAME)
    assert sorted(fake.services()) == [f"{PARENT}/services/web", f"{PARENT}/services/worker"]


def test_missing_services_are_not_found(client: run_v2.ServicesClient) -> None:
    with pytest.raises(gexc.NotFound, match="Resource 'api' of kind 'SERVICE' in region 'us-central1'"):
        client.get_service(name=NAME)
    with pytest.raises(gexc.NotFound):
        client.delete_service(name=NAME)
    with pytest.raises(gexc.NotFound):
        client.update_service(service=run_v2.Service(name=NAME, template=template()))


def test_creating_twice_is_already_exists(client: run_v2.ServicesClient) -> None:
    create(client).result(polling=FAST)
    with pytest.raises(gexc.AlreadyExists, match="Resource 'api' already exists"):
        create(client)


def test_update_with_allow_missing_creates(client: run_v2.ServicesClient) -> None:
    client.update_service(
        request=run_v2.UpdateServiceRequest(service=run_v2.Service(name=NAME, template=template()),
                                            allow_missing=True)
    ).result(polling=FAST)
    assert client.get_service(name=NAME).generation == 1


def test_validate_only_persists_nothing(fake: CloudRunFake, client: run_v2.ServicesClient) -> None:
    client.create_service(request=run_v2.CreateServiceRequest(
        parent=PARENT, service_id="api", service=run_v2.Service(template=template()), validate_only=True,
    )).result(polling=FAST)
    assert fake.services() == {}


@pytest.mark.parametrize("service_id", ["1api", "Api", "api_v2", "api-", "a" * 50, ""])
def test_service_id_rules(client: run_v2.ServicesClient, service_id: str) -> None:
    with pytest.raises(gexc.InvalidArgument, match="service_id"):
        create(client, service_id=service_id)


def test_the_longest_service_id_is_accepted(client: run_v2.ServicesClient) -> None:
    create(client, service_id="a" * 49).result(polling=FAST)


# ---- etag ------------------------------------------------------------------------------------


def test_a_stale_etag_is_aborted(client: run_v2.ServicesClient) -> None:
    first = deployed(client)
    second = update(client, run_v2.Service(first, labels={"team": "a"}))
    assert second.etag != first.etag
    with pytest.raises(gexc.Aborted, match="Etag mismatch"):
        client.update_service(service=run_v2.Service(first, labels={"team": "b"}))
    with pytest.raises(gexc.Aborted):
        client.delete_service(request=run_v2.DeleteServiceRequest(name=NAME, etag=first.etag))
    update(client, run_v2.Service(second, labels={"team": "b"}))  # the current etag is accepted
    without = run_v2.Service(second, labels={"team": "c"})
    without.etag = ""
    assert update(client, without).labels["team"] == "c"  # no etag: the write is permitted


# ---- revisions ------------------------------------------------------------------------------


def test_revisions_are_generated_kept_and_only_made_when_the_template_changes(
    fake: CloudRunFake, client: run_v2.ServicesClient,
) -> None:
    first = deployed(client)
    assert re.fullmatch(rf"{NAME}/revisions/api-00001-[a-z0-9]{{3}}", first.latest_ready_revision)

    labelled = update(client, run_v2.Service(first, labels={"team": "data"}))
    assert labelled.generation == 2
    assert labelled.latest_created_revision == first.latest_created_revision
    assert len(fake.revisions(NAME)) == 1

    bigger = run_v2.Service(labelled)
    bigger.template = template(cpu="2", memory="2Gi")
    bigger.template.containers[0].env = [run_v2.EnvVar(name="MODE", value="b")]
    second = update(client, bigger)
    assert re.fullmatch(rf"{NAME}/revisions/api-00003-[a-z0-9]{{3}}", second.latest_ready_revision)

    revisions = fake.revisions("api")
    assert [(r.memory, r.cpu, r.env["MODE"], r.image) for r in revisions] == [
        ("512Mi", "1", "a", IMAGE), ("2Gi", "2", "b", IMAGE),
    ]
    assert [r.state for r in revisions] == ["READY", "READY"]


def test_a_named_revision_is_used_and_a_reused_name_with_other_settings_conflicts(
    fake: CloudRunFake, client: run_v2.ServicesClient,
) -> None:
    first = deployed(client, template(revision="api-abc"))
    assert first.latest_ready_revision == f"{NAME}/revisions/api-abc"
    changed = run_v2.Service(first)
    changed.template = template(revision="api-abc", memory="1Gi")
    with pytest.raises(gexc.AlreadyExists, match="Revision named 'api-abc' with different configuration"):
        client.update_service(service=changed)
    assert [r.revision_id for r in fake.revisions(NAME)] == ["api-abc"]


@pytest.mark.parametrize("revision", ["web-abc", "apiabc", "api-", "api-ABC"])
def test_revision_names_must_start_with_the_service_name(client: run_v2.ServicesClient, revision: str) -> None:
    with pytest.raises(gexc.InvalidArgument, match="template.revision"):
        create(client, template(revision=revision))


# ---- resources ------------------------------------------------------------------------------

GEN2 = run_v2.ExecutionEnvironment.EXECUTION_ENVIRONMENT_GEN2


@pytest.mark.parametrize(
    ("tmpl", "message"),
    [
        (template(cpu="3"), "one of 1, 2, 4, 6 or 8"),
        (template(cpu="10"), "one of 1, 2, 4, 6 or 8"),
        (template(cpu="1.5"), "one of 1, 2, 4, 6 or 8"),
        (template(cpu="0.05", cpu_idle=True), "minimum vCPU setting is 0.08"),
        (template(cpu="0.0805", cpu_idle=True), "increments of 0.001"),
        (template(cpu="lots"), "Invalid value specified for cpu"),
        (template(cpu="0.5", cpu_idle=False), "request-based billing"),
        (template(cpu="0.5"), "request-based billing"),  # resources set, cpu_idle left false
        (template(cpu="0.5", cpu_idle=True, max_instance_request_concurrency=80),
         "Total cpu < 1 is not supported with concurrency > 1"),
        (template(cpu="0.5", cpu_idle=True, execution_environment=GEN2), "second generation"),
        (template(max_instance_request_concurrency=1001), "max_instance_request_concurrency"),
    ],
)
def test_cpu_rules(client: run_v2.ServicesClient, tmpl: run_v2.RevisionTemplate, message: str) -> None:
    with pytest.raises(gexc.InvalidArgument, match=re.escape(message)):
        create(client, tmpl)


@pytest.mark.parametrize(
    "tmpl",
    [
        template(cpu="0.5", cpu_idle=True),
        template(cpu="500m", cpu_idle=True, max_instance_request_concurrency=1),
        template(cpu="0.08", cpu_idle=True, memory="128Mi"),
        template(cpu="2", memory="8Gi"),
        template(cpu="4", memory="16Gi"),
        template(cpu="8", memory="32Gi"),
        template(cpu="1000m", memory="4G"),
        template(cpu=None, memory=None),
        run_v2.RevisionTemplate(containers=[run_v2.Container(image=IMAGE)]),  # no resources at all
    ],
)
def test_allowed_resources(client: run_v2.ServicesClient, tmpl: run_v2.RevisionTemplate) -> None:
    create(client, tmpl).result(polling=FAST)


@pytest.mark.parametrize(
    ("tmpl", "message"),
    [
        (template(cpu="1", memory="8Gi"), "For 1.0 CPU, memory must be between 128Mi and 4Gi inclusive"),
        (template(cpu="2", memory="9Gi"), "For 2.0 CPU, memory must be between 128Mi and 8Gi inclusive"),
        (template(cpu="4", memory="1Gi"), "For 4.0 CPU, memory must be between 2Gi and 16Gi inclusive"),
        (template(cpu="8", memory="33Gi"), "between 4Gi and 32Gi"),
        (template(cpu="1", memory="100Mi"), "between 128Mi and 4Gi"),
        (template(cpu="1", memory="256Mi", execution_environment=GEN2),
         "with gen2 execution environment. For 1.0 CPU, memory must be between 512Mi and 4Gi"),
        (template(cpu="0.25", cpu_idle=True, memory="768Mi"), "For 0.25 CPU, memory must be between 128Mi and 512Mi"),
        (template(cpu="0.5", cpu_idle=True, memory="2Gi"), "between 128Mi and 1Gi"),
        (template(memory="lots"), "Invalid value specified for memory"),
        (template(memory="512Xi"), "Invalid value specified for memory"),
    ],
)
def test_memory_rules(client: run_v2.ServicesClient, tmpl: run_v2.RevisionTemplate, message: str) -> None:
    with pytest.raises(gexc.InvalidArgument, match=re.escape(message)):
        create(client, tmpl)


def test_a_fractional_cpu_update_with_cpu_always_on_is_refused(client: run_v2.ServicesClient) -> None:
    first = deployed(client)
    cheaper = run_v2.Service(first)
    cheaper.template = template(cpu="0.5", cpu_idle=False)
    with pytest.raises(gexc.InvalidArgument, match="request-based billing"):
        client.update_service(service=cheaper)


# ---- scaling, ingress, identity, shape --------------------------------------------------------


@pytest.mark.parametrize(
    ("service", "message"),
    [
        (run_v2.Service(template=template(scaling=run_v2.RevisionScaling(min_instance_count=-1))),
         "template.scaling.min_instance_count"),
        (run_v2.Service(template=template(scaling=run_v2.RevisionScaling(max_instance_count=-2))),
         "template.scaling.max_instance_count"),
        (run_v2.Service(template=template(scaling=run_v2.RevisionScaling(min_instance_count=5, max_instance_count=3))),
         "must not exceed max_instance_count"),
        (run_v2.Service(template=template(), scaling=run_v2.ServiceScaling(min_instance_count=-1)),
         "scaling.min_instance_count"),
        (run_v2.Service(template=template(service_account="not-an-email")), "template.service_account"),
        (run_v2.Service(template=template(service_account="runner@gmail.com")), "template.service_account"),
        (run_v2.Service(template=template(service_account="abc@my-project.iam.gserviceaccount.com")),
         "template.service_account"),
        (run_v2.Service(template=template(service_account="Api_Runner@my-project.iam.gserviceaccount.com")),
         "template.service_account"),
        (run_v2.Service(), "template: Required"),
        (run_v2.Service(template=run_v2.RevisionTemplate()), "at least one container"),
        (run_v2.Service(template=template(image="")), "image: Required"),
    ],
)
def test_spec_rules(client: run_v2.ServicesClient, service: run_v2.Service, message: str) -> None:
    with pytest.raises(gexc.InvalidArgument, match=re.escape(message)):
        client.create_service(parent=PARENT, service_id="api", service=service)


def test_ingress_must_be_a_known_value(client: run_v2.ServicesClient) -> None:
    raw = run_v2.Service.pb(run_v2.Service(template=template()))
    raw.ingress = 7  # not an IngressTraffic value (set on the raw message: proto-plus warns)
    with pytest.raises(gexc.InvalidArgument, match="ingress: Invalid value 7"):
        client.create_service(parent=PARENT, service_id="api", service=run_v2.Service.wrap(raw))
    internal = run_v2.Service(template=template(),
                              ingress=run_v2.IngressTraffic.INGRESS_TRAFFIC_INTERNAL_ONLY)
    client.create_service(parent=PARENT, service_id="api", service=internal).result(polling=FAST)
    assert client.get_service(name=NAME).ingress == run_v2.IngressTraffic.INGRESS_TRAFFIC_INTERNAL_ONLY


@pytest.mark.parametrize(
    "account",
    [SA, "123456789012-compute@developer.gserviceaccount.com",
     "runner@proj.example.com.iam.gserviceaccount.com"],
)
def test_service_accounts_accepted(client: run_v2.ServicesClient, account: str) -> None:
    create(client, template(service_account=account)).result(polling=FAST)


def test_an_update_mask_updates_only_the_named_fields(client: run_v2.ServicesClient) -> None:
    first = deployed(client)
    request = run_v2.UpdateServiceRequest(
        service=run_v2.Service(name=NAME, labels={"team": "x"}, template=template(memory="1Gi")),
        update_mask={"paths": ["labels"]},
    )
    client.update_service(request=request).result(polling=FAST)
    after = client.get_service(name=NAME)
    assert after.labels["team"] == "x"
    assert after.template == first.template


# ---- failure hook ---------------------------------------------------------------------------


def test_a_failing_image_fails_the_operation_and_keeps_the_last_ready_revision(
    fake: CloudRunFake, client: run_v2.ServicesClient,
) -> None:
    first = deployed(client)
    broken = "us-docker.pkg.dev/my-project/podium/api@sha256:" + "b" * 64
    fake.fail_image(broken)
    bad = run_v2.Service(first)
    bad.template = template(image=broken)
    with pytest.raises(gexc.FailedPrecondition, match="is not ready and cannot serve traffic"):
        client.update_service(service=bad).result(polling=FAST)
    after = client.get_service(name=NAME)
    assert not after.reconciling
    assert after.terminal_condition.state == State.CONDITION_FAILED
    assert after.terminal_condition.reason == run_v2.Condition.CommonReason.REVISION_FAILED
    failed_id = after.latest_created_revision.rsplit("/", 1)[1]
    assert f"Revision '{failed_id}'" in after.terminal_condition.message
    assert after.latest_ready_revision == first.latest_ready_revision
    assert after.observed_generation == 1
    assert [r.state for r in fake.revisions(NAME)] == ["READY", "FAILED"]


def test_the_image_failure_hook_and_the_failure_code() -> None:
    import grpc

    fake = start_cloud_run_fake(
        ready_delay=0.01, failure_code=grpc.StatusCode.INTERNAL,
        image_failure=lambda image: "crashed on boot" if image.endswith(":bad") else None,
    )
    try:
        client = fake.client()
        with pytest.raises(gexc.InternalServerError, match="crashed on boot"):
            create(client, template(image="gcr.io/p/api:bad")).result(polling=FAST)
        service = client.get_service(name=NAME)
        assert service.latest_ready_revision == ""  # "empty for newly created Services"
        assert service.uri == ""
    finally:
        fake.stop()


# ---- IAM ------------------------------------------------------------------------------------


def test_iam_policies_on_services(fake: CloudRunFake, client: run_v2.ServicesClient) -> None:
    with pytest.raises(gexc.NotFound):
        client.get_iam_policy(request=iam_policy_pb2.GetIamPolicyRequest(resource=NAME))
    deployed(client)
    policy = client.get_iam_policy(request=iam_policy_pb2.GetIamPolicyRequest(resource=NAME))
    policy.bindings.append(policy_pb2.Binding(role="roles/run.invoker", members=[f"serviceAccount:{SA}"]))
    client.set_iam_policy(request=iam_policy_pb2.SetIamPolicyRequest(resource=NAME, policy=policy))
    assert fake.bindings(NAME) == {"roles/run.invoker": {f"serviceAccount:{SA}"}}
    assert fake.bindings("api") == fake.bindings(NAME)

    client.delete_service(name=NAME).result(polling=FAST)
    assert fake.policies.resources() == []


# ---- Podium's deploy handler against the fake ---------------------------------------------------

ARCHITECTURE = """
name: fake-test
project_id: my-project
region: us-central1
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
          cpu: "2"
          memory: 1Gi
          max_instances: 3
"""
PUBLISHER_IMAGE = "us-central1-docker.pkg.dev/my-project/podium/publisher@sha256:" + "c" * 64


def _ctx(image: str) -> Any:
    from daemon.config import Settings
    from handlers.base import EffectContext
    from machines.architecture import load_architecture
    from machines.hydration import hydrate
    from machines.messages import RunView

    arch = hydrate(load_architecture(ARCHITECTURE, "test"))
    outputs = {"images": {"publisher": image},
               "service_accounts": {"publisher": "publisher-sa@my-project.iam.gserviceaccount.com"}}
    run = {"run_id": "run-1", "architecture": arch.to_dict(), "outputs": outputs}
    return EffectContext(run_id="run-1", effect_id="deploy-publisher", kind="deploy", item="publisher",
                         params={}, attempt=0, run=RunView.model_validate(run),
                         settings=Settings(project="daemon-project", backend="gcp"))


def _deploy_until_done(client: run_v2.ServicesClient, image: str) -> Any:
    import time

    from handlers.deploy.gcp import deploy_gcp
    from machines.errors import NotReady

    deadline = time.monotonic() + 3
    while True:
        try:
            return deploy_gcp(_ctx(image), client)
        except NotReady:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def test_podium_deploys_to_the_fake(fake: CloudRunFake, client: run_v2.ServicesClient) -> None:
    outcomes = _deploy_until_done(client, PUBLISHER_IMAGE)
    service = fake.services()["projects/my-project/locations/us-central1/services/publisher"]
    assert outcomes[0].data["url"] == service.uri
    (revision,) = fake.revisions("publisher")
    assert revision.revision_id == service.template.revision  # Podium names its revisions
    assert revision.revision_id.startswith("publisher-")
    assert service.latest_ready_revision == revision.name
    assert (revision.cpu, revision.memory, revision.scaling) == ("2", "1Gi", (0, 3))


def test_podium_reports_a_revision_that_fails(fake: CloudRunFake, client: run_v2.ServicesClient) -> None:
    from machines.errors import HandlerError

    fake.fail_image(PUBLISHER_IMAGE)
    with pytest.raises(HandlerError, match="is not ready and cannot serve traffic") as caught:
        _deploy_until_done(client, PUBLISHER_IMAGE)
    assert caught.value.retryable is False
