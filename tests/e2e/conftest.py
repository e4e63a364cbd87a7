"""End-to-end tests share the integration fixtures (daemon in-process or as a subprocess)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from google.cloud import firestore

from tests.integration.conftest import daemon_factory, daemon_process  # noqa: F401 - fixtures


@pytest.fixture
def db(emulators, project: str) -> Iterator[firestore.Client]:
    client = firestore.Client(project=project)
    yield client
    client.close()
