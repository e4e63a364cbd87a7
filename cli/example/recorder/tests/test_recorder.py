"""Preflight: the recorder reads where its stores are from its environment and names what is missing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SERVICE_DIR = Path(__file__).resolve().parent.parent


def load_main():
    spec = importlib.util.spec_from_file_location("recorder_main", SERVICE_DIR / "main.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_stores_come_from_the_environment() -> None:
    env = {"PROJECT_ID": "p", "TICKS_BUCKET": "b", "TICKS_COLLECTION": "c", "TICKS_DATASET": "d",
           "TICKS_TABLE": "t", "TICKS_DATABASE": "ledger"}
    recorder = load_main().Recorder(env)
    assert (recorder.bucket, recorder.collection, recorder.database, recorder.dataset, recorder.table) == (
        "b", "c", "ledger", "d", "t")


def test_a_missing_store_is_named() -> None:
    with pytest.raises(KeyError, match="TICKS_BUCKET"):
        load_main().Recorder({"PROJECT_ID": "p"})
