"""Preflight: the resources.yaml shipped beside main.py names the director's command subscription
(with its topic, the command topic) and its completion topic."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import pytest

SERVICE_DIR = Path(__file__).resolve().parent.parent
REQUIRED_KEYS = ("command-subscription-id", "completion-topic-id")
# Pub/Sub resource names: 3-255 chars, start with a letter, not "goog".
VALID_NAME = re.compile(r"^(?!goog)[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}$")


def load_main():
    spec = importlib.util.spec_from_file_location("director_main", SERVICE_DIR / "main.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_resources_yaml_names_the_command_subscription_and_completion_topic() -> None:
    main = load_main()
    path = main.RESOURCES_FILE
    assert path.is_file(), (
        f"no resources.yaml at {path}: Podium's config generation writes it beside main.py"
    )
    lookups = main.load_lookups(path)
    for key in REQUIRED_KEYS:
        assert key in lookups, (
            f"lookup key {key!r} is missing from {path} (keys found: {sorted(lookups) or 'none'})"
        )
        assert VALID_NAME.match(lookups[key]), (
            f"{key} in {path} is not a valid Pub/Sub name: {lookups[key]!r}"
        )


def test_command_subscription_names_the_command_topic(monkeypatch: pytest.MonkeyPatch) -> None:
    main = load_main()
    monkeypatch.setenv("PROJECT_ID", os.environ.get("PROJECT_ID") or "preflight")
    try:
        _, topic, subscription, ack_deadline = main.read_startup_config()
    except SystemExit as exc:  # the director would refuse to start: say why
        pytest.fail(f"the director would not start: {exc}")
    assert VALID_NAME.match(topic), f"command topic in {main.RESOURCES_FILE} is invalid: {topic!r}"
    assert 10 <= ack_deadline <= 600, f"ack deadline of {subscription} out of range: {ack_deadline}"
