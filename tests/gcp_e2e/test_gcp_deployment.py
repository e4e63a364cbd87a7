"""The production path end to end here (issue 12): gcp mode, real clients, stateful fakes.

Asserted from the fakes' state, not from Podium's own records: every planned account, every
binding of the IAM plan, the image repository, each image and each Cloud Run service.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.cloud import bigquery

from cli.upload import upload_source
from daemon.config import Settings
from daemon.pubsub import ensure_daemon_plumbing
from machines.architecture import load_architecture
from machines.hydration import hydrate
from machines.iam_plan import plan_iam
from tests.conftest import TEST_PROJECT
from tests.gcp_e2e.conftest import ARCH_PROJECT, SOURCE_BUCKET, GcpWorld, daemon_account
from tests.integration.conftest import publish, run_doc, wait_for, wait_status

pytestmark = [pytest.mark.gcp_e2e, pytest.mark.slow]

SERVICES = ("director", "publisher", "subscriber")
REGION = "europe-west1"


def _deploy(settings: Settings, db: Any, workspace: Path, run_id: str, timeout: float = 120.0) -> dict[str, Any]:
    source = upload_source(workspace, f"gs://{SOURCE_BUCKET}/{run_id}.tar.gz", settings)
    body = {"command": "start", "run_id": run_id, "source_root": source,
            "architecture_yaml": (workspace / "architecture.yaml").read_text()}
    publish(settings, body)
    doc = wait_status(db, settings, run_id, timeout)
    assert doc["status"] == "succeeded", doc.get("error")
    return doc


def _with_every_kind_of_binding(world: GcpWorld, workspace: Path) -> None:
    """testdata plus a bucket, a BigQuery table, a secret and a scheduler job, so the plan has
    every kind of binding. The director creates the bucket in the GCS fake; the table is made here
    in the BigQuery fake, where the IAM assertions read it (the director keeps its own in SQLite)."""
    path = workspace / "architecture.yaml"
    doc = yaml.safe_load(path.read_text())
    tracer = doc["dataflows"]["tracer"]
    tracer["resources"]["gcs_buckets"] = [
        {"name": "podium-e2e-archive", "producers": [{"name": "publisher"}], "consumers": [{"name": "subscriber"}]}]
    tracer["resources"]["bigquery_tables"] = [
        {"name": "ticks", "dataset": "tracer_data", "producers": [{"name": "publisher"}],
         "consumers": [{"name": "subscriber"}]}]
    tracer["resources"]["cloud_scheduler_jobs"] = [
        {"name": "nightly", "schedule": "0 3 * * *", "target_service": "subscriber"}]
    tracer["services"]["subscriber"]["deployment"]["secret_environment_vars"] = [
        {"name": "API_KEY", "value_from": "api-key"}]
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    bq = world.bigquery.client(ARCH_PROJECT)
    bq.create_dataset(f"{ARCH_PROJECT}.tracer_data")
    bq.create_table(bigquery.Table(f"{ARCH_PROJECT}.tracer_data.ticks"))


def _footprint(world: GcpWorld) -> dict[str, Any]:
    """Everything a deploy can change, counted: a redeploy that changes nothing leaves it equal."""
    stores = (world.iam.project_policies, world.pubsub_iam.policies, world.run.policies)
    return {
        "accounts": sorted(world.iam.accounts(ARCH_PROJECT)),
        "policy writes": sum(s.set_count(r) for s in stores for r in s.resources()),
        "builds": len(world.builds.builds()),
        "repositories": [r.name for r in world.registry.repositories()],
        "revisions": {s: len(world.run.revisions(s)) for s in world.run.services()},
    }


def _assert_everything_as_planned(world: GcpWorld, workspace: Path, doc: dict[str, Any]) -> None:
    arch = hydrate(load_architecture((workspace / "architecture.yaml").read_text()))
    plan = plan_iam(arch)
    accounts = world.iam.accounts(ARCH_PROJECT)
    assert sorted(accounts) == sorted({a.email for a in plan.service_accounts})
    deployer = f"serviceAccount:{daemon_account(TEST_PROJECT)}"
    # The daemon may act as each account it created, granted per account; the director as the
    # scheduler job's (it creates the job that calls with its token), and nothing else.
    acting = [b for b in plan.bindings if b.resource_type == "service_account"]
    assert {(b.member_sa.split("@")[0], b.resource_id.split("@")[0]) for b in acting} <= {("director-sa", "nightly-sa")}
    for email in accounts:
        policy = world.iam.account_policies.bindings(f"projects/{ARCH_PROJECT}/serviceAccounts/{email}")
        expected = {deployer} | {f"serviceAccount:{b.member_sa}" for b in acting if b.resource_id == email}
        assert policy.get("roles/iam.serviceAccountUser") == expected, email
    missing = [f"{b.role} for {b.member} on {b.resource_type} {b.resource_id}" for b in plan.bindings
               if not world.granted(b)]
    assert not missing, missing
    repository = f"projects/{ARCH_PROJECT}/locations/{REGION}/repositories/podium"
    assert [r.name for r in world.registry.repositories()] == [repository]
    pushed = Counter(ref.split("/")[-1].split(":")[0] for ref in world.registry.pushed())
    assert pushed == dict.fromkeys(SERVICES, 1)
    services = world.run.services()
    assert sorted(services) == [f"projects/{ARCH_PROJECT}/locations/{REGION}/services/{s}" for s in SERVICES]
    for s in SERVICES:
        live = services[f"projects/{ARCH_PROJECT}/locations/{REGION}/services/{s}"]
        container = live.template.containers[0]
        assert container.image == doc["outputs"]["images"][s]
        assert live.template.service_account == doc["outputs"]["service_accounts"][s]
        assert live.uri == doc["outputs"]["urls"][s]
    director = services[f"projects/{ARCH_PROJECT}/locations/{REGION}/services/director"]
    assert director.template.scaling.min_instance_count == 1 and not director.template.containers[0].resources.cpu_idle


def test_a_gcp_deploy_from_a_gs_tarball_creates_exactly_the_plan_and_redeploys_idempotently(
    gcp_world: GcpWorld, gcp_settings: Settings, gcp_daemon, director, db, workspace: Path
) -> None:
    assert gcp_settings.project != ARCH_PROJECT  # the daemon deploys into another project
    ensure_daemon_plumbing(gcp_settings)
    gcp_daemon().start()
    _with_every_kind_of_binding(gcp_world, workspace)

    first = _deploy(gcp_settings, db, workspace, "gcp-1")
    _assert_everything_as_planned(gcp_world, workspace, first)
    kinds = {b.resource_type for b in plan_iam(load_architecture((workspace / "architecture.yaml").read_text())).bindings}
    assert kinds >= {"project", "pubsub_topic", "pubsub_subscription", "cloudrun_service", "secret", "gcs_bucket",
                     "bigquery_table"}
    invokers = gcp_world.run.bindings(f"projects/{ARCH_PROJECT}/locations/{REGION}/services/subscriber")
    assert f"serviceAccount:nightly-sa@{ARCH_PROJECT}.iam.gserviceaccount.com" in invokers["roles/run.invoker"]

    before = _footprint(gcp_world)
    _deploy(gcp_settings, db, workspace, "gcp-2")
    assert _footprint(gcp_world) == before, "a second deploy of the same architecture changed something"

    arch_file = workspace / "architecture.yaml"
    doc = yaml.safe_load(arch_file.read_text())
    doc["dataflows"]["tracer"]["services"]["publisher"]["deployment"]["environment_vars"][
        "PUBLISH_INTERVAL_SECONDS"] = "0.7"
    doc["dataflows"]["tracer"]["services"]["subscriber"]["deployment"]["memory"] = "1Gi"
    arch_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    third = _deploy(gcp_settings, db, workspace, "gcp-3")
    after = _footprint(gcp_world)
    # Only the director is rebuilt: its image carries services.yaml, the whole architecture
    # (the anchor's contract); the services whose configuration changed keep their images.
    newest = gcp_world.builds.builds()[: after["builds"] - before["builds"]]  # newest first
    rebuilt = {b.substitutions["_PODIUM_SERVICE"] for b in newest}
    assert rebuilt == {"director"}, rebuilt
    for service in ("publisher", "subscriber"):
        assert third["outputs"]["images"][service] == first["outputs"]["images"][service]
    assert after["revisions"] == {name: count + 1 for name, count in before["revisions"].items()}
    publisher = gcp_world.run.revisions("publisher")[-1]
    assert publisher.env["PUBLISH_INTERVAL_SECONDS"] == "0.7"
    assert gcp_world.run.revisions("subscriber")[-1].memory == "1Gi"
    assert gcp_world.run.revisions("subscriber")[0].memory == "512Mi"  # every revision keeps its template


def test_a_sigkill_mid_deploy_still_ends_with_one_of_everything(
    gcp_world: GcpWorld, gcp_settings: Settings, gcp_daemon, director, db, workspace: Path, tmp_path: Path
) -> None:
    ensure_daemon_plumbing(gcp_settings)
    faults = {"PODIUM_FAULTS": "mid_effect:deploy", "PODIUM_FAULTS_DIR": str(tmp_path / "faults")}
    daemon = gcp_daemon("doomed", **faults).start()
    source = upload_source(workspace, f"gs://{SOURCE_BUCKET}/gcp-kill.tar.gz", gcp_settings)
    publish(gcp_settings, {"command": "start", "run_id": "gcp-kill", "source_root": source,
                           "architecture_yaml": (workspace / "architecture.yaml").read_text()})
    assert daemon.wait_dead(120), "the armed crash point never fired"
    gcp_daemon("revived", **faults).start()  # the marker stops it firing twice
    doc = wait_status(db, gcp_settings, "gcp-kill", 120)
    assert doc["status"] == "succeeded", doc.get("error")
    _assert_everything_as_planned(gcp_world, workspace, doc)
    assert {s: len(gcp_world.run.revisions(s)) for s in SERVICES} == dict.fromkeys(SERVICES, 1)

    # Teardown through the same fakes: the services and the accounts Podium created are gone; an
    # account that existed before the run (the daemon's own, say) is not Podium's to delete.
    publish(gcp_settings, {"command": "teardown", "run_id": "gcp-kill"})
    doc = wait_for(lambda: (d := run_doc(db, gcp_settings, "gcp-kill")) and d["status"] in ("torn_down", "failed")
                   and d, 120, "the teardown to end")
    assert doc["status"] == "torn_down", doc.get("error")
    assert gcp_world.run.services() == {}
    assert gcp_world.iam.accounts(ARCH_PROJECT) == {}
    assert daemon_account(TEST_PROJECT) in gcp_world.iam.accounts(TEST_PROJECT)
