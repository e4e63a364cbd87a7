"""gcp mode on this machine: ``podium serve`` with ``PODIUM_BACKEND=gcp`` against stateful fakes.

Pub/Sub and Firestore are Google's emulators; IAM, Resource Manager, Cloud Run, Cloud Build and
Artifact Registry are the loopback fakes of ``tests/fakes`` (the real client libraries talk to
them through ``PODIUM_GCP_ENDPOINTS``); GCS is gcp-storage-emulator. The ServiceDirector runs as
a local process standing in for its Cloud Run service, on the real command topic; it creates the
architecture's buckets in the GCS fake.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from google.cloud import iam_admin_v1, pubsub_v1

from daemon.config import Settings
from handlers.configgen import generate_configs
from handlers.secrets import child_env, service_env
from machines.architecture import load_architecture
from machines.hydration import all_services, hydrate
from machines.iam_plan import IamBinding
from tests.fakes.artifact_registry import ArtifactRegistryFake
from tests.fakes.bigquery import BigQueryFake, start_bigquery_fake
from tests.fakes.cloud_build import CloudBuildFake
from tests.fakes.cloud_run import CloudRunFake, start_cloud_run_fake
from tests.fakes.granted import binding_granted
from tests.fakes.grpc_server import FakeServer, insecure_client
from tests.fakes.iam_admin import IamFakes, start_iam_fakes
from tests.fakes.iam_policy import PolicyStore
from tests.fakes.pubsub_iam import PubsubIamFake, exists_in, start_pubsub_iam
from tests.fakes.storage import StorageFake, start_storage_fake
from tests.integration.conftest import (  # noqa: F401 - fixtures
    DaemonProcess,
    daemon_process,
    make_settings,
)

ARCH_PROJECT = "podium-local"  # testdata's project_id: not the daemon's own project
SOURCE_BUCKET = "podium-e2e-sources"


def daemon_account(project: str) -> str:
    return f"podium-daemon@{project}.iam.gserviceaccount.com"


@dataclass
class GcpWorld:
    iam: IamFakes
    pubsub_iam: PubsubIamFake
    run: CloudRunFake
    registry: ArtifactRegistryFake
    builds: CloudBuildFake
    storage: StorageFake
    bigquery: BigQueryFake
    secrets: PolicyStore
    secrets_server: FakeServer
    cloud_builds_topic: str

    def endpoints(self) -> str:
        return ",".join(
            [
                f"iam={self.iam.admin_endpoint}",
                f"projects={self.iam.projects_endpoint}",
                f"pubsub={self.pubsub_iam.endpoint}",
                f"run={self.run.endpoint}",
                f"cloudbuild={self.builds.endpoint}",
                f"artifactregistry={self.registry.endpoint}",
                f"storage={self.storage.endpoint}",
                f"bigquery={self.bigquery.endpoint}",
                f"secretmanager={self.secrets_server.endpoint}",
            ]
        )

    def granted(self, b: IamBinding) -> bool:
        """Whether the fake holding ``b``'s resource grants its role to its member."""
        stores = {"project": self.iam.project_policies, "pubsub_topic": self.pubsub_iam.policies,
                  "pubsub_subscription": self.pubsub_iam.policies, "cloudrun_service": self.run.policies,
                  "secret": self.secrets, "service_account": self.iam.account_policies}
        return binding_granted(b, ARCH_PROJECT, stores, self.storage, self.bigquery)

    def stop(self) -> None:
        for part in (self.builds, self.registry, self.run, self.pubsub_iam, self.iam, self.storage,
                     self.bigquery, self.secrets_server):
            part.stop()


@pytest.fixture
def gcp_world(emulators, project: str, unique: str) -> Iterator[GcpWorld]:
    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    storage = start_storage_fake()
    gcs = storage.client(project)
    gcs.create_bucket(SOURCE_BUCKET)

    def source_exists(bucket: str, name: str) -> bool:
        return gcs.bucket(bucket).get_blob(name) is not None

    registry = ArtifactRegistryFake()
    registry.start()
    builds = CloudBuildFake(
        registry, queue_delay=0.05, build_delay=0.3, publisher=publisher, topic=f"cb-{unique}",
        source_exists=source_exists,
    )
    builds.start()
    secrets = PolicyStore()
    secrets_server = FakeServer()
    secrets_server.add("google.cloud.secretmanager.v1.SecretManagerService", secrets.methods())
    secrets_server.start()
    world = GcpWorld(
        iam=start_iam_fakes([ARCH_PROJECT, project]),
        pubsub_iam=start_pubsub_iam(exists=exists_in(publisher, subscriber)),
        run=start_cloud_run_fake(ready_delay=0.3),
        registry=registry,
        builds=builds,
        storage=storage,
        bigquery=start_bigquery_fake(),
        secrets=secrets,
        secrets_server=secrets_server,
        cloud_builds_topic=f"cb-{unique}",
    )
    # The daemon's own account, as deploy/setup.sh creates it: it is granted actAs per account.
    insecure_client(iam_admin_v1.IAMClient, world.iam.admin_endpoint).create_service_account(
        name=f"projects/{project}", account_id="podium-daemon")
    yield world
    world.stop()


@pytest.fixture
def gcp_settings(gcp_world: GcpWorld, project: str, unique: str, tmp_path: Path) -> Settings:
    return make_settings(
        project,
        unique,
        backend="gcp",
        state_dir=tmp_path / "state",
        gcp_endpoints=gcp_world.endpoints(),
        cloud_builds_topic=gcp_world.cloud_builds_topic,
        preflight_timeout_seconds=60.0,
        iam_budget_seconds=60.0,
        director_ready_budget_seconds=30.0,
        max_delivery_attempts=10,
    )


@pytest.fixture
def gcp_daemon(
    gcp_settings: Settings, daemon_process: Callable[..., DaemonProcess]  # noqa: F811
) -> Callable[..., DaemonProcess]:
    def make(name: str = "daemon", **extra_env: str) -> DaemonProcess:
        env = {
            "PODIUM_SERVICE_ACCOUNT": daemon_account(gcp_settings.project),
            "PODIUM_GCP_ENDPOINTS": gcp_settings.gcp_endpoints,
            "PODIUM_CLOUD_BUILDS_TOPIC": gcp_settings.cloud_builds_topic,
            "PODIUM_PREFLIGHT_TIMEOUT_SECONDS": str(gcp_settings.preflight_timeout_seconds),
            **extra_env,
        }
        return daemon_process(gcp_settings, name, **env)

    return make


@pytest.fixture
def director(workspace: Path, tmp_path: Path, gcp_world: GcpWorld) -> Iterator[subprocess.Popen[bytes]]:
    """The testdata ServiceDirector as its Cloud Run service would run it, as a local process:
    its buckets go to the GCS fake the IAM assertions read; its BigQuery datasets and tables to
    SQLite files (its google-cloud-bigquery, Firestore Admin and Cloud Scheduler paths are tested
    against their fakes in tests/unit/test_director_gcp.py)."""
    arch = hydrate(load_architecture((workspace / "architecture.yaml").read_text()))
    generate_configs(arch, workspace)  # what the daemon's configgen writes into its copy
    dataflow, spec = all_services(arch)["director"]
    assert spec.deployment is not None
    env = child_env(
        {
            **service_env(spec.deployment, project=ARCH_PROJECT, service="director", dataflow=dataflow),
            "PORT": "0",
            "HOST": "127.0.0.1",
            "PYTHONUNBUFFERED": "1",
            "LOCAL_BIGQUERY_DIR": str(tmp_path / "director-bigquery"),
        }
    )
    env["STORAGE_EMULATOR_HOST"] = gcp_world.storage.endpoint
    log = (tmp_path / "director.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "main.py"], cwd=workspace / "director", env=env, stdout=log, stderr=log,
        start_new_session=True,
    )
    yield proc
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def db(firestore_client: Any) -> Any:
    """The Firestore emulator, emptied before the test."""
    return firestore_client
