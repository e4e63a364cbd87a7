"""testdata/every-resource.yaml deployed locally by a daemon subprocess, then torn down across a
SIGKILL (issue 13): every kind of resource is read back from the emulators (or the local BigQuery
file) after the deploy, the scheduler job's call reaches the recorder and lands in each store, and
after the teardown the ephemeral dataflow's resources are gone while the protected bucket and
the permanent dataflow's stay."""

from __future__ import annotations

import json
import sqlite3
import urllib.request
from pathlib import Path

import pytest
from google.api_core.exceptions import NotFound
from google.cloud import (
    firestore,
    pubsub_v1,
    storage,  # type: ignore[attr-defined,unused-ignore]
)

from handlers.deploy.local import list_processes
from tests.e2e.conftest import start_local
from tests.integration.conftest import assert_consistent, publish, run_doc, wait_for, wait_status

pytestmark = pytest.mark.slow
ARCH_PROJECT = "podium-local"
RUN = "every-1"
YEARLY = "0 0 1 1 *"
EPHEMERAL = {
    ("pubsub_topic", "tick-events"), ("pubsub_subscription", "tick-events-audit"),
    ("gcs_bucket", "podium-every-resource-ticks"), ("firestore_database", "ledger"),
    ("firestore_collection", "ledger/ticks"), ("bigquery_dataset", "analytics"),
    ("bigquery_table", "analytics.ticks"), ("cloud_scheduler_job", "tick-every-minute"),
}
KEPT = {("gcs_bucket", "podium-every-resource-evidence"), ("gcs_bucket", "podium-every-resource-archive")}


def _bucket_names() -> set[str]:
    return {b.name for b in storage.Client(project=ARCH_PROJECT).list_buckets()}


def _director_url(settings) -> str:
    (director,) = [p for p in list_processes(settings) if p["alive"] and p["service"] == "director"]
    return str(director["url"]).rstrip("/")


def test_every_resource_kind_is_created_used_and_torn_down_across_a_sigkill(
    local_settings, db, daemon_process, workspace: Path
) -> None:
    # The example's job runs every minute; here once a year, so only the forced run below fires it.
    path = workspace / "every-resource.yaml"
    path.write_text(path.read_text().replace('schedule: "* * * * *"', f'schedule: "{YEARLY}"'))
    faults = local_settings.state_dir / "faults"
    first = daemon_process(local_settings, "first", PODIUM_FAULTS="mid_effect:undeploy",
                           PODIUM_FAULTS_DIR=str(faults)).start()
    start_local(local_settings, RUN, workspace, "every-resource.yaml")
    doc = wait_status(db, local_settings, RUN, timeout=180)
    assert doc["status"] == "succeeded", doc.get("error")
    recorded = {(r["kind"], r["name"]) for r in doc["outputs"]["resources"] if r["dataflow"] != "director-infra"}
    assert recorded == EPHEMERAL | KEPT

    # Each exists where it should, read from the emulators and the local BigQuery file.
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    sub = subscriber.get_subscription(subscription=subscriber.subscription_path(ARCH_PROJECT, "tick-events-audit"))
    assert (sub.ack_deadline_seconds, sub.message_retention_duration.total_seconds()) == (30, 3600)
    assert {"podium-every-resource-ticks", "podium-every-resource-evidence",
            "podium-every-resource-archive"} <= _bucket_names()
    ledger = firestore.Client(project=ARCH_PROJECT, database="ledger")
    assert ledger.collection("ticks").document("_podium").get().exists
    jobs = firestore.Client(project=ARCH_PROJECT).collection("podium_scheduler_jobs")
    job = jobs.document("tick-every-minute").get().to_dict()
    recorder_url = doc["outputs"]["urls"]["recorder"]
    assert (job["schedule"], job["time_zone"], job["uri"]) == (YEARLY, "Europe/Paris", recorder_url)
    dataset_file = local_settings.state_dir / "bigquery" / ARCH_PROJECT / "analytics.sqlite"
    with sqlite3.connect(dataset_file) as sql:
        columns = [(c[1], c[2], bool(c[3])) for c in sql.execute('PRAGMA table_info("ticks")')]
    assert columns == [("job", "TEXT", True), ("at", "TEXT", True), ("body", "TEXT", False)]

    # The job calls the recorder (forced, as Cloud Scheduler's RunJob), which writes to each store.
    request = urllib.request.Request(f"{_director_url(local_settings)}/jobs/tick-every-minute:run", method="POST")
    with urllib.request.urlopen(request, timeout=30) as resp:
        assert json.load(resp) == {"job": "tick-every-minute", "status": 200}
    ticks = [d.to_dict() for d in ledger.collection("ticks").stream() if d.id != "_podium"]
    assert [(t["job"], json.loads(t["body"])) for t in ticks] == [("tick-every-minute", {"source": "scheduler"})]
    blobs = list(storage.Client(project=ARCH_PROJECT).list_blobs("podium-every-resource-ticks"))
    assert len(blobs) == 1 and blobs[0].name.startswith("ticks/")
    with sqlite3.connect(dataset_file) as sql:
        assert sql.execute('SELECT job FROM "ticks"').fetchall() == [
            ("tick-every-minute",)]

    # A second run of the same architecture creates nothing: every resource is found as it is.
    written = [ledger.collection("ticks").document("_podium").get().update_time,
               jobs.document("tick-every-minute").get().update_time]
    start_local(local_settings, "every-2", workspace, "every-resource.yaml")
    again = wait_status(db, local_settings, "every-2", timeout=120)
    assert again["status"] == "succeeded", again.get("error")
    assert [ledger.collection("ticks").document("_podium").get().update_time,
            jobs.document("tick-every-minute").get().update_time] == written
    assert {(r["kind"], r["name"]) for r in again["outputs"]["resources"] if r["dataflow"] != "director-infra"} == (
        EPHEMERAL | KEPT)

    # Teardown; the daemon is killed in the middle of it and a second one finishes it.
    publish(local_settings, {"command": "teardown", "run_id": RUN})
    assert first.wait_dead(120), "the fault never fired"
    daemon_process(local_settings, "second", PODIUM_FAULTS_DIR=str(faults)).start()
    doc = wait_for(lambda: (d := run_doc(db, local_settings, RUN)) and d["status"] in ("torn_down", "failed") and d,
                   180, "the teardown to end")
    assert (doc["state"], doc["status"]) == ("torn_down", "torn_down"), doc.get("error")
    removed = {(r["kind"], r["name"]) for r in doc["outputs"]["removed_resources"]}
    assert removed == EPHEMERAL
    assert {(r["kind"], r["name"]) for r in doc["outputs"]["resources"] if r["dataflow"] != "director-infra"} == KEPT
    kept = {(k["dataflow"], k["why"]) for k in doc["outputs"]["kept"]}
    assert {("archive", "permanent dataflow"), ("ticks", "teardown_protection")} <= kept, doc["outputs"]["kept"]

    # Gone from the emulators; the protected and permanent buckets stay.
    with pytest.raises(NotFound):
        publisher.get_topic(request={"topic": publisher.topic_path(ARCH_PROJECT, "tick-events")})
    with pytest.raises(NotFound):
        subscriber.get_subscription(subscription=subscriber.subscription_path(ARCH_PROJECT, "tick-events-audit"))
    buckets = _bucket_names()
    assert "podium-every-resource-ticks" not in buckets
    assert {"podium-every-resource-evidence", "podium-every-resource-archive"} <= buckets
    assert not list(ledger.collection("ticks").limit(1).stream())
    assert not jobs.document("tick-every-minute").get().exists
    assert not dataset_file.exists()
    assert not [p for p in list_processes(local_settings) if p["alive"]]
    assert_consistent(db, local_settings, RUN)
