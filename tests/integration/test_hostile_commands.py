"""Hostile start commands through the real Pub/Sub and Firestore emulators (issue 10, points 1-2).

Each one must end as a *failed run* with a clear reason, quickly: never a nack loop, a dead
letter, a memory blow-up, or code run from outside the source root.
"""

from __future__ import annotations

import resource
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from tests.integration.conftest import (
    ARCHITECTURE_YAML,
    TESTDATA,
    make_settings,
    publish,
    rejected,
    start_body,
    wait_status,
)


def billion_laughs() -> str:
    """~2 KB of YAML naming 9**9 strings through nested aliases (a 413 MB RSS daemon before)."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    names = "abcdefghij"
    for i in range(1, 10):
        lines.append(f"{names[i]}: &{names[i]} [" + ",".join([f"*{names[i - 1]}"] * 9) + "]")
    return "\n".join(lines) + "\n" + ARCHITECTURE_YAML[:1500]


def rss_high_water_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_a_billion_laughs_command_is_a_failed_run_at_once(settings, db, daemon_factory):
    daemon_factory(settings)
    text = billion_laughs()
    assert len(text) < 4096
    before = rss_high_water_mb()
    began = time.monotonic()
    publish(settings, start_body("laughs-1", text))
    doc = wait_status(db, settings, "laughs-1", timeout=30)
    assert time.monotonic() - began < 30
    assert doc["status"] == "failed"
    assert doc["error"]["reason"] == "invalid_architecture"
    assert "anchors and aliases are not supported" in doc["error"]["message"]
    assert rss_high_water_mb() - before < 100, "the daemon's memory grew with the alias bomb"
    assert "laughs-1" not in str(rejected(db))  # recorded on the run, not nacked or dead-lettered


def test_a_deeply_nested_json_architecture_is_a_failed_run(settings, db, daemon_factory):
    daemon_factory(settings)
    deep: Any = "leaf"
    for _ in range(500):  # JSON the body parser reads, far deeper than any architecture
        deep = {"k": deep}
    arch = yaml.safe_load(ARCHITECTURE_YAML)
    arch["service_manager_spec"]["metadata"] = deep  # free-form: the schema alone would accept it
    body = {"command": "start", "run_id": "deep-1", "source_root": str(TESTDATA), "architecture": arch}
    publish(settings, body)
    doc = wait_status(db, settings, "deep-1", timeout=30)
    assert doc["status"] == "failed" and doc["error"]["reason"] == "invalid_architecture"
    assert "nested more than 64 levels deep" in doc["error"]["message"]


def test_a_service_folder_linked_outside_the_root_fails_the_run_and_runs_nothing(
    emulators, firestore_reset, project, unique, tmp_path, db, daemon_factory
):
    from daemon.pubsub import ensure_daemon_plumbing

    root = tmp_path / "src"
    shutil.copytree(TESTDATA, root, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    outside = tmp_path / "outside"
    (outside / "tests").mkdir(parents=True)
    mark = tmp_path / "ran"
    (outside / "conftest.py").write_text(f"open({str(mark)!r}, 'w').write('conftest')\n")
    (outside / "tests" / "test_x.py").write_text("def test_x():\n    pass\n")
    shutil.rmtree(root / "publisher")
    (root / "publisher").symlink_to(outside, target_is_directory=True)
    settings = make_settings(project, unique, backend="local", source_root=root, state_dir=tmp_path / "state")
    ensure_daemon_plumbing(settings)
    daemon_factory(settings)

    publish(settings, {**start_body("linked-1"), "source_root": str(root)})
    doc = wait_status(db, settings, "linked-1", timeout=60)

    assert doc["status"] == "failed", doc
    assert doc["error"]["state"] in ("generating_config", "preflight")
    assert "outside the source root" in doc["error"]["message"]
    assert not mark.exists(), "code outside the source root was run"
    assert not (outside / "resources.yaml").exists()


def test_a_source_root_outside_the_daemons_root_is_an_invalid_architecture(settings, db, daemon_factory):
    daemon_factory(settings)
    publish(settings, {**start_body("outside-1"), "source_root": "/"})
    doc = wait_status(db, settings, "outside-1", timeout=30)
    assert doc["status"] == "failed" and doc["error"]["reason"] == "invalid_architecture"
    assert "source_root: '/' is refused" in doc["error"]["message"]
    assert str(Path(settings.source_root).resolve()) in doc["error"]["message"]
