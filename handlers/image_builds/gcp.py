"""The ``gcp`` build: Cloud Build from a content-addressed source tarball, without waiting.

``build_gcp(ctx)``:

1. looks for a build of this effect already (``list_builds`` filtered on the tag
   ``effect-<sha1(run id, effect id)[:12]>``, then on the exact ids in its substitutions): one
   that is PENDING/QUEUED/WORKING means there is nothing to do (its completion arrives on
   ``cloud-builds``); one that SUCCEEDED is reported at once as ``build.succeeded``; failed or
   cancelled ones are ignored and a new build is started;
2. streams the deterministic tarball of the service folder (``handlers.image_builds.sources``; entries
   under ``buildable_module_path``) through a temporary file to
   ``gs://<project>_cloudbuild/source/<service>-<sha256>.tar.gz`` (``if_generation_match=0``: an
   object of that name already holds those bytes; the bucket is created if it is missing, as the
   Go anchor does);
3. ``create_build``: ``docker build`` in ``buildable_module_path`` if the folder has a
   ``Dockerfile``, Google's buildpacks (``pack build --path <module>``) otherwise; ``images`` =
   the hydrated image path tagged with the first 12 hex digits of the source digest (no uuid);
   tags ``podium``/``run-``/``svc-``/``effect-`` plus the exact ids as substitutions
   (``ALLOW_LOOSE``, since no step references them); ``CLOUD_LOGGING_ONLY``; 1200 s timeout;
   ``service_account`` = the build account (``PODIUM_BUILD_SERVICE_ACCOUNT``, by default
   ``podium-builder@<project>``: never the project's default accounts, whose roles are broad).
   It returns ``[]`` without waiting on the operation.

Before the first build to an Artifact Registry image path, the repository is created if it is
missing (Cloud Build does not create it, and the push would fail): ``NotReady`` while it is
being created, so the effect comes back through its lease rather than holding a thread. An
image already pushed under the source digest's tag is reported at once: the same sources are
never built twice (a redeploy, or a configuration-only change, costs no build).

``<project>`` is the daemon's project (``PODIUM_PROJECT``): the build's notifications reach the
``cloud-builds`` topic of that project, which the daemon consumes; images go to the
architecture's project. Concurrency is capped by the effect runner (``PODIUM_BUILD_CONCURRENCY``),
which the Go anchor lacked.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any

import structlog

from handlers.base import EffectContext, Outcome
from handlers.gcp_clients import clients_for
from handlers.google_errors import api_error
from handlers.image_builds.sources import resolve_service, source_entries, write_source_tarball
from machines.cloud_builds import (
    IN_FLIGHT_STATUSES,
    SUB_EFFECT_ID,
    SUB_RUN_ID,
    SUB_SERVICE,
    build_tags,
    effect_tag,
    event_from_cloud_build,
    status_name,
)
from machines.errors import HandlerError, NotReady, PodiumError
from machines.hydration import image_base

if TYPE_CHECKING:
    from google.cloud.devtools.cloudbuild_v1 import Build

    from machines.architecture import Architecture, ServiceSpec

__all__ = [
    "BUILDPACKS_BUILDER",
    "BUILD_TIMEOUT_SECONDS",
    "DOCKER_STEP",
    "PACK_STEP",
    "build_gcp",
    "build_request",
    "build_service_account",
    "ensure_repository",
    "existing_image",
    "image_for",
    "module_path",
    "source_bucket",
]

log = structlog.get_logger("podium.build.gcp")

DOCKER_STEP = "gcr.io/cloud-builders/docker"
PACK_STEP = "gcr.io/k8s-skaffold/pack"
BUILDPACKS_BUILDER = "gcr.io/buildpacks/builder:latest"
BUILD_TIMEOUT_SECONDS = 1200
REPOSITORY_RECHECK_SECONDS = 2.0
_REGISTRY_IMAGE = re.compile(r"^(?P<location>[a-z0-9-]+)-docker\.pkg\.dev/(?P<project>[^/]+)/(?P<repo>[^/]+)/")


def source_bucket(project: str) -> str:
    return f"{project}_cloudbuild"


def module_path(spec: ServiceSpec, service: str) -> str:
    """``buildable_module_path`` as a clean relative POSIX path (``""`` for none or ``.``)."""
    raw = spec.deployment.buildable_module_path if spec.deployment else ""
    path = PurePosixPath(raw.replace("\\", "/")) if raw else PurePosixPath()
    if path.is_absolute() or ".." in path.parts:
        raise HandlerError(
            f"build of service {service!r}: buildable_module_path {raw!r} must be a relative path inside source_path",
            retryable=False,
        )
    return "" if str(path) == "." else str(path)


def image_for(
    spec: ServiceSpec, arch: Architecture, service: str, project: str, digest: str
) -> str:
    """The hydrated image path (without any tag or pinned digest) + ``:`` + ``digest[:12]``."""
    d = spec.deployment
    base = (d.image if d else "").split("@", 1)[0]
    last = base.rsplit("/", 1)[-1]
    if ":" in last:
        base = base[: len(base) - len(last)] + last.split(":", 1)[0]
    if not base:
        region = (d.region if d else "") or arch.region
        repo = (d.image_repo if d else "") or "podium"
        base = image_base(region, arch.project_id or project, repo, service)
    return f"{base}:{digest[:12]}"


def build_request(
    *,
    image: str,
    bucket: str,
    object_name: str,
    module: str,
    dockerfile: bool,
    run_id: str,
    effect_id: str,
    service: str,
    service_account: str = "",
) -> Build:
    """The ``Build`` that ``create_build`` is given (pure apart from the import)."""
    from google.cloud.devtools import cloudbuild_v1 as cb
    from google.protobuf import duration_pb2

    if dockerfile:
        step = cb.BuildStep(
            id="build", name=DOCKER_STEP, args=["build", "-t", image, "."], dir_=module
        )
    else:
        step = cb.BuildStep(
            id="build",
            name=PACK_STEP,
            entrypoint="pack",
            args=["build", image, "--builder", BUILDPACKS_BUILDER, "--path", module or "."],
        )
    return cb.Build(
        source=cb.Source(storage_source=cb.StorageSource(bucket=bucket, object_=object_name)),
        steps=[step],
        images=[image],
        tags=build_tags(run_id, service, effect_id),
        substitutions={SUB_RUN_ID: run_id, SUB_EFFECT_ID: effect_id, SUB_SERVICE: service},
        options=cb.BuildOptions(
            logging=cb.BuildOptions.LoggingMode.CLOUD_LOGGING_ONLY,
            substitution_option=cb.BuildOptions.SubstitutionOption.ALLOW_LOOSE,
        ),
        timeout=duration_pb2.Duration(seconds=BUILD_TIMEOUT_SECONDS),
        service_account=service_account,
    )


def build_service_account(project: str, configured: str) -> str:
    """The ``service_account`` of a build: ``projects/<project>/serviceAccounts/<email>``."""
    email = configured or f"podium-builder@{project}.iam.gserviceaccount.com"
    return f"projects/{project}/serviceAccounts/{email}"


# ---------------------------------------------------------------------------------------------
# Clients (lazy: the gcp extra is optional).
# ---------------------------------------------------------------------------------------------


def _api_error(service: str, what: str, exc: Exception) -> PodiumError:
    return api_error(exc, f"build of service {service!r}: {what}")


def repository_of(image: str) -> tuple[str, str] | None:
    """(parent ``projects/P/locations/L``, repository id) of an Artifact Registry image path;
    None for any other registry."""
    match = _REGISTRY_IMAGE.match(image)
    return None if match is None else (f"projects/{match['project']}/locations/{match['location']}", match["repo"])


def ensure_repository(registry: Any, image: str, service: str) -> None:
    """Create the Artifact Registry repository ``image`` is pushed to if it is missing; NotReady
    while it is being created. Other registries (``gcr.io``, a user's own) are left alone."""
    from google.api_core import exceptions as gexc
    from google.cloud import artifactregistry_v1 as ar

    repository_path = repository_of(image)
    if repository_path is None:
        return
    parent, repository_id = repository_path
    name = f"{parent}/repositories/{repository_id}"
    try:
        registry.get_repository(name=name)
        return
    except gexc.NotFound:
        pass
    except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
        raise _api_error(service, f"reading repository {name}", exc) from exc
    repository = ar.Repository(format_=ar.Repository.Format.DOCKER, description="Images built by Podium")
    try:
        registry.create_repository(parent=parent, repository_id=repository_id, repository=repository)
        log.info("artifact registry repository created", repository=name)
    except gexc.AlreadyExists:
        pass  # created meanwhile
    except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
        raise _api_error(service, f"creating repository {name}", exc) from exc
    raise NotReady(f"creating Artifact Registry repository {name}", retry_after=REPOSITORY_RECHECK_SECONDS)


def existing_image(registry: Any, image: str, service: str) -> str | None:
    """``<base>@<digest>`` of an image already pushed under ``image``'s tag (the tag is the source
    digest, so the same sources need no second build), or None."""
    from google.api_core import exceptions as gexc

    repository_path = repository_of(image)
    if repository_path is None:
        return None
    base, _, tag = image.rpartition(":")
    parent = "/repositories/".join(repository_path)
    try:
        for found in registry.list_docker_images(parent=parent):
            if found.uri.split("@", 1)[0] == base and tag in found.tags:
                return str(found.uri)
    except gexc.NotFound:
        return None
    except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
        raise _api_error(service, f"listing images in {parent}", exc) from exc
    return None


# ---------------------------------------------------------------------------------------------
# Steps.
# ---------------------------------------------------------------------------------------------


def _build_dict(build: Any) -> dict[str, Any]:
    from google.cloud.devtools import cloudbuild_v1

    return dict(json.loads(cloudbuild_v1.Build.to_json(build, use_integers_for_enums=False)))


def _ours(build: dict[str, Any], run_id: str, effect_id: str) -> bool:
    subs = build.get("substitutions") or {}
    return (
        subs.get(SUB_RUN_ID, run_id) == run_id and subs.get(SUB_EFFECT_ID, effect_id) == effect_id
    )


def _existing(client: Any, project: str, ctx: EffectContext, service: str) -> dict[str, Any] | None:
    """The most useful earlier build of this effect: a SUCCESS, else one still in flight."""
    from google.api_core import exceptions as gexc

    tag = effect_tag(ctx.run_id, ctx.effect_id)
    try:
        listed = [
            _build_dict(b) for b in client.list_builds(project_id=project, filter=f'tags="{tag}"')
        ]
    except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
        raise _api_error(service, "listing earlier builds", exc) from exc
    builds = [b for b in listed if _ours(b, ctx.run_id, ctx.effect_id)]
    by_status = {status_name(b.get("status")): b for b in reversed(builds)}  # newest wins
    if "SUCCESS" in by_status:
        return by_status["SUCCESS"]
    return next((by_status[s] for s in ("WORKING", "QUEUED", "PENDING") if s in by_status), None)


def _upload(storage: Any, bucket_name: str, object_name: str, fh: IO[bytes], service: str) -> None:
    from google.api_core import exceptions as gexc

    blob = storage.bucket(bucket_name).blob(object_name)
    for attempt in (1, 2):
        fh.seek(0)
        try:
            blob.upload_from_file(fh, content_type="application/gzip", if_generation_match=0)
            return
        except gexc.PreconditionFailed:
            return  # already uploaded: the name is the content's digest
        except gexc.NotFound as exc:
            if attempt == 2:
                raise _api_error(service, f"uploading to gs://{bucket_name}", exc) from exc
            try:
                storage.create_bucket(bucket_name)
                log.info("created source bucket", bucket=bucket_name)
            except gexc.Conflict:
                pass  # created meanwhile
            except (gexc.GoogleAPICallError, gexc.RetryError) as create_exc:
                raise _api_error(
                    service, f"creating bucket gs://{bucket_name}", create_exc
                ) from create_exc
        except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
            raise _api_error(
                service, f"uploading to gs://{bucket_name}/{object_name}", exc
            ) from exc


def stop_builds_gcp(ctx: EffectContext, client: Any = None) -> Sequence[Outcome]:
    """The ``stop`` effect of a cancelled run: cancel its Cloud Builds still queued or working
    (found by the run's tag), so a cancel stops the work it paid for."""
    from google.api_core import exceptions as gexc

    project = ctx.settings.project
    client = client if client is not None else clients_for(ctx.settings).get("cloudbuild")
    run_tag = build_tags(ctx.run_id, "-", "-")[1]
    cancelled: list[str] = []
    try:
        for build in client.list_builds(project_id=project, filter=f'tags="{run_tag}"'):
            info = _build_dict(build)
            if status_name(info.get("status")) in IN_FLIGHT_STATUSES:
                client.cancel_build(project_id=project, id=info["id"])
                cancelled.append(str(info["id"]))
    except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
        raise _api_error(ctx.item or "run", "cancelling the run's builds", exc) from exc
    return [Outcome("stop.succeeded", ctx.item, {"cancelled_builds": cancelled})]


def build_gcp(
    ctx: EffectContext, client: Any = None, storage: Any = None, registry: Any = None
) -> Sequence[Outcome]:
    service, spec, folder = resolve_service(ctx)
    project = ctx.settings.project
    module = module_path(spec, service)
    clients = clients_for(ctx.settings)
    client = client if client is not None else clients.get("cloudbuild")

    earlier = _existing(client, project, ctx, service)
    if earlier is not None:
        status = status_name(earlier.get("status"))
        log.info(
            "cloud build already exists", service=service, build_id=earlier.get("id"), status=status
        )
        if status in IN_FLIGHT_STATUSES:
            return []
        event = event_from_cloud_build(json.dumps(earlier).encode(), {})
        if event is None:  # not reachable for SUCCESS; be safe
            return []
        data = {k: v for k, v in event.data.items() if k != "effect_id"}
        return [Outcome(event.type, service, data)]

    if not folder.is_dir():
        raise HandlerError(
            f"build of service {service!r} failed: source folder {folder} does not exist",
            retryable=False,
        )
    registry = registry if registry is not None else clients.get("artifactregistry")
    ensure_repository(registry, image_for(spec, ctx.architecture, service, project, ""), service)
    bucket = source_bucket(project)
    with tempfile.TemporaryFile(prefix=f"podium-src-{service}-") as fh:
        try:
            entries = source_entries(folder, exclude=[Path(ctx.settings.state_dir)])
            digest, size = write_source_tarball(folder, entries, fh, prefix=module)
        except OSError as exc:
            raise HandlerError(
                f"build of service {service!r}: cannot pack {folder}: {exc}", retryable=True
            ) from exc
        image = image_for(spec, ctx.architecture, service, project, digest)
        pushed = existing_image(registry, image, service)
        if pushed is not None:
            log.info("image already built from these sources", service=service, image=pushed)
            return [Outcome("build.succeeded", service, {"image": pushed, "reused": True})]
        object_name = f"source/{service}-{digest}.tar.gz"
        storage = storage if storage is not None else clients.get("storage")
        _upload(storage, bucket, object_name, fh, service)

    request = build_request(
        image=image,
        bucket=bucket,
        object_name=object_name,
        module=module,
        dockerfile=(folder / "Dockerfile").is_file(),
        run_id=ctx.run_id,
        effect_id=ctx.effect_id,
        service=service,
        service_account=build_service_account(project, ctx.settings.build_service_account),
    )
    from google.api_core import exceptions as gexc

    try:
        client.create_build(project_id=project, build=request)
    except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
        raise _api_error(service, "starting the Cloud Build", exc) from exc
    log.info(
        "cloud build started",
        service=service,
        image=image,
        source=f"gs://{bucket}/{object_name}",
        bytes=size,
    )
    return []
