"""The Cloud Build and Artifact Registry fakes (tests/fakes), driven by the real client libraries.

Every test talks gRPC to fakes on loopback through ``CloudBuildClient`` /
``ArtifactRegistryClient``; builds use short delays so the whole file stays fast. The
``cloud-builds`` notifications are checked as recorded by the fake here (their publication to
Pub/Sub is in tests/integration/test_fake_cloud_build_notifications.py).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest
from google.api_core import exceptions as gexc
from google.cloud import artifactregistry_v1 as ar
from google.cloud.devtools import cloudbuild_v1 as cb
from google.protobuf import json_format

from daemon.config import Settings
from handlers.base import EffectContext
from handlers.image_builds.gcp import DOCKER_STEP, build_gcp, build_request
from machines.architecture import load_architecture
from machines.cloud_builds import effect_tag, event_from_cloud_build
from machines.errors import NotReady
from machines.hydration import hydrate
from machines.messages import RunView
from tests.fakes.artifact_registry import ArtifactRegistryFake, PushRejected, parse_image
from tests.fakes.cloud_build import (
    LOGS_RULE_MESSAGE,
    BuildFakes,
    failing_step,
    images_built_by_steps,
    start_build_fakes,
)

PROJECT = "proj-1"
LOCATION = "europe-west1"
PARENT = f"projects/{PROJECT}/locations/{LOCATION}"
REPO = f"{PARENT}/repositories/podium"
IMAGE = f"{LOCATION}-docker.pkg.dev/{PROJECT}/podium/svc:abc123def456"
BUCKET = f"{PROJECT}_cloudbuild"
OBJECT = "source/svc-0123.tar.gz"
FAST: dict[str, Any] = {"build_delay": 0.03, "queue_delay": 0.01}  # seconds queued, working
TESTDATA = Path(__file__).resolve().parents[2] / "testdata"


# ---- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture
def fakes() -> Iterator[BuildFakes]:
    with start_build_fakes(PROJECT, repositories=[(LOCATION, "podium")], **FAST) as started:
        yield started
        assert not started.cloud_build.timer_errors


@pytest.fixture
def builds(fakes: BuildFakes) -> cb.CloudBuildClient:
    return fakes.cloud_build_client()


@pytest.fixture
def registry(fakes: BuildFakes) -> ar.ArtifactRegistryClient:
    client: ar.ArtifactRegistryClient = fakes.artifact_registry_client()
    return client


def podium_build(image: str = IMAGE, **changes: Any) -> cb.Build:
    """The request Podium's gcp build handler makes, optionally changed."""
    build = build_request(
        image=image,
        bucket=BUCKET,
        object_name=OBJECT,
        module="",
        dockerfile=True,
        run_id="run-1",
        effect_id="build:svc:a0",
        service="svc",
    )
    for name, value in changes.items():
        setattr(build, name, value)
    return build


def finished(fakes: BuildFakes, build_id: str, timeout: float = 5.0) -> cb.Build:
    deadline = time.monotonic() + timeout
    while True:
        build = fakes.cloud_build.get(build_id)
        if build.status not in (cb.Build.Status.QUEUED, cb.Build.Status.WORKING):
            return build
        assert time.monotonic() < deadline, f"build {build_id} still {build.status.name}"
        time.sleep(0.01)


def statuses(fakes: BuildFakes, build_id: str) -> list[str]:
    return [n.attributes["status"] for n in fakes.cloud_build.notifications_of(build_id)]


# ---- Artifact Registry ------------------------------------------------------------------------


def test_create_repository_is_an_operation_returning_the_repository(registry: ar.ArtifactRegistryClient) -> None:
    op = registry.create_repository(
        parent=PARENT, repository_id="images", repository=ar.Repository(format_=ar.Repository.Format.DOCKER)
    )
    repo = op.result(timeout=5)
    assert repo.name == f"{PARENT}/repositories/images"
    assert repo.format_ == ar.Repository.Format.DOCKER
    assert repo.registry_uri == f"{LOCATION}-docker.pkg.dev/{PROJECT}/images"
    assert registry.get_repository(name=repo.name).name == repo.name


@pytest.mark.parametrize(
    "repository_id", ["Podium", "1podium", "podium-", "-podium", "pod_ium", "pod.ium", "a" * 64, ""]
)
def test_repository_ids_follow_the_naming_rule(registry: ar.ArtifactRegistryClient, repository_id: str) -> None:
    with pytest.raises(gexc.InvalidArgument):
        registry.create_repository(
            parent=PARENT, repository_id=repository_id, repository=ar.Repository(format_=ar.Repository.Format.DOCKER)
        )


@pytest.mark.parametrize("repository_id", ["a", "a" * 63, "my-repo-2"])
def test_valid_repository_ids_are_accepted(registry: ar.ArtifactRegistryClient, repository_id: str) -> None:
    repo = registry.create_repository(
        parent=PARENT, repository_id=repository_id, repository=ar.Repository(format_=ar.Repository.Format.DOCKER)
    ).result(timeout=5)
    assert repo.name.endswith("/" + repository_id)


def test_a_second_repository_of_the_same_id_already_exists(registry: ar.ArtifactRegistryClient) -> None:
    with pytest.raises(gexc.AlreadyExists):
        registry.create_repository(
            parent=PARENT, repository_id="podium", repository=ar.Repository(format_=ar.Repository.Format.DOCKER)
        )
    # the same id in another location is another repository
    other = registry.create_repository(
        parent=f"projects/{PROJECT}/locations/us-central1",
        repository_id="podium",
        repository=ar.Repository(format_=ar.Repository.Format.DOCKER),
    ).result(timeout=5)
    assert other.name == f"projects/{PROJECT}/locations/us-central1/repositories/podium"


def test_a_repository_needs_a_format(registry: ar.ArtifactRegistryClient) -> None:
    with pytest.raises(gexc.InvalidArgument, match="format"):
        registry.create_repository(parent=PARENT, repository_id="nofmt", repository=ar.Repository())


def test_unknown_repositories_and_images_are_not_found(registry: ar.ArtifactRegistryClient) -> None:
    with pytest.raises(gexc.NotFound):
        registry.get_repository(name=f"{PARENT}/repositories/missing")
    with pytest.raises(gexc.NotFound):
        list(registry.list_docker_images(parent=f"{PARENT}/repositories/missing"))
    with pytest.raises(gexc.NotFound):
        registry.get_docker_image(name=f"{REPO}/dockerImages/svc@sha256:" + "0" * 64)


def test_repositories_are_listed_per_location_and_by_name(registry: ar.ArtifactRegistryClient) -> None:
    for repository_id in ("alpha", "beta"):
        registry.create_repository(
            parent=PARENT, repository_id=repository_id, repository=ar.Repository(format_=ar.Repository.Format.DOCKER)
        ).result(timeout=5)
    names = [r.name.rsplit("/", 1)[1] for r in registry.list_repositories(parent=PARENT)]
    assert names == ["alpha", "beta", "podium"]
    filtered = registry.list_repositories(request={"parent": PARENT, "filter": f'name="{PARENT}/repositories/b*"'})
    assert [r.name.rsplit("/", 1)[1] for r in filtered] == ["beta"]
    assert list(registry.list_repositories(parent=f"projects/{PROJECT}/locations/asia-east1")) == []


def test_a_push_to_a_missing_repository_is_refused_as_the_registry_does(fakes: BuildFakes) -> None:
    with pytest.raises(PushRejected, match='name unknown: Repository "nope" not found'):
        fakes.registry.push(f"{LOCATION}-docker.pkg.dev/{PROJECT}/nope/svc:v1")
    with pytest.raises(PushRejected):
        fakes.registry.push(f"{LOCATION}-docker.pkg.dev/{PROJECT}/podium")  # no image name
    with pytest.raises(PushRejected):
        fakes.registry.push(f"gcr.io/{PROJECT}/svc:v1")


def test_pushed_images_are_listed_and_a_tag_moves_to_the_newer_image(
    fakes: BuildFakes, registry: ar.ArtifactRegistryClient
) -> None:
    first = fakes.registry.push(f"{LOCATION}-docker.pkg.dev/{PROJECT}/podium/svc:v1", digest="sha256:" + "1" * 64)
    second = fakes.registry.push(f"{LOCATION}-docker.pkg.dev/{PROJECT}/podium/svc:v1", digest="sha256:" + "2" * 64)
    fakes.registry.push(f"{LOCATION}-docker.pkg.dev/{PROJECT}/podium/team/api:v2", digest="sha256:" + "3" * 64)
    images = {i.uri: list(i.tags) for i in registry.list_docker_images(parent=REPO)}
    assert images == {
        first.uri: [],
        second.uri: ["v1"],
        f"{LOCATION}-docker.pkg.dev/{PROJECT}/podium/team/api@sha256:" + "3" * 64: ["v2"],
    }
    nested = registry.get_docker_image(name=f"{REPO}/dockerImages/team%2Fapi@sha256:" + "3" * 64)
    assert nested.tags == ["v2"]
    assert fakes.pushed() == sorted(
        [
            first.uri,  # untagged now: listed by digest
            f"{LOCATION}-docker.pkg.dev/{PROJECT}/podium/svc:v1",
            f"{LOCATION}-docker.pkg.dev/{PROJECT}/podium/team/api:v2",
        ]
    )


def test_immutable_tags_are_not_moved() -> None:
    fake = ArtifactRegistryFake()
    fake.create_repository(
        PARENT,
        "locked",
        ar.Repository(
            format_=ar.Repository.Format.DOCKER,
            docker_config=ar.Repository.DockerRepositoryConfig(immutable_tags=True),
        ),
    )
    ref = f"{LOCATION}-docker.pkg.dev/{PROJECT}/locked/svc:v1"
    fake.push(ref, digest="sha256:" + "1" * 64)
    fake.push(ref, digest="sha256:" + "1" * 64)  # the same image again is fine
    with pytest.raises(PushRejected, match="immutable"):
        fake.push(ref, digest="sha256:" + "2" * 64)


def test_image_references_are_parsed() -> None:
    ref = parse_image(f"{LOCATION}-docker.pkg.dev/{PROJECT}/podium/team/api:v2")
    assert (ref.location, ref.project, ref.repository, ref.image, ref.tag) == (LOCATION, PROJECT, "podium", "team/api", "v2")
    for bad in (f"{LOCATION}-docker.pkg.dev/{PROJECT}/Podium/svc", f"{LOCATION}-docker.pkg.dev/{PROJECT}/podium/svc:-x"):
        with pytest.raises(ValueError):
            parse_image(bad)


# ---- Cloud Build: a build's life --------------------------------------------------------------


def test_a_build_goes_queued_working_success_and_pushes_its_image(
    fakes: BuildFakes, builds: cb.CloudBuildClient, registry: ar.ArtifactRegistryClient
) -> None:
    op = builds.create_build(project_id=PROJECT, build=podium_build())
    created = op.metadata.build
    assert created.status == cb.Build.Status.QUEUED and created.id
    assert created.name == f"projects/{PROJECT}/locations/global/builds/{created.id}"
    done = finished(fakes, created.id)
    assert done.status == cb.Build.Status.SUCCESS, done.status_detail
    result = op.result(timeout=5)
    assert result.id == created.id and result.status == cb.Build.Status.SUCCESS
    assert [(i.name, i.digest.startswith("sha256:")) for i in result.results.images] == [(IMAGE, True)]
    assert [s.status for s in result.steps] == [cb.Build.Status.SUCCESS]
    assert statuses(fakes, created.id) == ["QUEUED", "WORKING", "SUCCESS"]

    stored = list(registry.list_docker_images(parent=REPO))
    assert [(i.uri, list(i.tags)) for i in stored] == [
        (f"{LOCATION}-docker.pkg.dev/{PROJECT}/podium/svc@{result.results.images[0].digest}", ["abc123def456"])
    ]
    # Podium's own translator reads the SUCCESS notification as build.succeeded with the digest
    last = fakes.cloud_build.notifications_of(created.id)[-1]
    event = event_from_cloud_build(last.data, last.attributes)
    assert event is not None and event.type == "build.succeeded"
    assert event.data["image"] == stored[0].uri
    assert event.data["effect_id"] == "build:svc:a0"


def test_notifications_carry_the_rest_json_of_the_build(fakes: BuildFakes, builds: cb.CloudBuildClient) -> None:
    build_id = builds.create_build(project_id=PROJECT, build=podium_build()).metadata.build.id
    finished(fakes, build_id)
    notes = fakes.cloud_build.notifications_of(build_id)
    assert {n.topic for n in notes} == {f"projects/{PROJECT}/topics/cloud-builds"}
    for note in notes:
        doc = json.loads(note.data)
        assert note.attributes == {"buildId": build_id, "status": doc["status"]}
        assert doc["projectId"] == PROJECT and "createTime" in doc
        assert doc["source"] == {"storageSource": {"bucket": BUCKET, "object": OBJECT}}
        assert doc["options"]["logging"] == "CLOUD_LOGGING_ONLY"
        assert all("_" not in key for key in doc)  # camelCase JSON names, not proto field names
    final = json.loads(notes[-1].data)
    assert final == json_format.MessageToDict(cb.Build.pb(builds.get_build(project_id=PROJECT, id=build_id)))
    assert final["results"]["images"][0]["name"] == IMAGE
    assert "startTime" in final and "finishTime" in final


def test_a_push_to_a_missing_repository_fails_the_build(fakes: BuildFakes, builds: cb.CloudBuildClient) -> None:
    image = f"{LOCATION}-docker.pkg.dev/{PROJECT}/missing/svc:v1"
    op = builds.create_build(project_id=PROJECT, build=podium_build(image=image))
    done = finished(fakes, op.metadata.build.id)
    assert done.status == cb.Build.Status.FAILURE
    assert done.failure_info.type_ == cb.Build.FailureInfo.FailureType.PUSH_FAILED
    assert 'name unknown: Repository "missing" not found' in done.failure_info.detail
    assert not done.results.images
    with pytest.raises(gexc.GoogleAPICallError, match="Build failed"):
        op.result(timeout=5)
    last = fakes.cloud_build.notifications_of(done.id)[-1]
    event = event_from_cloud_build(last.data, last.attributes)
    assert event is not None and event.type == "build.failed"
    assert "PUSH_FAILED" in event.data["error"] and "missing" in event.data["error"]
    assert fakes.pushed() == []


def test_a_missing_source_object_fails_the_build() -> None:
    uploaded = {(BUCKET, "source/present.tar.gz")}
    with start_build_fakes(
        PROJECT, repositories=[(LOCATION, "podium")], source_exists=lambda b, o: (b, o) in uploaded, **FAST
    ) as fakes:
        client = fakes.cloud_build_client()
        build_id = client.create_build(project_id=PROJECT, build=podium_build()).metadata.build.id
        done = finished(fakes, build_id)
        assert done.status == cb.Build.Status.FAILURE
        assert done.failure_info.type_ == cb.Build.FailureInfo.FailureType.FETCH_SOURCE_FAILED
        assert f"gs://{BUCKET}/{OBJECT}" in done.status_detail
        build = podium_build()
        build.source.storage_source.object_ = "source/present.tar.gz"
        ok_id = client.create_build(project_id=PROJECT, build=build).metadata.build.id
        assert finished(fakes, ok_id).status == cb.Build.Status.SUCCESS


def test_a_failing_step_fails_the_build_as_cloud_build_reports_it() -> None:
    rules = [failing_step(lambda step: step.name == DOCKER_STEP), images_built_by_steps]
    with start_build_fakes(PROJECT, repositories=[(LOCATION, "podium")], rules=rules, **FAST) as fakes:
        client = fakes.cloud_build_client()
        build = podium_build()
        build.steps = [cb.BuildStep(name="gcr.io/cloud-builders/git", args=["version"]), *build.steps]
        build_id = client.create_build(project_id=PROJECT, build=build).metadata.build.id
        done = finished(fakes, build_id)
        assert done.status == cb.Build.Status.FAILURE
        assert done.status_detail == f'build step 1 "{DOCKER_STEP}" failed: step exited with non-zero status: 1'
        assert done.failure_info.type_ == cb.Build.FailureInfo.FailureType.USER_BUILD_STEP
        assert [s.status for s in done.steps] == [cb.Build.Status.SUCCESS, cb.Build.Status.FAILURE]
        assert fakes.pushed() == []


def test_an_image_that_no_step_builds_is_not_found_at_push(fakes: BuildFakes, builds: cb.CloudBuildClient) -> None:
    build = podium_build()
    build.images = [f"{LOCATION}-docker.pkg.dev/{PROJECT}/podium/other:v1"]
    done = finished(fakes, builds.create_build(project_id=PROJECT, build=build).metadata.build.id)
    assert done.failure_info.type_ == cb.Build.FailureInfo.FailureType.PUSH_IMAGE_NOT_FOUND
    assert "An image does not exist locally with the tag" in done.status_detail


def test_substitutions_are_expanded_in_images_and_steps(fakes: BuildFakes, builds: cb.CloudBuildClient) -> None:
    image = f"{LOCATION}-docker.pkg.dev/$PROJECT_ID/podium/svc:${{_TAG}}"
    build = cb.Build(
        steps=[cb.BuildStep(name=DOCKER_STEP, args=["build", "-t", image, "."])],
        images=[image],
        substitutions={"_TAG": "v7"},
        options=cb.BuildOptions(logging=cb.BuildOptions.LoggingMode.CLOUD_LOGGING_ONLY),
    )
    done = finished(fakes, builds.create_build(project_id=PROJECT, build=build).metadata.build.id)
    assert done.status == cb.Build.Status.SUCCESS, done.status_detail
    assert done.results.images[0].name == f"{LOCATION}-docker.pkg.dev/{PROJECT}/podium/svc:v7"


# ---- Cloud Build: what CreateBuild refuses ----------------------------------------------------


SA = f"projects/{PROJECT}/serviceAccounts/builder@{PROJECT}.iam.gserviceaccount.com"
LOOSE = cb.BuildOptions.SubstitutionOption.ALLOW_LOOSE


def _loose(**fields: Any) -> cb.Build:
    return podium_build(**fields)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (_loose(steps=[]), "at least one step"),
        (_loose(steps=[cb.BuildStep(args=["x"])]), "no name"),
        (_loose(service_account=f"builder@{PROJECT}.iam.gserviceaccount.com"), "projects/{PROJECT_ID}"),
        (_loose(service_account=SA, options=cb.BuildOptions()), LOGS_RULE_MESSAGE),
        (
            _loose(service_account=SA, options=cb.BuildOptions(logging=cb.BuildOptions.LoggingMode.GCS_ONLY)),
            LOGS_RULE_MESSAGE,
        ),
        (_loose(tags=["podium", "bad tag"]), "invalid build tag"),
        (_loose(tags=["-leading-dash"]), "invalid build tag"),
        (_loose(substitutions={"lower": "x"}), "must begin with an underscore"),
        (_loose(options=cb.BuildOptions(logging=cb.BuildOptions.LoggingMode.CLOUD_LOGGING_ONLY)), "not matched"),
        (
            cb.Build(
                steps=[cb.BuildStep(name=DOCKER_STEP, args=["build", "-t", "$_IMAGE", "."])],
                options=cb.BuildOptions(logging=cb.BuildOptions.LoggingMode.CLOUD_LOGGING_ONLY),
            ),
            'template "_IMAGE" is not matched',
        ),
        (
            _loose(source=cb.Source(storage_source=cb.StorageSource(bucket=BUCKET))),
            "bucket and object",
        ),
    ],
)
def test_create_build_refuses(builds: cb.CloudBuildClient, fakes: BuildFakes, build: cb.Build, message: str) -> None:
    with pytest.raises(gexc.InvalidArgument) as caught:
        builds.create_build(project_id=PROJECT, build=build)
    assert message in caught.value.message
    assert fakes.builds() == [] and fakes.notifications() == []


@pytest.mark.parametrize(
    "changes",
    [
        {"options": cb.BuildOptions(logging=cb.BuildOptions.LoggingMode.CLOUD_LOGGING_ONLY, substitution_option=LOOSE)},
        {"options": cb.BuildOptions(logging=cb.BuildOptions.LoggingMode.NONE, substitution_option=LOOSE)},
        {"logs_bucket": "gs://my-build-logs", "options": cb.BuildOptions(substitution_option=LOOSE)},
        {
            "options": cb.BuildOptions(
                default_logs_bucket_behavior=cb.BuildOptions.DefaultLogsBucketBehavior.REGIONAL_USER_OWNED_BUCKET,
                substitution_option=LOOSE,
            )
        },
    ],
)
def test_a_service_account_build_that_says_where_logs_go_is_accepted(
    fakes: BuildFakes, builds: cb.CloudBuildClient, changes: dict[str, Any]
) -> None:
    op = builds.create_build(project_id=PROJECT, build=podium_build(service_account=SA, **changes))
    assert finished(fakes, op.metadata.build.id).status == cb.Build.Status.SUCCESS


def test_a_numeric_service_account_id_is_accepted(fakes: BuildFakes, builds: cb.CloudBuildClient) -> None:
    build = podium_build(service_account=f"projects/{PROJECT}/serviceAccounts/112233445566778899")
    assert builds.create_build(project_id=PROJECT, build=build).metadata.build.id


# ---- Cloud Build: get, list, cancel -----------------------------------------------------------


def test_builds_are_listed_newest_first_and_filtered(fakes: BuildFakes, builds: cb.CloudBuildClient) -> None:
    first = builds.create_build(project_id=PROJECT, build=podium_build()).metadata.build.id
    other = podium_build(tags=["podium", "run-other", effect_tag("run-other", "build:svc:a0")])
    second = builds.create_build(project_id=PROJECT, build=other).metadata.build.id
    finished(fakes, first)
    finished(fakes, second)
    assert [b.id for b in builds.list_builds(project_id=PROJECT)] == [second, first]
    tag = effect_tag("run-1", "build:svc:a0")
    assert [b.id for b in builds.list_builds(project_id=PROJECT, filter=f'tags="{tag}"')] == [first]
    assert [b.id for b in builds.list_builds(project_id=PROJECT, filter=f'tags!="{tag}" AND status="SUCCESS"')] == [second]
    assert [b.id for b in builds.list_builds(project_id=PROJECT, filter=f'build_id="{first}"')] == [first]
    pages = builds.list_builds(request={"project_id": PROJECT, "page_size": 1}).pages
    assert [[b.id for b in p.builds] for p in pages] == [[second], [first]]
    assert list(builds.list_builds(project_id="another-project")) == []
    with pytest.raises(gexc.InvalidArgument):
        list(builds.list_builds(project_id=PROJECT, filter='tags="a" OR tags="b"'))
    with pytest.raises(gexc.InvalidArgument):
        list(builds.list_builds(project_id=PROJECT, filter='colour="blue"'))


def test_get_build_by_ids_or_by_name(fakes: BuildFakes, builds: cb.CloudBuildClient) -> None:
    created = builds.create_build(project_id=PROJECT, build=podium_build()).metadata.build
    assert builds.get_build(project_id=PROJECT, id=created.id).id == created.id
    assert builds.get_build(request={"name": created.name}).id == created.id
    with pytest.raises(gexc.NotFound):
        builds.get_build(project_id=PROJECT, id="no-such-build")
    with pytest.raises(gexc.NotFound):
        builds.get_build(project_id="another-project", id=created.id)
    finished(fakes, created.id)


def test_a_queued_build_can_be_cancelled_once() -> None:
    with start_build_fakes(PROJECT, repositories=[(LOCATION, "podium")], queue_delay=0.3, build_delay=0.01) as fakes:
        client = fakes.cloud_build_client()
        op = client.create_build(project_id=PROJECT, build=podium_build())
        build_id = op.metadata.build.id
        cancelled = client.cancel_build(project_id=PROJECT, id=build_id)
        assert cancelled.status == cb.Build.Status.CANCELLED
        with pytest.raises(gexc.FailedPrecondition):
            client.cancel_build(project_id=PROJECT, id=build_id)
        with pytest.raises(gexc.Cancelled):
            op.result(timeout=5)
        time.sleep(0.4)  # past the queue delay: the cancelled build never starts
        assert statuses(fakes, build_id) == ["QUEUED", "CANCELLED"]
        assert fakes.cloud_build.get(build_id).status == cb.Build.Status.CANCELLED
        assert fakes.pushed() == []


# ---- Podium's gcp build handler against the fakes ---------------------------------------------


@dataclass
class _Storage:
    """Just enough of ``google.cloud.storage.Client`` for build_gcp: upload with if_generation_match=0."""

    objects: dict[tuple[str, str], bytes] = field(default_factory=dict)

    def bucket(self, name: str) -> Any:
        storage = self

        class Blob:
            def __init__(self, object_name: str) -> None:
                self.object_name = object_name

            def upload_from_file(self, fh: IO[bytes], *, content_type: str, if_generation_match: int) -> None:
                if (name, self.object_name) in storage.objects:
                    raise gexc.PreconditionFailed("exists")
                storage.objects[(name, self.object_name)] = fh.read()

        class Bucket:
            def blob(self, object_name: str) -> Blob:
                return Blob(object_name)

        return Bucket()


def test_podiums_gcp_build_handler_runs_against_the_fakes(tmp_path: Path) -> None:
    source_root = tmp_path / "src"
    shutil.copytree(TESTDATA, source_root, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    arch = hydrate(load_architecture((source_root / "architecture.yaml").read_text()))
    run = RunView.model_validate({"run_id": "demo-1", "architecture": arch.to_dict(), "source_root": str(source_root)})
    storage = _Storage()
    # testdata/architecture.yaml: project podium-local, region europe-west1, image_repo podium
    with start_build_fakes(
        "podium-test",
        repositories=[],
        source_exists=lambda bucket, name: (bucket, name) in storage.objects,
        **FAST,
    ) as fakes:
        endpoints = f"cloudbuild={fakes.cloud_build_endpoint},artifactregistry={fakes.artifact_registry_endpoint}"
        settings = Settings(project="podium-test", state_dir=tmp_path / "state", gcp_endpoints=endpoints)
        ctx = EffectContext("demo-1", "build:publisher:a0", "build", "publisher", {}, 0, run, settings)
        with pytest.raises(NotReady):  # Podium creates the image repository first
            build_gcp(ctx, storage=storage)
        assert [r.name for r in fakes.registry.repositories()] == [
            "projects/podium-local/locations/europe-west1/repositories/podium"
        ]
        assert build_gcp(ctx, storage=storage) == []
        (created,) = fakes.builds()
        assert created.service_account.endswith("/serviceAccounts/podium-builder@podium-test.iam.gserviceaccount.com")
        assert build_gcp(ctx, storage=storage) == []  # in flight: not started twice
        assert len(fakes.builds()) == 1
        done = finished(fakes, created.id)
        assert done.status == cb.Build.Status.SUCCESS, done.status_detail
        (outcome,) = build_gcp(ctx, storage=storage)  # succeeded: reported at once
        assert outcome.type == "build.succeeded"
        (pushed,) = fakes.pushed()
        assert pushed.startswith("europe-west1-docker.pkg.dev/podium-local/podium/publisher:")
        assert outcome.data["image"].startswith("europe-west1-docker.pkg.dev/podium-local/podium/publisher@sha256:")
