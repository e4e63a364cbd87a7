"""The dashboard's tests: unit tests on the ASGI app with fakes, and integration tests (the
emulators, a daemon; one real browser) that reuse the integration and end-to-end fixtures."""

from __future__ import annotations

from tests.e2e.conftest import db, local_settings  # noqa: F401 - fixtures
from tests.integration.conftest import daemon_factory, settings  # noqa: F401 - fixtures
