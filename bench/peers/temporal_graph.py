"""The Temporal side's workflow: Podium's 18-step graph for ``testdata/architecture.yaml``.

Imports only ``temporalio`` so the workflow sandbox can re-import it cheaply. Every step is one
no-op activity (the peer of an instant stand-in effect), in the order Podium's machine schedules
them (``machines/pipeline.py`` PHASES, the ``_enter_<state>`` callbacks of
``machines/orchestration.py``, fanned out over ``machines.start.plan_of`` of the testdata):

* generating_config: configgen (1)
* preflight: preflight × all_services, in parallel, joined (3)
* provisioning_iam / verifying_iam: iam.provision → iam.verify(accounts) (2), in parallel with
  build × all_services (3)
* deploying_director: deploy(director) (1)
* awaiting_director: director.command(ping) (1)
* provisioning_dataflows: director.command(dataflow-setup) × dataflows, joined (2)
* verifying_dataflow_iam: iam.bind → iam.verify(resources) (2)
* deploying_services: deploy × services, joined (2)
* dependent_setup: director.command(dependent-setup) × app_dataflows, joined (1)

18 activities in all for the testdata plan.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow

# machines.start.plan_of(hydrate(testdata/architecture.yaml)) without "kept"/"ephemeral_dataflows"
# (checked by `make bench-peers` against the project's own plan_of when the project venv exists).
TESTDATA_PLAN: dict[str, Any] = {
    "director": "director",
    "all_services": ["director", "publisher", "subscriber"],
    "services": ["publisher", "subscriber"],
    "dataflows": ["director-infra", "tracer"],
    "app_dataflows": ["tracer"],
}


def steps_of(plan: dict[str, Any]) -> int:
    """How many activities one deployment of ``plan`` runs (18 for the testdata)."""
    return (1 + len(plan["all_services"]) + 2 + len(plan["all_services"]) + 1 + 1
            + len(plan["dataflows"]) + 2 + len(plan["services"]) + len(plan["app_dataflows"]))


@activity.defn(name="effect")
async def effect(kind: str, item: str) -> str:
    """A no-op effect: succeeds at once, like the stand-in backend's instant handlers."""
    return f"{kind}:{item}"


@workflow.defn(name="Deployment")
class Deployment:
    @workflow.run
    async def run(self, plan: dict[str, Any]) -> int:
        done = 0

        async def step(kind: str, item: str) -> None:
            nonlocal done
            await workflow.execute_activity(
                effect, args=[kind, item], start_to_close_timeout=timedelta(seconds=60)
            )
            done += 1

        async def each(kind: str, items: list[str]) -> None:
            await asyncio.gather(*(step(kind, i) for i in items))

        async def iam_accounts() -> None:
            await step("iam.provision", "accounts")
            await step("iam.verify", "accounts")

        await step("configgen", "config")
        await each("preflight", plan["all_services"])
        await asyncio.gather(iam_accounts(), each("build", plan["all_services"]))  # IAM ∥ builds
        await step("deploy", plan["director"])
        await step("director.command", "ping")
        await each("director.command", plan["dataflows"])
        await step("iam.bind", "resources")
        await step("iam.verify", "resources")
        await each("deploy", plan["services"])
        await each("director.command", plan["app_dataflows"])
        return done
