"""Input that passes validation but cannot be stored, against the emulators (issue 10 point 3).

Poison that reaches a live run's transaction is in ``tests/faults/test_poison.py``.
"""

from __future__ import annotations

from tests.integration.conftest import ARCHITECTURE_YAML, publish, start_body, wait_status


def test_an_architecture_too_big_for_a_run_document_fails_the_run_clearly(settings, db, daemon_factory):
    daemon_factory(settings)
    blob = "x" * 900_000  # under the YAML size limit, over what a run document can hold once hydrated
    yaml_text = ARCHITECTURE_YAML.replace(
        'PUBLISH_INTERVAL_SECONDS: "0.5"', f'PUBLISH_INTERVAL_SECONDS: "0.5"\n            BLOB: "{blob}"'
    )
    assert blob in yaml_text
    publish(settings, start_body("too-big-1", yaml_text))
    doc = wait_status(db, settings, "too-big-1", timeout=30)
    assert (doc["status"], doc["error"]["reason"]) == ("failed", "invalid_architecture")
    assert "hydrated architecture is" in doc["error"]["message"]
    assert "1 MiB" in doc["error"]["message"]
