"""The ``gcp`` deploy backend: Cloud Run Admin API v2 (``google.cloud.run_v2.ServicesClient``).

``deploy_gcp(ctx)`` (effect kind ``deploy``, ``ctx.item`` = the service; the director first)
creates or updates ``projects/{project}/locations/{region}/services/{service}`` (region: the
deployment's, else the architecture's) and never waits on the long-running operation:

* ``get_service``; NotFound → ``create_service(parent, service, service_id)``; a service whose
  template does not carry our revision yet → ``update_service`` with the fetched service, its
  template replaced (so ingress, traffic, labels and whatever else someone set on the service are
  kept, and the etag guards against a concurrent change). Then ``NotReady(retry_after=5)``: the
  effect runner calls again later through the effect's durable lease.
* Called again with our revision in place: the latest ready revision is ours and the terminal
  condition succeeded → ``deploy.succeeded`` with ``url = service.uri``; reconciliation over and
  the terminal condition failed → a non-retryable error with Cloud Run's message; else NotReady.

The template (anchor §6, with its defects fixed): ``service_account`` = the run's account for the
service, one container with ``image`` (the build's image), ``env`` (plain values, and secrets as
``secret_key_ref {secret: value_from, version: "latest"}``: Secret Manager references, never
values), ``resources.limits {cpu, memory}``, ``scaling {min_instance_count, max_instance_count}``,
and a deterministic ``revision`` name ``<service>-<digest[:10]>`` (``sha1(image)[:10]`` for an
image without digest), so redoing the same deploy issues nothing. The director gets
``min_instance_count >= 1``: it lives on a streaming pull, not on requests, and a service scaled
to zero has no puller at all (the anchor let it starve).

CPU allocation: ``resources.cpu_idle`` is a proto3 bool without presence, and the API documents
that once ``resources`` is set the caller must send ``true`` to keep request-only CPU. Podium
always sets limits and sends ``false``: instance-based billing, CPU outside requests, which the
director's pull (and any background worker) needs. It is set explicitly for the director so
that the requirement is visible where it matters.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any, TypeVar

from google.api_core import exceptions as gexc
from google.cloud import run_v2

from handlers.base import EffectContext, Outcome
from handlers.google_errors import api_error
from machines.architecture import Architecture, DeploymentSpec
from machines.errors import HandlerError, NotReady
from machines.hydration import service_account_email

__all__ = [
    "RECHECK_SECONDS",
    "build_template",
    "deploy_gcp",
    "revision_name",
    "service_name",
]

RECHECK_SECONDS = 5.0
_DIGEST = re.compile(r"@sha256:(?P<digest>[0-9a-f]{10,})$")
T = TypeVar("T")
Condition = run_v2.Condition


@cache
def _default_client() -> run_v2.ServicesClient:
    return run_v2.ServicesClient()


# ---- pure parts (tested on their own) -------------------------------------------------------


def service_name(project: str, region: str, service: str) -> str:
    return f"projects/{project}/locations/{region}/services/{service}"


def revision_name(service: str, image: str) -> str:
    """``<service>-<first 10 hex of the image digest>``, or of ``sha1(image)`` without a digest."""
    match = _DIGEST.search(image)
    token = match["digest"][:10] if match else hashlib.sha1(image.encode()).hexdigest()[:10]
    return f"{service}-{token}"


def build_template(
    *,
    service: str,
    deployment: DeploymentSpec,
    image: str,
    service_account: str,
    is_director: bool,
) -> run_v2.RevisionTemplate:
    env = [run_v2.EnvVar(name=k, value=str(v)) for k, v in deployment.environment_vars.items()]
    env += [
        run_v2.EnvVar(
            name=s.name,
            value_source=run_v2.EnvVarSource(
                secret_key_ref=run_v2.SecretKeySelector(secret=s.value_from, version="latest")
            ),
        )
        for s in deployment.secret_environment_vars
    ]
    limits = {k: v for k, v in (("cpu", deployment.cpu), ("memory", deployment.memory)) if v}
    resources = run_v2.ResourceRequirements(limits=limits)
    min_instances = deployment.min_instances
    if is_director:
        # The director works on a streaming pull: keep one instance up, with its CPU always on
        # (False is also what every service gets: see the module doc).
        min_instances = max(min_instances or 0, 1)
        resources.cpu_idle = False
    scaling = run_v2.RevisionScaling()
    if min_instances is not None:
        scaling.min_instance_count = min_instances
    if deployment.max_instances is not None:
        scaling.max_instance_count = max(deployment.max_instances, min_instances or 0)
    return run_v2.RevisionTemplate(
        revision=revision_name(service, image),
        service_account=service_account,
        scaling=scaling,
        containers=[run_v2.Container(image=image, env=env, resources=resources)],
    )


def _region(arch: Architecture, deployment: DeploymentSpec, service: str) -> str:
    region = deployment.region or arch.region
    if not region:
        raise HandlerError(
            f"deploy: {service} has no region (set deployment.region or the root region)",
            retryable=False,
        )
    return region


# ---- the handler ----------------------------------------------------------------------------


def deploy_gcp(
    ctx: EffectContext, client: run_v2.ServicesClient | None = None
) -> Sequence[Outcome]:
    arch = ctx.architecture
    service, _dataflow, spec = ctx.target()
    if spec.deployment is None:
        raise HandlerError(f"deploy: service {service!r} has no deployment", retryable=False)
    deployment = spec.deployment
    project = arch.project_id or ctx.settings.project
    region = _region(arch, deployment, service)
    image = (ctx.outputs.get("images") or {}).get(service)
    if not image:
        raise HandlerError(f"deploy: no image was built for {service!r}", retryable=False)
    account = (ctx.outputs.get("service_accounts") or {}).get(service) or service_account_email(
        spec.service_account, project
    )
    template = build_template(
        service=service,
        deployment=deployment,
        image=str(image),
        service_account=str(account),
        is_director=service == arch.service_manager_spec.name,
    )
    revision = template.revision
    name = service_name(project, region, service)
    run = client or _default_client()

    try:
        existing = _call(f"get {name}", lambda: run.get_service(name=name))
    except gexc.NotFound:
        try:
            _call(
                f"create {name}",
                lambda: run.create_service(
                    parent=f"projects/{project}/locations/{region}",
                    service=run_v2.Service(template=template),
                    service_id=service,
                ),
            )
        except gexc.AlreadyExists:
            pass  # created concurrently (another replica): the next check sees it
        except gexc.NotFound as exc:  # the project or the location does not exist
            raise HandlerError(
                f"Cloud Run: cannot create {name}: {exc.message}", retryable=False
            ) from exc
        raise NotReady(
            f"creating Cloud Run service {name} (revision {revision})", retry_after=RECHECK_SECONDS
        ) from None

    if existing.template.revision != revision:
        desired = run_v2.Service(existing)  # a copy: keep what Podium does not own
        desired.template = template
        try:
            _call(f"update {name}", lambda: run.update_service(service=desired))
        except gexc.NotFound as exc:  # deleted between our get and update: start over
            raise HandlerError(
                f"Cloud Run: {name} vanished during the update", retryable=True
            ) from exc
        raise NotReady(
            f"updating Cloud Run service {name} to revision {revision}", retry_after=RECHECK_SECONDS
        )

    _check_same_configuration(name, existing.template, template)
    condition = existing.terminal_condition
    ready = existing.latest_ready_revision
    if (
        ready == revision or ready.endswith(f"/{revision}")
    ) and condition.state == Condition.State.CONDITION_SUCCEEDED:
        return [Outcome("deploy.succeeded", service, {"url": existing.uri, "revision": revision})]
    if not existing.reconciling and condition.state == Condition.State.CONDITION_FAILED:
        raise HandlerError(
            f"Cloud Run service {name}: revision {revision} failed: "
            f"{condition.message or condition.reason or 'no message'}",
            retryable=False,
        )
    raise NotReady(
        f"Cloud Run service {name}: revision {revision} not ready yet "
        f"({Condition.State(condition.state).name})",
        retry_after=RECHECK_SECONDS,
    )


def _check_same_configuration(
    name: str, live: run_v2.RevisionTemplate, wanted: run_v2.RevisionTemplate
) -> None:
    """Revision names are immutable: the same name with other settings cannot be deployed.

    Compares what Cloud Run does not normalise (account, image, plain env values), so a changed
    configuration without a new image is a clear error rather than a silent success.
    """

    def key(t: run_v2.RevisionTemplate) -> tuple[Any, ...]:
        container = t.containers[0] if t.containers else run_v2.Container()
        env = tuple(
            (e.name, e.value) for e in container.env if not e.value_source.secret_key_ref.secret
        )
        return t.service_account, container.image, env

    if key(live) != key(wanted):
        raise HandlerError(
            f"Cloud Run service {name} already runs revision {wanted.revision} with another service account, "
            "image or environment; a revision name cannot be reused, so rebuild the service (a new image "
            "digest names a new revision) to deploy the changed configuration",
            retryable=False,
        )


def _call(what: str, fn: Callable[[], T]) -> T:
    """One API call; Google errors become HandlerErrors that say whether a retry may help
    (``handlers.google_errors.api_error``). NotFound and AlreadyExists pass through (the caller
    decides what they mean)."""
    try:
        return fn()
    except (gexc.NotFound, gexc.AlreadyExists):
        raise
    except (gexc.GoogleAPICallError, gexc.RetryError) as exc:  # Aborted (etag), Unavailable, ...
        raise api_error(exc, f"Cloud Run: cannot {what}") from exc
