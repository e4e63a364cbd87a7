"""Preflight: the resources.yaml shipped beside main.py names the subscription this service reads."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

SERVICE_DIR = Path(__file__).resolve().parent.parent
REQUIRED_KEY = "tracer-subscription-id"
# Pub/Sub resource names: 3-255 chars, start with a letter, not "goog".
VALID_NAME = re.compile(r"^(?!goog)[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}$")


def load_main():
    spec = importlib.util.spec_from_file_location("subscriber_main", SERVICE_DIR / "main.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_resources_yaml_names_the_tracer_subscription() -> None:
    main = load_main()
    path = main.RESOURCES_FILE
    assert path.is_file(), (
        f"no resources.yaml at {path}: Podium's config generation writes it beside main.py"
    )
    lookups = main.load_lookups(path)
    assert REQUIRED_KEY in lookups, (
        f"lookup key {REQUIRED_KEY!r} is missing from {path} "
        f"(keys found: {sorted(lookups) or 'none'})"
    )
    name = lookups[REQUIRED_KEY]
    assert VALID_NAME.match(name), (
        f"{REQUIRED_KEY} in {path} is not a valid subscription name: {name!r}"
    )
