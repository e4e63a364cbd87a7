"""Settings of the daemon and the CLI (DESIGN.md §3, CONTRACT). Environment prefix ``PODIUM_``."""

from __future__ import annotations

import os
import socket
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from handlers.gcp_clients import parse_endpoints


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PODIUM_", extra="ignore", populate_by_name=True)

    project: str = Field(
        default="podium-local",
        validation_alias=AliasChoices("PODIUM_PROJECT", "GOOGLE_CLOUD_PROJECT"),
    )
    commands_topic: str = "podium-commands"
    events_topic: str = "podium-events"
    dead_letter_topic: str = "podium-dead-letter"
    notifications_topic: str | None = None
    collection: str = "orchestrations"
    delivery: Literal["pull", "push"] = "pull"  # push: Pub/Sub POSTs to /pubsub/push, no streaming pull
    backend: Literal["local", "gcp", "standin"] = "local"  # standin: tests and benchmarks only
    # One active run per target (project_id + architecture name); a second start is queued or
    # refused (start's if_busy). Off only for load tests that start one architecture many times
    # at once on the stand-in backend, which deploys nothing.
    one_run_per_target: bool = True
    source_root: Path = Field(default_factory=Path.cwd)
    state_dir: Path = Field(default_factory=lambda: Path.cwd() / ".podium")

    # Engine tuning (not contract): leases, sweeps, concurrency bounds.
    effect_lease_seconds: float = 30.0
    sweep_interval_seconds: float = 5.0
    max_messages: int = 200
    effect_workers: int = 16
    # An outcome of an effect this replica ran is applied here at once, in its own transaction,
    # instead of a Pub/Sub round trip (published only if that apply fails). Off: every outcome
    # travels through the events topic, as outcomes of other replicas' effects always do.
    eager_outcomes: bool = True
    # With eager outcomes, the first outcome of a run waits up to this long while other effects
    # of the run still run here, so theirs are applied in the same transaction (group commit).
    outcome_batch_wait_seconds: float = Field(default=0.02, ge=0.0, le=1.0)
    preflight_concurrency: int = 4
    preflight_timeout_seconds: float = 120.0
    build_concurrency: int = 4
    # Transient failures only (bad input is recorded and acked at once): 20 deliveries with the
    # 1-60 s retry backoff ride out a crashed replica's lingering Firestore locks (~60 s) instead
    # of dead-lettering valid events (bench/scaleout.py saw runs stall with 5).
    max_delivery_attempts: int = 20
    ack_deadline_seconds: int = 60  # how soon a dead replica's unacked messages come back
    # Loopback unless told otherwise: the push endpoint feeds the engine, which runs preflight
    # tests and services. Cloud Run's image sets PODIUM_HOST=0.0.0.0 (deploy/Dockerfile).
    host: str = "127.0.0.1"
    port: int = Field(default=8080, validation_alias=AliasChoices("PORT", "PODIUM_PORT"))
    log_format: Literal["console", "json", "auto"] = "auto"

    # Local backend knobs. The simulated IAM propagation only has to outlast the moment between
    # creating an account or binding and its first check (tens of ms), so that a local run
    # (unless the machine stalls) takes the not-visible-yet path Google Cloud takes; longer is
    # time a local deploy sleeps.
    local_iam_delay_seconds: float = 0.25
    iam_budget_seconds: float = 600.0
    director_ready_budget_seconds: float = 60.0

    # gcp mode: point APIs at loopback fakes (handlers/gcp_clients.py), e.g. "run=127.0.0.1:7001".
    gcp_endpoints: str = ""
    build_service_account: str = ""  # gcp builds run as this account; default podium-builder@<project>
    # gcp: the daemon's own account (deploy/service.yaml sets it). It is granted serviceAccountUser
    # on each account it creates, so it needs that role on no other account of the project.
    service_account: str = ""

    @field_validator("gcp_endpoints")
    @classmethod
    def _loopback_fakes_only(cls, value: str) -> str:
        parse_endpoints(value)  # raises ValueError: a bad value stops the daemon at start
        return value

    # Push endpoint verification (gcp mode).
    push_audience: str | None = None
    push_service_account: str | None = None

    # The dashboard (daemon/dashboard/, served at /dashboard/ on the HTTP port). Without an
    # identity check (local backend, no audience) it answers loopback clients only; in gcp mode,
    # or once dashboard_audience is set, every request needs a Google-signed identity (an IAP
    # assertion or an OIDC bearer token of that audience) whose email dashboard_users allows:
    # comma-separated emails and domain:example.com entries. Unconfigured, it refuses everyone.
    dashboard: bool = True
    dashboard_audience: str | None = None
    dashboard_users: str = ""
    dashboard_max_streams: int = Field(default=32, ge=1)  # open live streams (browser tabs), all visitors

    # Effect runner (not contract): start-to-close deadline per effect kind in seconds (kinds
    # not named keep the defaults of daemon/effect_dispatch.py ``deadline_for``), the most effects one
    # replica holds in memory, and how long the oldest effect may wait for a worker of a fully
    # busy pool before /healthz answers 503.
    effect_deadline_seconds: dict[str, float] = Field(default_factory=dict)
    effect_queue_limit: int = 2000
    effect_stall_seconds: float = 120.0

    # Message ordering on the events subscription (and ordering keys on published events). Off:
    # the machine tolerates any order, and an ordered key holds every later event of its run
    # behind one that is being redelivered (README "Why events are not ordered").
    events_ordering: bool = False

    replica_id: str = Field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    )

    @property
    def commands_subscription(self) -> str:
        return f"{self.commands_topic}-podium"

    @property
    def events_subscription(self) -> str:
        return f"{self.events_topic}-podium"

    cloud_builds_topic: str = "cloud-builds"  # gcp mode: Cloud Build's notifications

    @property
    def cloud_builds_subscription(self) -> str:
        return f"{self.cloud_builds_topic}-podium"

    @property
    def dead_letter_subscription(self) -> str:
        return f"{self.dead_letter_topic}-podium"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
