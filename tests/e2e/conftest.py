"""End-to-end tests share the integration fixtures (daemon in-process or as a subprocess)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from google.cloud import firestore

from daemon.config import Settings
from daemon.pubsub import ensure_daemon_plumbing
from handlers.deploy.local import stop_all
from tests.integration.conftest import (  # noqa: F401 - fixtures
    daemon_factory,
    daemon_process,
    make_settings,
    publish,
    start_body,
)


@pytest.fixture
def db(emulators, project: str) -> Iterator[firestore.Client]:
    client = firestore.Client(project=project)
    yield client
    client.close()


@pytest.fixture
def local_settings(emulators, firestore_reset, project, unique, workspace: Path, tmp_path: Path) -> Iterator[Settings]:
    """A local-backend daemon's settings on a private copy of testdata; its processes stop after."""
    s = make_settings(
        project,
        unique,
        backend="local",
        source_root=workspace,
        state_dir=tmp_path / "state",
        local_iam_delay_seconds=0.5,
        preflight_timeout_seconds=60.0,
        one_run_per_target=True,
    )
    ensure_daemon_plumbing(s)
    yield s
    stop_all(s)


def start_local(settings: Settings, run_id: str, workspace: Path, architecture: str = "architecture.yaml") -> None:
    """Publish the start of ``workspace/architecture`` with its folder as the source root."""
    body = start_body(run_id, (workspace / architecture).read_text())
    body["source_root"] = str(workspace)
    publish(settings, body)
