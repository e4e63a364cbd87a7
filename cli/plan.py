"""``podium plan FILE``: the dry run. Validates, and shows what a run would create — the
generated per-service configs, the IAM plan with a reason per binding, the build and deploy
order — and the difference from the last successful run of the same architecture. Nothing
is created; Firestore is only read (and only if an emulator or credentials are reachable).
"""

from __future__ import annotations

import difflib
import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from daemon.config import Settings
from machines.architecture import Architecture, load_architecture
from machines.errors import InvalidArchitecture
from machines.hydration import all_services, hydrate
from machines.iam_plan import plan_iam

EXIT_OK, EXIT_USAGE = 0, 2


def build_plan(arch: Architecture, source_root: Path) -> dict[str, Any]:
    from handlers.configgen import plan_configs

    hydrated = hydrate(arch)
    services = all_services(hydrated)
    director = hydrated.service_manager_spec.name
    iam = plan_iam(hydrated)
    files = [
        {"service": f.service, "path": str(f.path), "kind": f.kind, "sha256": f.sha256[:12],
         "content": f.content.decode()}
        for f in plan_configs(hydrated, source_root)
    ]
    return {
        "architecture": hydrated.name,
        "project_id": hydrated.project_id,
        "files": files,
        "service_accounts": [sa.model_dump() for sa in iam.service_accounts],
        "bindings": [b.model_dump() for b in iam.bindings],
        "order": [
            {"phase": "generating_config", "items": ["resources.yaml per service", "services.yaml for the director"]},
            {"phase": "preflight", "items": sorted(services), "parallel": True},
            {"phase": "provisioning_iam ∥ building", "items": sorted(services), "parallel": True},
            {"phase": "deploying_director", "items": [director]},
            {"phase": "provisioning_dataflows", "items": sorted(hydrated.dataflows), "parallel": True},
            {"phase": "verifying_dataflow_iam", "items": ["resource-level bindings"]},
            {"phase": "deploying_services", "items": sorted(s for s in services if s != director), "parallel": True},
            {"phase": "dependent_setup", "items": sorted(d for d in hydrated.dataflows if d != f"{director}-infra")},
        ],
        "hydrated": hydrated.to_dict(),
    }


def last_success(settings: Settings, name: str) -> dict[str, Any] | None:
    """The architecture of the newest succeeded run with this name, if Firestore is reachable."""
    if settings.backend != "gcp" and not os.environ.get("FIRESTORE_EMULATOR_HOST"):
        return None
    from google.auth.exceptions import DefaultCredentialsError
    from google.cloud import firestore
    from google.cloud.firestore_v1.base_query import FieldFilter

    try:
        client = firestore.Client(project=settings.project)
    except DefaultCredentialsError:
        print("podium plan: no Google credentials (nor FIRESTORE_EMULATOR_HOST): not compared with an earlier run",
              file=sys.stderr)
        return None
    query = (
        client.collection(settings.collection)
        .where(filter=FieldFilter("architecture_name", "==", name))
        .where(filter=FieldFilter("status", "==", "succeeded"))
    )
    docs = [d.to_dict() or {} for d in query.stream()]
    if not docs:
        return None
    return max(docs, key=lambda d: d["created_at"])


def diff(previous: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    if previous is None:
        return []
    old = yaml.safe_dump(previous.get("architecture", {}), sort_keys=True).splitlines()
    new = yaml.safe_dump(current, sort_keys=True).splitlines()
    return list(difflib.unified_diff(old, new, f"run {previous.get('run_id')}", "this file", lineterm=""))


def cmd_plan(settings: Settings, file: str, *, as_json: bool) -> int:
    path = Path(file).resolve()
    try:
        arch = load_architecture(path.read_text(encoding="utf-8"), source=str(path))
    except OSError as exc:
        print(f"podium plan: cannot read {file}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    except InvalidArchitecture as exc:
        print(exc.message, file=sys.stderr)
        return EXIT_USAGE
    if not arch.project_id:
        arch = arch.model_copy(update={"project_id": settings.project})
    plan = build_plan(arch, path.parent)
    previous = last_success(settings, plan["architecture"])
    plan["diff"] = diff(previous, plan["hydrated"])
    plan["compared_with"] = previous.get("run_id") if previous else None
    if as_json:
        print(json.dumps({k: v for k, v in plan.items() if k != "hydrated"}, indent=2, default=str))
        return EXIT_OK
    _print(plan)
    return EXIT_OK


def _print(plan: dict[str, Any]) -> None:
    from rich.console import Console

    console = Console()
    console.print(f"[bold]plan for {plan['architecture']}[/] (project {plan['project_id']}): nothing is created")
    console.print("\n[bold]generated files[/]")
    for f in plan["files"]:
        console.print(f"  {f['path']}  ({f['kind']} for {f['service']}, sha256 {f['sha256']})")
    console.print("\n[bold]service accounts[/]")
    for sa in plan["service_accounts"]:
        console.print(f"  {sa['email']}  ({sa['kind']} {sa['service']})")
    console.print("\n[bold]IAM bindings[/] (applied additively, never replacing a policy)")
    for b in plan["bindings"]:
        console.print(f"  {b['role']} on {b['resource_type']} {b['resource_id']} for {b['member_sa']} "
                      f"[{b['phase']}]: {b['reason']}", markup=False)
    console.print("[bold]order[/]")
    for step in plan["order"]:
        how = "in parallel" if step.get("parallel") else ""
        console.print(f"  {step['phase']:30} {', '.join(step['items'])} {how}")
    if plan["compared_with"]:
        console.print(f"\n[bold]changes since run {plan['compared_with']}[/]")
        for line in plan["diff"] or ["  (none)"]:
            console.print(line, markup=False)
    else:
        console.print("\nno earlier successful run of this architecture to compare with")
