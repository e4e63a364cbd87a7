"""The ``gcp`` deploy backend: Cloud Run Admin API v2 (``google.cloud.run_v2.ServicesClient``).

``deploy_gcp(ctx)`` (effect kind ``deploy``, ``ctx.item`` = the service; the director first)
creates or updates ``projects/{project}/locations/{region}/services/{service}`` (region: the
deployment's, else the architecture's) and never waits on the long-running operation:

* ``get_service``; NotFound → ``create_service(parent, service, service_id)``; a service whose
  template is not ours (another configuration, or someone changed it) → ``update_service`` with
  the fetched service, its template replaced (so ingress, traffic, labels and whatever else
  someone set on the service are kept, and the etag guards against a concurrent change). Then
  ``NotReady(retry_after=5)``: the effect runner calls again later through the effect's lease.
* Called again with our template in place: the latest ready revision is ours and the terminal
  condition succeeded → ``deploy.succeeded`` with ``url = service.uri``; reconciliation over and
  the terminal condition failed → a non-retryable error with Cloud Run's message; else NotReady.

Revision names: ``<service>-<config digest[:8]>-<generation>``. The digest covers the whole
template Podium sends (image, env, resources, scaling, account), so a configuration-only change
(memory, an env var) names a new revision without a rebuild, and drift made outside Podium
(a template that is not ours) is put back. The generation keeps names unique when a service
returns to an earlier configuration (Cloud Run refuses a reused revision name with 409).

The template (anchor §6, with its defects fixed): ``service_account`` = the run's account for the
service, one container with ``image`` (the build's image), ``env`` (plain values, and secrets as
``secret_key_ref {secret: value_from, version: "latest"}``: Secret Manager references, never
values), ``resources.limits {cpu, memory}``, ``scaling {min_instance_count, max_instance_count}``.
The director gets ``min_instance_count >= 1``: it lives on a streaming pull, not on requests, and
a service scaled to zero has no puller at all (the anchor let it starve).

CPU allocation: ``resources.cpu_idle`` is a proto3 bool without presence, and the API documents
that once ``resources`` is set the caller must send ``true`` to keep request-only CPU. Podium
sends ``false`` (instance-based billing: CPU outside requests, which the director's pull and any
background worker need) unless the service asks for less than one CPU, which Cloud Run allows
only with request-based billing (``cpu_idle = true``); the architecture refuses a fractional CPU
for the director.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import TypeVar

from google.api_core import exceptions as gexc
from google.cloud import run_v2

from handlers.base import EffectContext, Outcome
from handlers.gcp_clients import clients_for
from handlers.google_errors import api_error
from machines.architecture import Architecture, DeploymentSpec
from machines.architecture.cloud_run_sizes import cpu_count
from machines.errors import HandlerError, NotReady
from machines.hydration import service_account_email

__all__ = [
    "RECHECK_SECONDS",
    "build_template",
    "config_digest",
    "deploy_gcp",
    "is_ours",
    "revision_name",
    "service_name",
    "undeploy_gcp",
]

RECHECK_SECONDS = 5.0
ACT_AS_RECHECK_SECONDS = 15.0
T = TypeVar("T")
Condition = run_v2.Condition


# ---- pure parts (tested on their own) -------------------------------------------------------


def service_name(project: str, region: str, service: str) -> str:
    return f"projects/{project}/locations/{region}/services/{service}"


def config_digest(template: run_v2.RevisionTemplate) -> str:
    """sha256 of the template Podium sends, its revision name left out."""
    unnamed = run_v2.RevisionTemplate(template)
    unnamed.revision = ""
    raw = run_v2.RevisionTemplate.pb(unnamed).SerializeToString(deterministic=True)
    return hashlib.sha256(raw).hexdigest()


def revision_name(service: str, digest: str, generation: int) -> str:
    """``<service>-<digest[:8]>-<generation>``: at most 63 characters for a 49-character service."""
    return f"{service}-{digest[:8]}-{generation}"


def is_ours(revision: str, service: str, digest: str) -> bool:
    """Whether a live template's revision name says it carries this configuration."""
    return revision.startswith(f"{service}-{digest[:8]}-")


def build_template(
    *,
    service: str,
    deployment: DeploymentSpec,
    image: str,
    service_account: str,
    is_director: bool,
) -> run_v2.RevisionTemplate:
    # Sorted: a mapping read back from Firestore comes in another key order than the one written,
    # and the template (hence the revision name) must not depend on where it was read from.
    env = [run_v2.EnvVar(name=k, value=str(v)) for k, v in sorted(deployment.environment_vars.items())]
    env += [
        run_v2.EnvVar(
            name=s.name,
            value_source=run_v2.EnvVarSource(
                secret_key_ref=run_v2.SecretKeySelector(secret=s.value_from, version="latest")
            ),
        )
        for s in sorted(deployment.secret_environment_vars, key=lambda s: s.name)
    ]
    limits = {k: v for k, v in (("cpu", deployment.cpu), ("memory", deployment.memory)) if v}
    cpu = cpu_count(deployment.cpu)
    # Below one CPU Cloud Run requires request-based billing (see the module doc).
    resources = run_v2.ResourceRequirements(limits=limits, cpu_idle=cpu is not None and cpu < 1)
    min_instances = deployment.min_instances
    if is_director:
        # The director works on a streaming pull: keep one instance up, with its CPU always on.
        min_instances = max(min_instances or 0, 1)
        resources.cpu_idle = False
    scaling = run_v2.RevisionScaling()
    if min_instances is not None:
        scaling.min_instance_count = min_instances
    if deployment.max_instances is not None:
        scaling.max_instance_count = max(deployment.max_instances, min_instances or 0)
    return run_v2.RevisionTemplate(
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
    digest = config_digest(template)
    name = service_name(project, region, service)
    run = client or clients_for(ctx.settings).get("run")

    try:
        existing = _call(f"get {name}", lambda: run.get_service(name=name))
    except gexc.NotFound:
        template.revision = revision_name(service, digest, 1)
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
            f"creating Cloud Run service {name} (revision {template.revision})", retry_after=RECHECK_SECONDS
        ) from None

    if not is_ours(existing.template.revision, service, digest):
        template.revision = revision_name(service, digest, existing.generation + 1)
        desired = run_v2.Service(existing)  # a copy: keep what Podium does not own
        desired.template = template
        try:
            _call(f"update {name}", lambda: run.update_service(service=desired))
        except gexc.NotFound as exc:  # deleted between our get and update: start over
            raise HandlerError(
                f"Cloud Run: {name} vanished during the update", retryable=True
            ) from exc
        except gexc.AlreadyExists:  # 409: that revision name was taken meanwhile; re-read
            pass
        raise NotReady(
            f"updating Cloud Run service {name} to revision {template.revision}", retry_after=RECHECK_SECONDS
        )

    revision = existing.template.revision
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


def undeploy_gcp(ctx: EffectContext, client: run_v2.ServicesClient | None = None) -> Sequence[Outcome]:
    """The ``undeploy`` effect (teardown): delete the service; NotReady until it is gone."""
    arch = ctx.architecture
    service, _dataflow, spec = ctx.target()
    project = arch.project_id or ctx.settings.project
    region = (spec.deployment.region if spec.deployment else "") or arch.region
    name = service_name(project, region, service)
    run = client or clients_for(ctx.settings).get("run")
    try:
        _call(f"get {name}", lambda: run.get_service(name=name))
        _call(f"delete {name}", lambda: run.delete_service(name=name))
    except gexc.NotFound:
        return [Outcome("undeploy.succeeded", service, {"deleted": name})]
    raise NotReady(f"deleting Cloud Run service {name}", retry_after=RECHECK_SECONDS)


def _call(what: str, fn: Callable[[], T]) -> T:
    """One API call; Google errors become HandlerErrors that say whether a retry may help
    (``handlers.google_errors.api_error``). NotFound and AlreadyExists pass through (the caller
    decides what they mean)."""
    try:
        return fn()
    except (gexc.NotFound, gexc.AlreadyExists):
        raise
    except gexc.PermissionDenied as exc:
        if "actas" in str(exc).lower():
            # The daemon was granted serviceAccountUser on the account moments ago (iam.provision);
            # IAM takes minutes to propagate. Wait for it; the state's deadline bounds the wait.
            raise NotReady(f"Cloud Run: cannot {what} yet: {exc.message}", retry_after=ACT_AS_RECHECK_SECONDS) from exc
        raise api_error(exc, f"Cloud Run: cannot {what}") from exc
    except (gexc.GoogleAPICallError, gexc.RetryError) as exc:  # Aborted (etag), Unavailable, ...
        raise api_error(exc, f"Cloud Run: cannot {what}") from exc
