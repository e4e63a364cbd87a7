"""The gcp IAM backend against the fakes for every resource kind the plan binds (issue 12):
accounts, project roles, topics and subscriptions, secrets, buckets, BigQuery tables, and
run.invoker between services and for scheduler jobs. Asserted from the fakes' state."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from google.cloud import bigquery, iam_admin_v1, run_v2

from daemon.config import Settings
from handlers.base import EffectContext, Outcome
from handlers.gcp_clients import GcpClients
from handlers.iam import effects
from handlers.iam.gcp import GcpIam
from machines.hydration import all_services, hydrate
from machines.iam_plan import IamBinding, plan_iam
from machines.messages import RunView
from tests.architectures import rich_architecture
from tests.fakes.bigquery import BigQueryFake, start_bigquery_fake
from tests.fakes.cloud_run import CloudRunFake, start_cloud_run_fake
from tests.fakes.granted import binding_granted
from tests.fakes.grpc_server import FakeServer, insecure_client
from tests.fakes.iam_admin import IamFakes, start_iam_fakes
from tests.fakes.iam_policy import PolicyStore
from tests.fakes.pubsub_iam import PubsubIamFake, start_pubsub_iam
from tests.fakes.storage import StorageFake, start_storage_fake

PROJECT = "rich-tenant"  # the architecture's project; the daemon's is another


@dataclass
class World:
    iam: IamFakes
    pubsub: PubsubIamFake
    run: CloudRunFake
    secrets: PolicyStore
    secrets_server: FakeServer
    storage: StorageFake
    bigquery: BigQueryFake

    def endpoints(self) -> dict[str, str]:
        return {"iam": self.iam.admin_endpoint, "projects": self.iam.projects_endpoint,
                "pubsub": self.pubsub.endpoint, "run": self.run.endpoint,
                "secretmanager": self.secrets_server.endpoint, "storage": self.storage.endpoint,
                "bigquery": self.bigquery.endpoint}

    def granted(self, b: IamBinding) -> bool:
        stores = {"project": self.iam.project_policies, "pubsub_topic": self.pubsub.policies,
                  "pubsub_subscription": self.pubsub.policies, "cloudrun_service": self.run.policies,
                  "secret": self.secrets, "service_account": self.iam.account_policies}
        return binding_granted(b, PROJECT, stores, self.storage, self.bigquery)


@pytest.fixture
def world() -> Iterator[World]:
    secrets = PolicyStore()
    server = FakeServer()
    server.add("google.cloud.secretmanager.v1.SecretManagerService", secrets.methods())
    server.start()
    w = World(start_iam_fakes([PROJECT, "other-project"]), start_pubsub_iam(), start_cloud_run_fake(ready_delay=0),
              secrets, server, start_storage_fake(), start_bigquery_fake())
    yield w
    for part in (w.iam, w.pubsub, w.run, w.secrets_server, w.storage, w.bigquery):
        part.stop()


def _resources_the_director_would_create(w: World, arch: Any) -> None:
    gcs, bq = w.storage.client(PROJECT), w.bigquery.client(PROJECT)
    for df in arch.dataflows.values():
        for bucket in df.resources.gcs_buckets:
            gcs.create_bucket(bucket.name)
        for table in df.resources.bigquery_tables:
            bq.create_dataset(f"{PROJECT}.{table.dataset}", exists_ok=True)
            bq.create_table(bigquery.Table(f"{PROJECT}.{table.dataset}.{table.name}"))


def _deployed(w: World, arch: Any, service: str) -> None:
    _, spec = all_services(arch)[service]
    region = (spec.deployment.region if spec.deployment else "") or arch.region
    client = insecure_client(run_v2.ServicesClient, w.run.endpoint)
    template = run_v2.RevisionTemplate(containers=[run_v2.Container(image=f"gcr.io/{PROJECT}/{service}:1")])
    client.create_service(parent=f"projects/{PROJECT}/locations/{region}", service_id=service,
                          service=run_v2.Service(template=template)).result(timeout=10)


def test_every_binding_of_the_rich_plan_lands_on_its_resource(world: World, tmp_path: Any) -> None:
    arch = hydrate(rich_architecture(project_id=PROJECT))
    plan = plan_iam(arch)
    _resources_the_director_would_create(world, arch)
    settings = Settings(project="daemon-project", backend="gcp", state_dir=tmp_path)
    deployer = "podium-daemon@daemon-project.iam.gserviceaccount.com"
    backend = GcpIam("daemon-project", clients=GcpClients("daemon-project", world.endpoints()), deployer=deployer)
    run = RunView.model_validate({"run_id": "rich-1", "architecture": arch.to_dict()})

    def ctx(kind: str, item: str | None) -> EffectContext:
        return EffectContext("rich-1", f"{kind}:{item}", kind, item, {}, 0, run, settings)

    (created,) = effects.provision(ctx("iam.provision", "accounts"), backend)
    assert sorted(world.iam.accounts(PROJECT)) == sorted(
        a.email for a in plan.service_accounts if a.email.endswith(f"@{PROJECT}.iam.gserviceaccount.com")
    )
    for email in world.iam.accounts(PROJECT):  # actAs on the accounts it created, and on no other
        granted = world.iam.account_policies.bindings(f"projects/{PROJECT}/serviceAccounts/{email}")
        assert granted == {"roles/iam.serviceAccountUser": {f"serviceAccount:{deployer}"}}, email
    assert world.iam.project_policies.bindings(f"projects/{PROJECT}").get("roles/iam.serviceAccountUser") is None
    _deployed(world, arch, "sd")
    effects.bind(ctx("iam.bind", "resources"), backend)
    for service in ("writer", "reader", "reporter"):
        _deployed(world, arch, service)
        effects.deploy_then_grant_invokers(
            ctx("deploy", service), backend, lambda c: [Outcome("deploy.succeeded", c.item, {"url": "u"})]
        )
    missing = [b for b in plan.bindings if not world.granted(b)]
    assert not missing, [f"{b.role} {b.member} {b.resource_type}:{b.resource_id}" for b in missing]
    kinds = {b.resource_type for b in plan.bindings}
    assert {"secret", "gcs_bucket", "bigquery_table", "cloudrun_service", "pubsub_topic", "project",
            "service_account"} <= kinds  # the last: the director acts as each scheduler job's account
    invokers = world.run.bindings(f"projects/{PROJECT}/locations/europe-west4/services/reader")["roles/run.invoker"]
    assert f"serviceAccount:nightly-sa@{PROJECT}.iam.gserviceaccount.com" in invokers  # the scheduler job
    assert f"serviceAccount:writer-account@{PROJECT}.iam.gserviceaccount.com" in invokers  # a dependant

    (verified,) = effects.verify(ctx("iam.verify", "resources"), backend)
    assert verified.type == "iam.verified"
    writes = sum(s.set_count(r) for s in (world.iam.project_policies, world.pubsub.policies, world.run.policies,
                                          world.secrets) for r in s.resources())
    effects.provision(ctx("iam.provision", "accounts"), backend)  # redone: nothing written again
    effects.bind(ctx("iam.bind", "resources"), backend)
    assert writes == sum(s.set_count(r) for s in (world.iam.project_policies, world.pubsub.policies,
                                                   world.run.policies, world.secrets) for r in s.resources())


def test_teardown_deletes_only_the_accounts_podium_created(world: World, tmp_path: Any) -> None:
    arch = hydrate(rich_architecture(project_id=PROJECT))
    admin = insecure_client(iam_admin_v1.IAMClient, world.iam.admin_endpoint)
    mine = f"writer-account@{PROJECT}.iam.gserviceaccount.com"
    admin.create_service_account(name=f"projects/{PROJECT}", account_id="writer-account",
                                 service_account=iam_admin_v1.ServiceAccount(description="made by hand"))
    settings = Settings(project="daemon-project", backend="gcp", state_dir=tmp_path)
    backend = GcpIam("daemon-project", clients=GcpClients("daemon-project", world.endpoints()))
    run = RunView.model_validate({"run_id": "rich-2", "architecture": arch.to_dict()})
    effects.provision(EffectContext("rich-2", "p", "iam.provision", "accounts", {}, 0, run, settings), backend)
    assert mine in world.iam.accounts(PROJECT)

    (out,) = effects.remove(EffectContext("rich-2", "r", "iam.remove", "accounts", {}, 0, run, settings), backend)
    assert out.type == "iam.accounts_removed"
    assert sorted(world.iam.accounts(PROJECT)) == [mine]  # the hand-made one stays
    assert mine in out.data["kept"] and mine not in out.data["removed"]
    (again,) = effects.remove(EffectContext("rich-2", "r", "iam.remove", "accounts", {}, 1, run, settings), backend)
    assert again.data["removed"] == []  # redone: nothing left to delete
