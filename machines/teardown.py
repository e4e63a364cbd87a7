"""What each teardown phase starts (pure): the ``_enter_removing_*`` steps of the run model.

``command.teardown`` moves a finished run (succeeded, failed or cancelled) into the teardown
phases of ``machines/pipeline.py``. Each removes only what this run made, read from its own
record: the services it deployed (``outputs.urls``), what the director set up for its
*ephemeral* dataflows (permanent ones and the director's own infrastructure stay), the director,
then the accounts Podium created (the IAM backend tells them by a mark Podium puts on the
account itself, so a crash between creating and recording loses nothing; accounts that existed
before are never deleted). A phase with nothing to remove joins at once.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["TeardownSteps"]


class _Model(Protocol):
    run: Any

    def items(self, phase: str) -> dict[str, str]: ...
    def open_phase(self, phase: str, names: list[str]) -> dict[str, str]: ...
    def pending(self, phase: str) -> list[str]: ...
    def effect(self, kind: str, item: str | None = None, suffix: str = "", **params: Any) -> None: ...
    def command_id(self, instruction: str, target: str, suffix: str = "") -> str: ...


class TeardownSteps:
    """Mixed into ``machines.orchestration._RunModel``."""

    def on_teardown(self: _Model, _event: Any = None) -> None:
        # The run is active again; its earlier error stays in the audit log.
        self.run.status = "running"
        self.run.error = None
        self.run.failed_state = None
        self.run.outputs["kept"] = list(self.run.plan.get("kept", []))

    def _deployed(self: _Model) -> list[str]:
        return sorted((self.run.outputs.get("urls") or {}).keys())

    def _enter_removing_services(self: _Model) -> None:
        director = self.run.plan.get("director")
        self.open_phase("undeploy", [s for s in TeardownSteps._deployed(self) if s != director])
        for name in self.pending("undeploy"):
            self.effect("undeploy", name)

    def _enter_removing_dataflows(self: _Model) -> None:
        director_up = self.items("director").get("ready") == "succeeded"
        # A dataflow whose setup was sent may have half its resources even if the setup failed:
        # the director deletes what exists and reports the rest missing.
        set_up = self.run.progress.get("dataflows", {})
        names = [d for d in self.run.plan.get("ephemeral_dataflows", []) if d in set_up]
        self.open_phase("teardown", names if director_up else [])
        for name in self.pending("teardown"):
            self.effect("director.command", name, suffix=":teardown", instruction="teardown", dataflow=name,
                        command_id=self.command_id("teardown", name))

    def _enter_removing_director(self: _Model) -> None:
        director = self.run.plan.get("director")
        self.open_phase("director_removal", [director] if director in TeardownSteps._deployed(self) else [])
        for name in self.pending("director_removal"):
            self.effect("undeploy", name)

    def _enter_removing_accounts(self: _Model) -> None:
        self.effect("iam.remove", "accounts")
