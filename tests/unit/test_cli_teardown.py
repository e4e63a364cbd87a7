"""``podium teardown`` publishes the teardown command; ``--help`` says how it differs from ``down``."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

import cli.status
import daemon.pubsub
from cli.main import main


def test_help_tells_teardown_and_down_apart() -> None:
    out = subprocess.run([sys.executable, "-m", "cli.main", "--help"], capture_output=True, text=True, check=True)
    flat = " ".join(out.stdout.split())
    assert "teardown" in flat and "remove what a finished run created" in flat
    assert "processes only" in flat and "podium teardown RUN" in flat


def test_teardown_publishes_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[dict[str, Any]] = []

    def publish(settings: Any, body: dict[str, Any]) -> str:
        sent.append(body)
        raise SystemExit(0)  # stop before waiting for the daemon's record

    class Store:
        def get(self, run_id: str) -> dict[str, Any]:
            return {"run_id": run_id, "state": "succeeded", "status": "succeeded"}

    monkeypatch.setattr(daemon.pubsub, "publish_command", publish)
    monkeypatch.setattr(cli.status, "store_for", lambda settings: Store())
    with pytest.raises(SystemExit):
        main(["teardown", "demo-1"])
    assert sent == [{"command": "teardown", "run_id": "demo-1"}]
