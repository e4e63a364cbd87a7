"""Shared fixtures for every test folder.

Emulators: under ``make test`` (``python -m devtools.emulators run -- pytest``) the
variables PUBSUB_EMULATOR_HOST and FIRESTORE_EMULATOR_HOST are already set and the
session reuses that pair; a bare ``pytest`` starts its own pair for the session.
Any test that uses the ``emulators`` fixture (directly or through another fixture)
is marked ``emulators``, so ``-m 'not emulators'`` runs the pure tests alone.

Pub/Sub has no reset: give topics and subscriptions a ``unique`` suffix.
Firestore is emptied before each test that asks for ``firestore_client`` (or
``firestore_reset``).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.cloud import firestore, pubsub_v1

from devtools.emulators import Emulators, attach_from_env, start_emulators
from machines.errors import EmulatorError

TEST_PROJECT = "podium-test"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "emulators" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.emulators)


@pytest.fixture(scope="session")
def emulators() -> Iterator[Emulators]:
    """The Pub/Sub + Firestore emulator pair, with the two variables set in os.environ."""
    attached = attach_from_env()
    if attached is not None:
        yield attached
        return
    try:
        started = start_emulators()
    except EmulatorError as exc:
        pytest.fail(str(exc), pytrace=False)
    saved = {name: os.environ.get(name) for name in started.env()}
    started.export()
    try:
        yield started
    finally:
        started.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="session")
def project() -> str:
    """The GCP project id the tests use on the emulators."""
    return TEST_PROJECT


@pytest.fixture
def unique() -> str:
    """A short random suffix for topic, subscription and run names."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def firestore_reset(emulators: Emulators, project: str) -> None:
    """Empty the emulator's Firestore database of ``project`` before the test."""
    emulators.reset_firestore(project)


@pytest.fixture
def firestore_client(firestore_reset: None, project: str) -> Iterator[firestore.Client]:
    """An official Firestore client on an empty emulator database."""
    client = firestore.Client(project=project)
    yield client
    client.close()


@pytest.fixture
def publisher(emulators: Emulators) -> Iterator[pubsub_v1.PublisherClient]:
    """An official Pub/Sub publisher on the emulator (flushed and stopped afterwards)."""
    client = pubsub_v1.PublisherClient()
    yield client
    client.stop()


@pytest.fixture
def subscriber_client(emulators: Emulators) -> Iterator[pubsub_v1.SubscriberClient]:
    """An official Pub/Sub subscriber client on the emulator (closed afterwards)."""
    client = pubsub_v1.SubscriberClient()
    yield client
    client.close()


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A private copy of testdata: the config generator writes into it, tests break it."""
    testdata = Path(__file__).resolve().parents[1] / "testdata"
    dest = tmp_path / "testdata"
    shutil.copytree(testdata, dest, ignore=shutil.ignore_patterns("resources.yaml", "services.yaml", "__pycache__"))
    return dest
