"""handlers.image_builds.gcp and machines.cloud_builds: the exact Cloud Build request, the
list-before-create idempotency, and the mapping of ``cloud-builds`` notifications to events.

Cloud Build is an autospecced ``CloudBuildClient``; Cloud Storage is a small fake with the
``google-cloud-storage`` calls the handler makes (the package is optional and may be absent).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import io
import json
import shutil
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest
import yaml
from google.api_core import exceptions as gexc
from google.cloud.artifactregistry_v1 import ArtifactRegistryClient
from google.cloud.artifactregistry_v1 import Repository as ArtifactRegistryRepository
from google.cloud.devtools import cloudbuild_v1 as cb
from google.protobuf import duration_pb2
from pytest_mock import MockerFixture

from daemon.config import Settings
from handlers import gcp_clients
from handlers.base import EffectContext
from handlers.image_builds.gcp import build_gcp, ensure_repository, stop_builds_gcp
from machines.architecture import load_architecture
from machines.cloud_builds import (
    PODIUM_TAG,
    TAG_PATTERN,
    build_tags,
    effect_tag,
    event_from_cloud_build,
    sanitize_tag,
)
from machines.errors import HandlerError, InvalidMessage, NotReady
from machines.hydration import hydrate
from machines.messages import RunView
from tests.fakes.artifact_registry import ArtifactRegistryFake
from tests.fakes.grpc_server import FakeError, insecure_client

TESTDATA = Path(__file__).resolve().parents[2] / "testdata"
PROJECT = "podium-test"
BUCKET = f"{PROJECT}_cloudbuild"
# testdata/architecture.yaml: project podium-local, region europe-west1, image_repo defaults to podium.
IMAGE_BASE = "europe-west1-docker.pkg.dev/podium-local/podium"


# ---- fakes and fixtures -----------------------------------------------------------------------


@dataclass
class FakeStorage:
    """The part of ``google.cloud.storage.Client`` the handler uses, with GCS's semantics for
    ``if_generation_match=0`` (412 if the object exists) and a missing bucket (404)."""

    buckets: dict[str, dict[str, bytes]] = field(default_factory=lambda: {BUCKET: {}})
    uploads: list[dict[str, Any]] = field(default_factory=list)
    created: list[str] = field(default_factory=list)

    def bucket(self, name: str) -> _Bucket:
        return _Bucket(self, name)

    def create_bucket(self, name: str) -> None:
        if name in self.buckets:
            raise gexc.Conflict(f"bucket {name} exists")
        self.created.append(name)
        self.buckets[name] = {}


@dataclass
class _Bucket:
    storage: FakeStorage
    name: str

    def blob(self, object_name: str) -> _Blob:
        return _Blob(self.storage, self.name, object_name)


@dataclass
class _Blob:
    storage: FakeStorage
    bucket: str
    name: str

    def upload_from_file(
        self, fh: IO[bytes], *, content_type: str, if_generation_match: int
    ) -> None:
        data = fh.read()
        self.storage.uploads.append(
            {
                "bucket": self.bucket,
                "name": self.name,
                "content_type": content_type,
                "igm": if_generation_match,
            }
        )
        if self.bucket not in self.storage.buckets:
            raise gexc.NotFound(f"bucket {self.bucket} not found")
        objects = self.storage.buckets[self.bucket]
        if if_generation_match == 0 and self.name in objects:
            raise gexc.PreconditionFailed(f"{self.name} exists")
        objects[self.name] = data


@pytest.fixture
def source_root(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    shutil.copytree(TESTDATA, root, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    return root


@pytest.fixture
def client(mocker: MockerFixture) -> Any:
    c = mocker.create_autospec(cb.CloudBuildClient, instance=True)
    c.list_builds.return_value = []
    return c


@pytest.fixture
def storage() -> FakeStorage:
    return FakeStorage()


@pytest.fixture(scope="module")
def registry_fake() -> Iterator[ArtifactRegistryFake]:
    fake = ArtifactRegistryFake()
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture(autouse=True)
def registry(registry_fake: ArtifactRegistryFake) -> Iterator[ArtifactRegistryFake]:
    """Builds reach the Artifact Registry fake through PODIUM_GCP_ENDPOINTS; the images'
    repository exists unless a test removes it."""
    global _REGISTRY_ENDPOINT
    _REGISTRY_ENDPOINT = registry_fake.endpoint
    parent = IMAGE_BASE.split("/")
    with contextlib.suppress(FakeError):
        registry_fake.create_repository(f"projects/{parent[1]}/locations/europe-west1", parent[2])
    yield registry_fake


_REGISTRY_ENDPOINT = ""


def make_ctx(
    source_root: Path, item: str, *, run_id: str = "demo-1", attempt: int = 0
) -> EffectContext:
    arch = hydrate(load_architecture((source_root / "architecture.yaml").read_text()))
    return EffectContext(
        run_id=run_id,
        effect_id=f"build:{item}:a{attempt}",
        kind="build",
        item=item,
        params={},
        attempt=0,
        run=RunView.model_validate({"run_id": run_id, "architecture": arch.to_dict(), "source_root": str(source_root)}),
        settings=Settings(
            project=PROJECT,
            state_dir=source_root.parent / "state",
            gcp_endpoints=f"artifactregistry={_REGISTRY_ENDPOINT}",
        ),
    )


def uploaded(storage: FakeStorage, service: str) -> tuple[str, bytes, str]:
    """(object name, bytes, sha256 hex) of the one source object uploaded for ``service``."""
    ((name, data),) = [
        (n, d) for n, d in storage.buckets[BUCKET].items() if n.startswith(f"source/{service}-")
    ]
    return name, data, hashlib.sha256(data).hexdigest()


def expected_build(
    *,
    service: str,
    digest: str,
    step: cb.BuildStep,
    run_id: str = "demo-1",
    effect_id: str | None = None,
) -> cb.Build:
    effect_id = effect_id or f"build:{service}:a0"
    image = f"{IMAGE_BASE}/{service}:{digest[:12]}"
    effect_hash = hashlib.sha1(run_id.encode() + b"\0" + effect_id.encode()).hexdigest()[:12]
    return cb.Build(
        source=cb.Source(
            storage_source=cb.StorageSource(
                bucket=BUCKET, object_=f"source/{service}-{digest}.tar.gz"
            )
        ),
        steps=[step],
        images=[image],
        tags=[
            "podium",
            sanitize_tag(f"run-{run_id}"),
            f"svc-{service}",
            f"effect-{effect_hash}",
        ],
        substitutions={
            "_PODIUM_RUN_ID": run_id,
            "_PODIUM_EFFECT_ID": effect_id,
            "_PODIUM_SERVICE": service,
        },
        options=cb.BuildOptions(
            logging=cb.BuildOptions.LoggingMode.CLOUD_LOGGING_ONLY,
            substitution_option=cb.BuildOptions.SubstitutionOption.ALLOW_LOOSE,
        ),
        timeout=duration_pb2.Duration(seconds=1200),
        service_account=f"projects/{PROJECT}/serviceAccounts/podium-builder@{PROJECT}.iam.gserviceaccount.com",
    )


# ---- the create_build request -----------------------------------------------------------------


def test_buildpacks_request_is_exact(source_root: Path, client: Any, storage: FakeStorage) -> None:
    outcomes = build_gcp(make_ctx(source_root, "publisher"), client=client, storage=storage)

    assert outcomes == []  # completion arrives on cloud-builds
    name, data, digest = uploaded(storage, "publisher")
    assert name == f"source/publisher-{digest}.tar.gz"
    assert (
        storage.uploads[0]["content_type"] == "application/gzip" and storage.uploads[0]["igm"] == 0
    )
    image = f"{IMAGE_BASE}/publisher:{digest[:12]}"
    pack = cb.BuildStep(
        id="build",
        name="gcr.io/k8s-skaffold/pack",
        entrypoint="pack",
        args=[
            "build",
            image,
            "--builder",
            "gcr.io/buildpacks/builder:latest",
            "--path",
            "publisher",
        ],
    )
    client.create_build.assert_called_once_with(
        project_id=PROJECT, build=expected_build(service="publisher", digest=digest, step=pack)
    )
    # The source object holds the service folder only, under its buildable_module_path.
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
    assert names[0] == "publisher"
    assert {
        "publisher/main.py",
        "publisher/requirements.txt",
        "publisher/tests/test_preflight.py",
    } <= set(names)
    assert all(n == "publisher" or n.startswith("publisher/") for n in names)


def test_dockerfile_request_is_exact(source_root: Path, client: Any, storage: FakeStorage) -> None:
    (source_root / "director" / "Dockerfile").write_text(
        'FROM python:3.11-slim\nCOPY . /app\nCMD ["python", "/app/main.py"]\n'
    )

    assert build_gcp(make_ctx(source_root, "director"), client=client, storage=storage) == []

    _, _, digest = uploaded(storage, "director")
    image = f"{IMAGE_BASE}/director:{digest[:12]}"
    docker = cb.BuildStep(
        id="build",
        name="gcr.io/cloud-builders/docker",
        args=["build", "-t", image, "."],
        dir_="director",
    )
    client.create_build.assert_called_once_with(
        project_id=PROJECT, build=expected_build(service="director", digest=digest, step=docker)
    )


def test_list_is_called_with_the_effect_tag_before_create(
    source_root: Path, client: Any, storage: FakeStorage
) -> None:
    calls: list[str] = []

    def record(name: str, result: Any) -> Any:
        def call(**_: Any) -> Any:
            calls.append(name)
            return result

        return call

    client.list_builds.side_effect = record("list", [])
    client.create_build.side_effect = record("create", None)

    build_gcp(make_ctx(source_root, "publisher"), client=client, storage=storage)

    tag = effect_tag("demo-1", "build:publisher:a0")
    client.list_builds.assert_called_once_with(project_id=PROJECT, filter=f'tags="{tag}"')
    assert calls == ["list", "create"]


def test_tags_are_sanitised_and_ids_kept_in_substitutions(
    source_root: Path, client: Any, storage: FakeStorage
) -> None:
    run_id = "Team:Release.2025-11_25:42"
    build_gcp(make_ctx(source_root, "subscriber", run_id=run_id), client=client, storage=storage)

    build = client.create_build.call_args.kwargs["build"]
    assert list(build.tags)[:3] == ["podium", "run-Team-Release.2025-11_25-42", "svc-subscriber"]
    assert all(TAG_PATTERN.match(t) for t in build.tags)
    assert dict(build.substitutions) == {
        "_PODIUM_RUN_ID": run_id,
        "_PODIUM_EFFECT_ID": "build:subscriber:a0",
        "_PODIUM_SERVICE": "subscriber",
    }


def test_sanitize_tag_edge_cases() -> None:
    assert sanitize_tag("run-a/b c@d") == "run-a-b-c-d"
    assert sanitize_tag(".hidden") == "x.hidden"
    assert len(sanitize_tag("run-" + "x" * 300)) == 128
    assert all(TAG_PATTERN.match(t) for t in build_tags("ü:1", "svc", "e"))
    # Effect ids repeat across runs (build:<svc>:a0), so the run id is part of the effect tag.
    assert effect_tag("run-a", "build:svc:a0") != effect_tag("run-b", "build:svc:a0")


def test_same_source_same_object_and_image_tag(
    source_root: Path, client: Any, storage: FakeStorage
) -> None:
    build_gcp(make_ctx(source_root, "publisher"), client=client, storage=storage)
    build_gcp(make_ctx(source_root, "publisher", attempt=1), client=client, storage=storage)

    first, second = (c.kwargs["build"] for c in client.create_build.call_args_list)
    assert first.images == second.images
    assert first.source == second.source
    # The second upload found the object (412) and moved on.
    assert len(storage.buckets[BUCKET]) == 1
    assert [u["igm"] for u in storage.uploads] == [0, 0]
    assert first.tags[3] != second.tags[3]  # a new attempt is a new effect


def test_a_content_change_changes_object_and_tag(
    source_root: Path, client: Any, storage: FakeStorage
) -> None:
    build_gcp(make_ctx(source_root, "publisher"), client=client, storage=storage)
    (source_root / "publisher" / "main.py").write_text("print('v2')\n")
    build_gcp(make_ctx(source_root, "publisher", attempt=1), client=client, storage=storage)

    first, second = (c.kwargs["build"] for c in client.create_build.call_args_list)
    assert first.images != second.images
    assert first.source.storage_source.object_ != second.source.storage_source.object_


def test_a_missing_bucket_is_created(source_root: Path, client: Any) -> None:
    storage = FakeStorage(buckets={})

    build_gcp(make_ctx(source_root, "publisher"), client=client, storage=storage)

    assert storage.created == [BUCKET]
    assert len(storage.buckets[BUCKET]) == 1
    client.create_build.assert_called_once()


# ---- idempotency: list before create ----------------------------------------------------------


def earlier_build(ctx: EffectContext, status: Any, **extra: Any) -> cb.Build:
    service = ctx.item or ""
    return cb.Build(
        id=f"b-{status.name.lower()}",
        status=status,
        tags=build_tags(ctx.run_id, service, ctx.effect_id),
        substitutions={
            "_PODIUM_RUN_ID": ctx.run_id,
            "_PODIUM_EFFECT_ID": ctx.effect_id,
            "_PODIUM_SERVICE": service,
        },
        log_url="https://console.cloud.google.com/cloud-build/builds/b?project=123",
        **extra,
    )


@pytest.mark.parametrize(
    "status", [cb.Build.Status.QUEUED, cb.Build.Status.WORKING, cb.Build.Status.PENDING]
)
def test_a_build_in_flight_is_not_started_again(
    source_root: Path, client: Any, storage: FakeStorage, status: Any
) -> None:
    ctx = make_ctx(source_root, "publisher")
    client.list_builds.return_value = [earlier_build(ctx, status)]

    assert build_gcp(ctx, client=client, storage=storage) == []

    client.create_build.assert_not_called()
    assert storage.uploads == []


def test_a_build_that_already_succeeded_is_reported(
    source_root: Path, client: Any, storage: FakeStorage
) -> None:
    ctx = make_ctx(source_root, "publisher")
    pushed = f"{IMAGE_BASE}/publisher:0123456789ab"
    digest = "sha256:" + "ab" * 32
    client.list_builds.return_value = [
        earlier_build(ctx, cb.Build.Status.FAILURE),
        earlier_build(
            ctx,
            cb.Build.Status.SUCCESS,
            results=cb.Results(images=[cb.BuiltImage(name=pushed, digest=digest)]),
        ),
    ]

    (outcome,) = build_gcp(ctx, client=client, storage=storage)

    assert (outcome.type, outcome.item) == ("build.succeeded", "publisher")
    assert outcome.data["image"] == f"{IMAGE_BASE}/publisher@{digest}"
    assert outcome.data["digest"] == digest and outcome.data["build_id"] == "b-success"
    assert "effect_id" not in outcome.data  # the effect runner adds it
    client.create_build.assert_not_called()


def test_a_failed_earlier_build_is_replaced(
    source_root: Path, client: Any, storage: FakeStorage
) -> None:
    ctx = make_ctx(source_root, "publisher")
    client.list_builds.return_value = [
        earlier_build(ctx, cb.Build.Status.FAILURE),
        earlier_build(ctx, cb.Build.Status.CANCELLED),
    ]

    assert build_gcp(ctx, client=client, storage=storage) == []

    client.create_build.assert_called_once()


def test_a_build_of_another_run_with_a_colliding_tag_is_ignored(
    source_root: Path, client: Any, storage: FakeStorage
) -> None:
    ctx = make_ctx(source_root, "publisher")
    other = make_ctx(source_root, "publisher", run_id="someone-else")
    client.list_builds.return_value = [earlier_build(other, cb.Build.Status.SUCCESS)]

    assert build_gcp(ctx, client=client, storage=storage) == []

    client.create_build.assert_called_once()


# ---- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "retryable"),
    [
        (gexc.ServiceUnavailable("try later"), True),
        (gexc.TooManyRequests("quota"), True),
        (gexc.PermissionDenied("cloudbuild.builds.create denied"), False),
        (gexc.InvalidArgument("bad build"), False),
    ],
)
def test_api_errors_carry_retryability(
    source_root: Path, client: Any, storage: FakeStorage, exc: Exception, retryable: bool
) -> None:
    client.create_build.side_effect = exc

    with pytest.raises(HandlerError) as err:
        build_gcp(make_ctx(source_root, "publisher"), client=client, storage=storage)

    assert err.value.retryable is retryable
    assert "'publisher'" in err.value.message and str(exc) in err.value.message


def test_missing_storage_package_says_how_to_install(
    source_root: Path, client: Any, mocker: MockerFixture
) -> None:
    mocker.patch.dict(sys.modules, {"google.cloud.storage": None})
    gcp_clients._clients.cache_clear()  # a fresh set of clients: none made yet

    with pytest.raises(HandlerError) as err:
        build_gcp(make_ctx(source_root, "publisher"), client=client, storage=None)

    assert err.value.retryable is False
    assert (
        "google-cloud-storage" in err.value.message
        and "pip install 'podium[gcp]'" in err.value.message
    )
    client.create_build.assert_not_called()


def test_a_missing_source_folder_is_not_retryable(
    source_root: Path, client: Any, storage: FakeStorage
) -> None:
    shutil.rmtree(source_root / "subscriber")

    with pytest.raises(HandlerError) as err:
        build_gcp(make_ctx(source_root, "subscriber"), client=client, storage=storage)

    assert err.value.retryable is False and "does not exist" in err.value.message


# ---- cloud-builds notifications ----------------------------------------------------------------

BUILD_ID = "3b8c5c1e-7f1a-4d57-9a8e-2c1d0f6a9b21"
RUN_ID = "demo:1"
EFFECT_ID = "build:publisher:a0"
SOURCE_HEX = "9fe800cb3fa53d1660d3b562f851d63f59032ee56f5a6e584c5cf7337bb8cd8c"
PUSHED = f"{IMAGE_BASE}/publisher:{SOURCE_HEX[:12]}"
IMAGE_DIGEST = "sha256:5f1e0b6ea1c2d3f4a5b6c7d8e9f00112233445566778899aabbccddeeff0011"
LOG_URL = f"https://console.cloud.google.com/cloud-build/builds/{BUILD_ID}?project=123456789012"


def notification(status: str, **overrides: Any) -> dict[str, Any]:
    """A Build resource as Cloud Build publishes it on ``cloud-builds`` (JSON field names)."""
    build: dict[str, Any] = {
        "id": BUILD_ID,
        "name": f"projects/123456789012/locations/global/builds/{BUILD_ID}",
        "projectId": PROJECT,
        "status": status,
        "source": {
            "storageSource": {"bucket": BUCKET, "object": f"source/publisher-{SOURCE_HEX}.tar.gz"}
        },
        "steps": [
            {
                "name": "gcr.io/k8s-skaffold/pack",
                "args": [
                    "build",
                    PUSHED,
                    "--builder",
                    "gcr.io/buildpacks/builder:latest",
                    "--path",
                    "publisher",
                ],
                "id": "build",
                "entrypoint": "pack",
            }
        ],
        "createTime": "2025-11-25T07:00:01.123456789Z",
        "timeout": "1200s",
        "images": [PUSHED],
        "projectNumber": "123456789012",
        "logsBucket": "gs://123456789012.cloudbuild-logs.googleusercontent.com",
        "options": {
            "substitutionOption": "ALLOW_LOOSE",
            "logging": "CLOUD_LOGGING_ONLY",
            "pool": {},
        },
        "logUrl": LOG_URL,
        "substitutions": {
            "_PODIUM_RUN_ID": RUN_ID,
            "_PODIUM_EFFECT_ID": EFFECT_ID,
            "_PODIUM_SERVICE": "publisher",
        },
        "tags": build_tags(RUN_ID, "publisher", EFFECT_ID),
        "queueTtl": "3600s",
    }
    if status in ("WORKING", "SUCCESS", "FAILURE"):
        build["startTime"] = "2025-11-25T07:00:03.456789012Z"
    if status == "SUCCESS":
        build["finishTime"] = "2025-11-25T07:01:40.987654321Z"
        build["steps"][0]["status"] = "SUCCESS"
        build["results"] = {
            "images": [
                {
                    "name": PUSHED,
                    "digest": IMAGE_DIGEST,
                    "pushTiming": {
                        "startTime": "2025-11-25T07:01:30.1Z",
                        "endTime": "2025-11-25T07:01:39.9Z",
                    },
                }
            ],
            "buildStepImages": [
                "sha256:0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9"
            ],
            "buildStepOutputs": [""],
        }
        build["timing"] = {
            "BUILD": {"startTime": "2025-11-25T07:00:04Z", "endTime": "2025-11-25T07:01:30Z"}
        }
    if status == "FAILURE":
        build["finishTime"] = "2025-11-25T07:00:59.5Z"
        build["steps"][0]["status"] = "FAILURE"
        build["statusDetail"] = (
            'Build step failure: build step 0 "gcr.io/k8s-skaffold/pack" failed: step exited with non-zero status: 1'
        )
        build["failureInfo"] = {
            "type": "USER_BUILD_STEP",
            "detail": 'Build step failure: build step 0 "gcr.io/k8s-skaffold/pack" failed: step exited with non-zero status: 1',
        }
        build["results"] = {"buildStepImages": [""], "buildStepOutputs": [""]}
    build.update(overrides)
    return build


def message(build: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    return json.dumps(build).encode(), {"buildId": build["id"], "status": build["status"]}


def test_success_becomes_build_succeeded() -> None:
    event = event_from_cloud_build(*message(notification("SUCCESS")))

    assert event is not None
    assert (event.run_id, event.type, event.item) == (RUN_ID, "build.succeeded", "publisher")
    assert event.event_id == f"cloudbuild~{BUILD_ID}~SUCCESS"
    assert event.data == {
        "build_id": BUILD_ID,
        "effect_id": EFFECT_ID,
        "log_url": LOG_URL,
        "image": f"{IMAGE_BASE}/publisher@{IMAGE_DIGEST}",
        "digest": IMAGE_DIGEST,
    }


def test_failure_becomes_build_failed_with_detail_and_logs() -> None:
    event = event_from_cloud_build(*message(notification("FAILURE")))

    assert event is not None
    assert (event.type, event.item, event.event_id) == (
        "build.failed",
        "publisher",
        f"cloudbuild~{BUILD_ID}~FAILURE",
    )
    assert event.data["effect_id"] == EFFECT_ID
    error = event.data["error"]
    assert "FAILURE" in error and "USER_BUILD_STEP" in error
    assert "step exited with non-zero status: 1" in error and LOG_URL in error


@pytest.mark.parametrize("status", ["INTERNAL_ERROR", "TIMEOUT", "CANCELLED", "EXPIRED"])
def test_other_final_statuses_are_failures(status: str) -> None:
    event = event_from_cloud_build(*message(notification(status)))

    assert event is not None and event.type == "build.failed" and status in event.data["error"]


@pytest.mark.parametrize("status", ["WORKING", "QUEUED", "PENDING"])
def test_statuses_in_flight_are_not_events(status: str) -> None:
    assert event_from_cloud_build(*message(notification(status))) is None


def test_a_build_not_tagged_podium_is_ignored() -> None:
    build = notification("SUCCESS", tags=["release", "team-x"], substitutions={"_DEPLOY": "prod"})

    assert event_from_cloud_build(*message(build)) is None


def test_run_id_and_service_fall_back_to_the_tags() -> None:
    build = notification("SUCCESS", substitutions={})
    event = event_from_cloud_build(*message(build))

    assert event is not None
    # Without substitutions the sanitised run id from the tag is the best there is.
    assert (event.run_id, event.item) == ("demo-1", "publisher")
    assert "effect_id" not in event.data


def test_the_status_attribute_wins_and_numbers_are_understood() -> None:
    build = notification("SUCCESS")
    data = json.dumps({**build, "status": 3}).encode()  # a resource rendered with integer enums

    assert event_from_cloud_build(data, {"buildId": BUILD_ID}).type == "build.succeeded"  # type: ignore[union-attr]
    assert event_from_cloud_build(data, {"buildId": BUILD_ID, "status": "WORKING"}) is None


def test_push_wire_base64_data_is_accepted() -> None:
    data, attrs = message(notification("SUCCESS"))

    assert event_from_cloud_build(base64.b64encode(data), attrs) == event_from_cloud_build(
        data, attrs
    )


def test_success_without_a_pushed_digest_is_a_failure() -> None:
    event = event_from_cloud_build(*message(notification("SUCCESS", results={"images": []})))

    assert (
        event is not None
        and event.type == "build.failed"
        and "no pushed image" in event.data["error"]
    )


def test_malformed_notifications_are_invalid_messages() -> None:
    with pytest.raises(InvalidMessage):
        event_from_cloud_build(b"\xff not json", {})
    with pytest.raises(InvalidMessage):
        event_from_cloud_build(b"[1, 2]", {})
    with pytest.raises(InvalidMessage):  # tagged podium but no run id anywhere
        event_from_cloud_build(*message(notification("SUCCESS", tags=["podium"], substitutions={})))


def test_a_build_we_created_round_trips_through_the_notification_mapping(
    source_root: Path, client: Any, storage: FakeStorage
) -> None:
    ctx = make_ctx(source_root, "publisher", run_id="demo:1")
    build_gcp(ctx, client=client, storage=storage)
    created: cb.Build = client.create_build.call_args.kwargs["build"]
    # What Cloud Build would publish once it is done: our request plus id, status and results.
    fields = cb.Build.to_dict(created)
    fields.update(
        id=BUILD_ID,
        status="SUCCESS",
        log_url=LOG_URL,
        results={"images": [{"name": created.images[0], "digest": IMAGE_DIGEST}]},
    )
    done = cb.Build(fields)
    data = cb.Build.to_json(done, use_integers_for_enums=False).encode()

    event = event_from_cloud_build(data, {"buildId": BUILD_ID, "status": "SUCCESS"})

    assert event is not None
    assert (event.run_id, event.item, event.data["effect_id"]) == (
        "demo:1",
        "publisher",
        ctx.effect_id,
    )
    assert event.data["image"] == f"{created.images[0].rsplit(':', 1)[0]}@{IMAGE_DIGEST}"


def test_a_missing_image_repository_is_created_before_the_first_build(
    source_root: Path, client: Any, storage: FakeStorage, registry: ArtifactRegistryFake
) -> None:
    path = source_root / "architecture.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["dataflows"]["tracer"]["services"]["publisher"]["deployment"]["image_repo"] = "fresh-images"
    path.write_text(yaml.safe_dump(doc))
    name = "projects/podium-local/locations/europe-west1/repositories/fresh-images"

    with pytest.raises(NotReady) as pending:
        build_gcp(make_ctx(source_root, "publisher"), client=client, storage=storage)
    assert "creating Artifact Registry repository" in pending.value.message
    client.create_build.assert_not_called()
    repo = insecure_client(ArtifactRegistryClient, registry.endpoint).get_repository(name=name)
    assert repo.format_ == ArtifactRegistryRepository.Format.DOCKER

    assert build_gcp(make_ctx(source_root, "publisher"), client=client, storage=storage) == []
    (image,) = client.create_build.call_args.kwargs["build"].images
    assert image.startswith("europe-west1-docker.pkg.dev/podium-local/fresh-images/publisher:")


def test_images_outside_artifact_registry_need_no_repository() -> None:
    ensure_repository(None, "gcr.io/p/publisher:abc", "publisher")  # never touches the client


def test_a_cancelled_runs_stop_cancels_its_builds_in_flight(source_root: Path, client: Any) -> None:
    """Issue 14: cancel stops work. The ``stop`` effect lists the run's builds by its tag and
    cancels those still queued or working; finished ones are left alone."""
    run_tag = build_tags("demo-1", "x", "y")[1]
    client.list_builds.return_value = [
        cb.Build(id="b-working", status=cb.Build.Status.WORKING, tags=[PODIUM_TAG, run_tag]),
        cb.Build(id="b-queued", status=cb.Build.Status.QUEUED, tags=[PODIUM_TAG, run_tag]),
        cb.Build(id="b-done", status=cb.Build.Status.SUCCESS, tags=[PODIUM_TAG, run_tag]),
    ]
    ctx = dataclasses.replace(make_ctx(source_root, "run"), kind="stop", effect_id="stop:run:a0")
    (outcome,) = stop_builds_gcp(ctx, client=client)
    assert (outcome.type, outcome.data) == ("stop.succeeded", {"cancelled_builds": ["b-working", "b-queued"]})
    client.list_builds.assert_called_once_with(project_id=PROJECT, filter=f'tags="{run_tag}"')
    assert [c.kwargs for c in client.cancel_build.call_args_list] == [
        {"project_id": PROJECT, "id": "b-working"}, {"project_id": PROJECT, "id": "b-queued"}]
