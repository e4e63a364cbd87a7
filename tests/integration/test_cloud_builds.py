"""gcp mode's build completions arrive on Cloud Build's own ``cloud-builds`` topic: the engine
maps each notification to its run by the build's tags/substitutions and applies it."""

from __future__ import annotations

import json
import threading

from daemon.engine import Inbound, Verdict
from machines.cloud_builds import build_tags
from tests.integration.conftest import (
    assert_consistent,
    publish,
    rejected,
    run_doc,
    start_body,
    wait_for,
    wait_status,
)


def notification(run_id: str, service: str, effect_id: str, status: str) -> tuple[bytes, dict[str, str]]:
    build = {
        "id": f"build-{service}",
        "status": status,
        "substitutions": {"_PODIUM_RUN_ID": run_id, "_PODIUM_EFFECT_ID": effect_id, "_PODIUM_SERVICE": service},
        "tags": build_tags(run_id, service, effect_id),
        "logUrl": "https://console.cloud.google.com/cloud-build/builds/x",
    }
    if status == "SUCCESS":
        build["results"] = {"images": [{"name": f"europe-west1-docker.pkg.dev/p/podium/{service}",
                                        "digest": "sha256:" + "ab" * 32}]}
    return json.dumps(build).encode(), {"buildId": build["id"], "status": status}


def test_builds_completed_through_cloud_builds_notifications(settings, db, daemon_factory):
    daemon = daemon_factory(settings)
    submitted: list[tuple[str, str]] = []
    lock = threading.Lock()

    def submit_only(ctx):  # like build_gcp: the build is created, completion comes later
        with lock:
            submitted.append((ctx.item, ctx.effect_id))
        return []

    daemon.effects.handlers["build"] = submit_only
    publish(settings, start_body("cb-1"))
    wait_for(lambda: len(submitted) == 3, 30, "three builds submitted")
    engine = daemon.engine

    # a build of somebody else's, and one still running: acked, nothing recorded
    foreign = json.dumps({"id": "x", "status": "SUCCESS", "tags": ["release"]}).encode()
    assert engine.on_cloud_build(Inbound("m-foreign", foreign, {"status": "SUCCESS"}, source="cloud-builds")) is Verdict.ACK
    working = notification("cb-1", "publisher", submitted[0][1], "WORKING")
    assert engine.on_cloud_build(Inbound("m-working", *working, source="cloud-builds")) is Verdict.ACK
    assert run_doc(db, settings, "cb-1")["progress"]["build"]["publisher"] == "pending"

    for i, (service, effect_id) in enumerate(sorted(submitted)):
        data, attrs = notification("cb-1", service, effect_id, "SUCCESS")
        assert engine.on_cloud_build(Inbound(f"m-{i}", data, attrs, source="cloud-builds")) is Verdict.ACK
    doc = wait_status(db, settings, "cb-1")
    assert doc["status"] == "succeeded", doc.get("error")
    assert all(image.endswith("@sha256:" + "ab" * 32) for image in doc["outputs"]["images"].values())
    assert_consistent(db, settings, "cb-1")
    assert not rejected(db)


def test_a_failed_cloud_build_fails_the_run_with_its_log_url(settings, db, daemon_factory):
    daemon = daemon_factory(settings)
    submitted: list[tuple[str, str]] = []
    daemon.effects.handlers["build"] = lambda ctx: submitted.append((ctx.item, ctx.effect_id)) or []
    publish(settings, start_body("cb-2"))
    wait_for(lambda: len(submitted) == 3, 30, "three builds submitted")
    service, effect_id = sorted(submitted)[1]
    data, attrs = notification("cb-2", service, effect_id, "FAILURE")
    assert daemon.engine.on_cloud_build(Inbound("m-f", data, attrs, source="cloud-builds")) is Verdict.ACK
    doc = wait_status(db, settings, "cb-2")
    assert doc["status"] == "failed"
    assert doc["error"]["reason"] == "build_failed"
    assert "FAILURE" in doc["error"]["message"] and "cloud-build" in doc["error"]["message"]
