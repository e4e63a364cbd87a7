"""Handlers get the run's architecture validated once per run, not once per effect (issue 11
point 2: no re-parsing of the architecture from the raw document in every handler)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from daemon.config import Settings
from handlers.base import EffectContext
from machines.architecture import load_architecture
from machines.hydration import hydrate
from machines.messages import RunView

EXAMPLE = Path(__file__).resolve().parents[2] / "testdata" / "architecture.yaml"
RAW = hydrate(load_architecture(EXAMPLE.read_text(), source="example")).to_dict()


def ctx(run_id: str, created_at: Any, raw: dict[str, Any] = RAW) -> EffectContext:
    run = {"run_id": run_id, "architecture": raw, **({"created_at": created_at} if created_at else {})}
    return EffectContext(run_id, "e", "deploy", None, {}, 0, RunView.model_validate(run), Settings())


def test_effects_of_one_run_share_one_validated_architecture() -> None:
    created = datetime(2026, 12, 4, tzinfo=UTC)
    first, second = ctx("arch-once", created), ctx("arch-once", created)
    assert first.architecture is second.architecture
    assert first.architecture.name == RAW["name"]


def test_a_new_run_under_the_same_id_or_an_unnamed_document_is_validated_afresh() -> None:
    renamed = {**RAW, "name": "other"}
    old = ctx("arch-reused", datetime(2026, 1, 1, tzinfo=UTC))
    new = ctx("arch-reused", datetime(2026, 2, 1, tzinfo=UTC), renamed)
    assert new.architecture.name == "other" and old.architecture.name == RAW["name"]
    assert ctx("arch-undated", None).architecture is not ctx("arch-undated", None).architecture
