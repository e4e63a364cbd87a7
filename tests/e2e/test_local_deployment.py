"""The whole testdata architecture deployed on the embedded default (local backend, real
emulators, real processes): success, crash recovery, and the failures users will meet."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
from google.api_core.exceptions import NotFound
from google.cloud import pubsub_v1

from cli.up import verify_dataflow
from daemon.config import Settings
from handlers.deploy.local import list_processes
from tests.e2e.conftest import start_local
from tests.integration.conftest import (
    assert_consistent,
    audit,
    publish,
    run_doc,
    wait_for,
    wait_status,
)

pytestmark = pytest.mark.slow


def _start(settings: Settings, run_id: str, workspace: Path) -> None:
    start_local(settings, run_id, workspace)


def _one_live_process_per_service(settings: Settings) -> None:
    procs = [p for p in list_processes(settings) if p["alive"]]
    counts = Counter(p["service"] for p in procs)
    assert counts == {"director": 1, "publisher": 1, "subscriber": 1}, procs


def _count(db, settings, run_id: str, type_: str) -> Counter:
    return Counter(e["item"] for e in audit(db, settings, run_id) if e["type"] == type_ and e["outcome"] == "applied")


def test_testdata_deploys_end_to_end_and_messages_flow(local_settings, db, daemon_factory, workspace):
    daemon_factory(local_settings)
    _start(local_settings, "e2e-ok", workspace)
    doc = wait_status(db, local_settings, "e2e-ok", timeout=120)
    assert doc["status"] == "succeeded", doc.get("error")
    assert all(img.startswith("local://") and "@sha256:" in img for img in doc["outputs"]["images"].values())
    assert set(doc["outputs"]["service_accounts"]) == {"director", "publisher", "subscriber"}
    assert [(r["kind"], r["name"], r["dataflow"]) for r in doc["outputs"]["resources"]] == [
        ("pubsub_subscription", "director-commands-sub", "director-infra"),
        ("pubsub_topic", "director-commands", "director-infra"),
        ("pubsub_topic", "director-completions", "director-infra"),
        ("pubsub_subscription", "tracer-sub", "tracer"),
        ("pubsub_topic", "tracer-topic", "tracer"),
    ]
    assert (workspace / "publisher" / "resources.yaml").is_file()
    assert (workspace / "director" / "services.yaml").is_file()
    ok, detail = verify_dataflow(doc)
    assert ok, detail
    _one_live_process_per_service(local_settings)
    assert_consistent(db, local_settings, "e2e-ok")

    # Teardown (issue 13): services, the ephemeral dataflow's resources, the director, the accounts.
    publish(local_settings, {"command": "teardown", "run_id": "e2e-ok"})
    doc = wait_for(lambda: (d := run_doc(db, local_settings, "e2e-ok")) and d["status"] in ("torn_down", "failed")
                   and d, 120, "the teardown to end")
    assert (doc["state"], doc["status"]) == ("torn_down", "torn_down"), doc.get("error")
    assert not [p for p in list_processes(local_settings) if p["alive"]]
    assert doc["outputs"]["removed_services"] == ["director", "publisher", "subscriber"]
    assert sorted(doc["outputs"]["removed_accounts"]) == sorted(doc["outputs"]["service_accounts"].values())
    publisher = pubsub_v1.PublisherClient()
    with pytest.raises(NotFound):  # tracer is ephemeral: its topic is gone
        publisher.get_topic(request={"topic": publisher.topic_path("podium-local", "tracer-topic")})
    assert_consistent(db, local_settings, "e2e-ok")


@pytest.mark.parametrize("fault", ["mid_effect:build", "mid_effect:deploy"])
def test_sigkill_during_builds_or_deploys_then_restart(local_settings, db, daemon_process, workspace, fault):
    faults = local_settings.state_dir / "faults"
    first = daemon_process(local_settings, "first", PODIUM_FAULTS=fault, PODIUM_FAULTS_DIR=str(faults)).start()
    _start(local_settings, "e2e-kill", workspace)
    assert first.wait_dead(120), f"fault {fault} never fired"
    daemon_process(local_settings, "second", PODIUM_FAULTS_DIR=str(faults)).start()
    doc = wait_status(db, local_settings, "e2e-kill", timeout=150)
    assert doc["status"] == "succeeded", doc.get("error")
    _one_live_process_per_service(local_settings)
    ok, detail = verify_dataflow(doc)
    assert ok, detail
    assert_consistent(db, local_settings, "e2e-kill")


def test_failing_preflight_fails_the_run_then_retry_after_the_fix(local_settings, db, daemon_factory, workspace):
    test_file = workspace / "publisher" / "tests" / "test_preflight.py"
    original = test_file.read_text()
    test_file.write_text(original + "\n\ndef test_broken_on_purpose():\n    assert 1 == 2, 'publisher is broken'\n")
    daemon_factory(local_settings)
    _start(local_settings, "e2e-preflight", workspace)
    doc = wait_status(db, local_settings, "e2e-preflight", timeout=90)
    assert doc["status"] == "failed"
    assert doc["error"]["state"] == "preflight"
    assert doc["error"]["reason"] == "preflight_failed"
    assert "publisher" in doc["error"]["message"] and "publisher is broken" in doc["error"]["message"]
    assert not list_processes(local_settings)  # nothing deployed before preflight passes

    test_file.write_text(original)
    publish(local_settings, {"command": "retry", "run_id": "e2e-preflight"})
    wait_for(lambda: (db.collection(local_settings.collection).document("e2e-preflight").get().to_dict() or {})
             .get("status") == "succeeded", 150, "the retried run to succeed")
    passed = _count(db, local_settings, "e2e-preflight", "preflight.passed")
    assert passed == {"director": 1, "publisher": 1, "subscriber": 1}  # the others were not redone
    assert_consistent(db, local_settings, "e2e-preflight")


def test_cancel_kills_a_running_preflight_and_retry_resumes_where_it_stopped(
    local_settings, db, daemon_factory, workspace
):
    """Issue 14: cancel stops work. The publisher's preflight hangs; cancel kills its pytest
    (not 22 s later: at the next lease renewal), records the cleanup, and a retry resumes in
    preflight without redoing what had passed."""
    test_file = workspace / "publisher" / "tests" / "test_preflight.py"
    original = test_file.read_text()
    pid_file = workspace / "slow-preflight.pid"
    test_file.write_text(original + (
        "\n\ndef test_slow():\n    import os, pathlib, time\n"
        f"    pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid()))\n    time.sleep(300)\n"))
    daemon_factory(local_settings)
    _start(local_settings, "e2e-cancel", workspace)
    pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text(), 60, "the slow preflight to start"))
    publish(local_settings, {"command": "cancel", "run_id": "e2e-cancel"})
    doc = wait_for(lambda: (d := run_doc(db, local_settings, "e2e-cancel")) and d["status"] == "cancelled" and d,
                   30, "the run to be cancelled")
    assert doc["failed_state"] == "preflight"
    wait_for(lambda: not _alive(pid), 15, "the preflight's pytest to be killed")
    wait_for(lambda: any(e["type"] == "stop.succeeded" for e in audit(db, local_settings, "e2e-cancel")), 15,
             "the cancel's cleanup to be recorded")
    effects = db.collection(local_settings.collection).document("e2e-cancel").collection("effects").stream()
    assert "pending" not in {e.get("status") for e in effects}

    test_file.write_text(original)
    publish(local_settings, {"command": "retry", "run_id": "e2e-cancel"})
    wait_for(lambda: (run_doc(db, local_settings, "e2e-cancel") or {}).get("status") == "succeeded", 150,
             "the retried run to succeed")
    assert _count(db, local_settings, "e2e-cancel", "preflight.passed")["publisher"] == 1
    assert_consistent(db, local_settings, "e2e-cancel")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_failing_build_names_the_service_and_retry_redoes_only_it(local_settings, db, daemon_factory, workspace):
    requirements = workspace / "subscriber" / "requirements.txt"
    original = requirements.read_text()
    requirements.write_text(original + "this is ((( not a requirement\n")
    daemon_factory(local_settings)
    _start(local_settings, "e2e-build", workspace)
    doc = wait_status(db, local_settings, "e2e-build", timeout=90)
    assert doc["status"] == "failed"
    assert doc["error"]["reason"] == "build_failed"
    assert "subscriber" in doc["error"]["message"]
    assert doc["progress"]["build"]["subscriber"] == "failed"

    requirements.write_text(original)
    publish(local_settings, {"command": "retry", "run_id": "e2e-build"})
    wait_for(lambda: (db.collection(local_settings.collection).document("e2e-build").get().to_dict() or {})
             .get("status") == "succeeded", 150, "the retried run to succeed")
    builds = _count(db, local_settings, "e2e-build", "build.succeeded")
    assert builds == {"director": 1, "publisher": 1, "subscriber": 1}
    assert_consistent(db, local_settings, "e2e-build")


def _silence(director_main: Path) -> None:
    """The real director, except that it never publishes a reply (it still acks nothing)."""
    text = director_main.read_text()
    marker = "    def publish_reply(self, reply_to: str, envelope: dict[str, Any]) -> None:\n"
    assert marker in text
    director_main.write_text(text.replace(marker, marker + "        return  # silenced by the test\n", 1))


def test_a_silent_director_fails_the_run_after_its_deadline(local_settings, db, daemon_factory, workspace):
    _silence(workspace / "director" / "main.py")
    settings = local_settings.model_copy(update={"director_ready_budget_seconds": 4.0})
    daemon_factory(settings)
    _start(settings, "e2e-silent", workspace)
    doc = wait_status(db, settings, "e2e-silent", timeout=120)
    assert doc["status"] == "failed"
    assert doc["error"]["state"] == "awaiting_director"
    assert doc["error"]["reason"] == "timeout"
    assert "ServiceDirector did not answer" in doc["error"]["message"]
    pings = [e for e in audit(db, settings, "e2e-silent") if e["type"] == "timer.fired"]
    assert len(pings) >= 2  # it was pinged again before giving up
