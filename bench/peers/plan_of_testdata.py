"""Print the plan Podium fans the testdata out over (run with the project's venv, not the peers').

    .venv/bin/python bench/peers/plan_of_testdata.py > /tmp/podium-peers-plan.json

``temporal_workload.py --plan FILE`` then runs the Temporal workflow over exactly this plan, so
the peer's graph follows ``machines.start.plan_of`` if the testdata or the planning changes.
``compare.py`` calls `testdata_plan` itself.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from machines.architecture import load_architecture  # noqa: E402
from machines.hydration import hydrate  # noqa: E402
from machines.start import plan_of  # noqa: E402


def testdata_plan() -> dict[str, Any]:
    """``plan_of`` of the hydrated testdata, the keys the Temporal workflow fans out over."""
    path = REPO / "testdata" / "architecture.yaml"
    plan = plan_of(hydrate(load_architecture(path.read_text(), source=str(path))))
    keys = ("director", "all_services", "services", "dataflows", "app_dataflows")
    return {k: plan[k] for k in keys}


if __name__ == "__main__":
    print(json.dumps(testdata_plan()))
