"""What handlers may read of the daemon's settings: a protocol, so the arrows point one way
(``daemon.config.Settings`` satisfies it; the daemon imports handlers, never back)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

__all__ = ["HandlerSettings"]


class HandlerSettings(Protocol):
    """What handlers may read of the daemon's settings (``daemon.config.Settings`` satisfies
    it). A protocol, so the arrows point one way: the daemon imports handlers, never back."""

    @property
    def project(self) -> str: ...
    @property
    def events_topic(self) -> str: ...
    @property
    def source_root(self) -> Path: ...
    @property
    def state_dir(self) -> Path: ...
    @property
    def preflight_timeout_seconds(self) -> float: ...
    @property
    def local_iam_delay_seconds(self) -> float: ...
    @property
    def gcp_endpoints(self) -> str: ...
    @property
    def build_service_account(self) -> str: ...
