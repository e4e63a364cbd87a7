"""What a start command becomes before its run exists: the validated, hydrated architecture
and the plan the machine drives (pure; the daemon adds the checks that read the filesystem).

Anything the parser or the validation throws is an ``InvalidArchitecture``: input never becomes
a redelivered message, and the run is created ``failed`` with every problem listed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from machines.architecture import Architecture, load_architecture
from machines.architecture.cloud_resources import RESOURCE_KINDS, reported_name
from machines.errors import InvalidArchitecture
from machines.hydration import all_services, hydrate
from machines.messages import StartCommand

__all__ = ["MAX_STORED_ARCHITECTURE_BYTES", "PreparedArchitecture", "plan_of", "prepare_architecture"]

# Firestore holds at most 1 MiB per document; the run document carries the hydrated
# architecture beside its progress and outputs, so the architecture gets most of it, not all.
MAX_STORED_ARCHITECTURE_BYTES = 800 * 1024


@dataclass(frozen=True)
class PreparedArchitecture:
    name: str
    architecture: dict[str, Any]  # hydrated, JSON-safe
    plan: dict[str, Any]


def prepare_architecture(
    command: StartCommand, default_project: str, *, refused: str | None = None
) -> PreparedArchitecture:
    """Validate and hydrate the architecture of a start command (raises InvalidArchitecture).

    A file without ``project_id`` deploys to ``default_project`` (the daemon's). ``refused``: a
    problem the caller already found with the command (its ``source_root``), reported together
    with the file's own problems.
    """
    source = f"start command for {command.run_id or 'a new run'}"
    before = [refused] if refused else []
    try:
        if command.architecture_yaml is not None:
            arch = load_architecture(command.architecture_yaml, source=source)
        else:
            arch = Architecture.from_dict(command.architecture or {}, source=source)
    except InvalidArchitecture as exc:
        raise InvalidArchitecture([*before, *exc.problems], source=source) from exc
    except (ValidationError, RecursionError, ValueError, TypeError, OverflowError) as exc:
        raise InvalidArchitecture(
            [*before, f"(root): cannot be read: {type(exc).__name__}: {str(exc)[:300]}"], source=source
        ) from exc
    if before:
        raise InvalidArchitecture(before, source=source)
    if not arch.project_id:
        arch = arch.model_copy(update={"project_id": default_project})
    hydrated = hydrate(arch)
    plan = plan_of(hydrated)
    if command.skip_preflight:
        # The run carries it in its plan; the preflight handler reports each service skipped,
        # so the machine's preflight phase (and its fan-in) is the same with or without it.
        plan["skip_preflight"] = True
    prepared = PreparedArchitecture(hydrated.name, hydrated.to_dict(), plan)
    _fits_in_a_run_document(prepared, source)
    return prepared


def plan_of(hydrated: Architecture) -> dict[str, Any]:
    """The items each phase fans out over (machines/pipeline.py reads them by these keys)."""
    services = all_services(hydrated)
    director = hydrated.service_manager_spec.name
    infra = f"{director}-infra"
    dataflows = sorted(hydrated.dataflows)
    return {
        "director": director,
        "all_services": sorted(services),
        "services": sorted(s for s in services if s != director),
        "dataflows": dataflows,
        "app_dataflows": [d for d in dataflows if d != infra],
        # What a teardown may remove (the director's own infrastructure is never one of them),
        # and what it leaves, with why (outputs.kept once a teardown starts).
        "ephemeral_dataflows": [] if hydrated.teardown_protection else [
            d for d in dataflows if d != infra and hydrated.dataflows[d].ephemeral
        ],
        "kept": _kept_by_teardown(hydrated, infra),
    }


def _kept_by_teardown(hydrated: Architecture, infra: str) -> list[dict[str, str]]:
    kept: list[dict[str, str]] = []
    for name in sorted(hydrated.dataflows):
        flow = hydrated.dataflows[name]
        if name == infra or not flow.ephemeral or hydrated.teardown_protection:
            why = ("the director's own infrastructure" if name == infra
                   else "the architecture's teardown_protection" if hydrated.teardown_protection
                   else "permanent dataflow")
            kept.append({"kind": "dataflow", "name": name, "dataflow": name, "why": why})
            continue
        for section, kind in RESOURCE_KINDS.items():
            for resource in getattr(flow.resources, section):
                if resource.teardown_protection:
                    kept.append({"kind": kind, "name": reported_name(resource), "dataflow": name,
                                 "why": "teardown_protection"})
    return kept


def _fits_in_a_run_document(prepared: PreparedArchitecture, source: str) -> None:
    size = len(json.dumps(prepared.architecture, separators=(",", ":"), default=str).encode())
    if size > MAX_STORED_ARCHITECTURE_BYTES:
        raise InvalidArchitecture(
            [f"the hydrated architecture is {size} bytes; a run can hold at most "
             f"{MAX_STORED_ARCHITECTURE_BYTES} (Firestore documents are limited to 1 MiB)"],
            source=source,
        )
