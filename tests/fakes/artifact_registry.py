"""A stateful fake of Artifact Registry v1 (``google.devtools.artifactregistry.v1.ArtifactRegistry``).

Served over gRPC on loopback; the real ``artifactregistry_v1.ArtifactRegistryClient`` talks to it
through ``tests.fakes.grpc_server.insecure_client``. Methods: ``CreateRepository`` (a long-running
operation whose response is the ``Repository``), ``GetRepository``, ``ListRepositories``,
``ListDockerImages`` and ``GetDockerImage``. Builds push images with ``push`` (the Cloud Build
fake calls it); a test may too.

Rules enforced, and where they are documented:

* The create call: "Creates a repository. The returned Operation will finish once the repository
  has been created. Its response will be the created Repository."; ``repositoryId`` is required
  (https://cloud.google.com/artifact-registry/docs/reference/rest/v1/projects.locations.repositories/create).
  A repository id that exists already in that location is ``ALREADY_EXISTS`` ("For each location
  in a project, repository names must be unique": ``Repository.name`` in the v1 API reference,
  https://cloud.google.com/artifact-registry/docs/reference/rest/v1/projects.locations.repositories).
* Repository ids: lowercase letters, digits and hyphens, a letter first, a letter or digit last,
  at most 63 characters, else ``INVALID_ARGUMENT`` (the naming rule of "Create standard
  repositories", https://cloud.google.com/artifact-registry/docs/repositories/create-repos; the
  exact sentence could not be retrieved here, the rule is the one Podium relies on).
* The format is fixed at creation ("Artifact format ... cannot be changed after the repository
  is created", same page); the fake requires one (``FORMAT_UNSPECIFIED`` is ``INVALID_ARGUMENT``)
  and stores images only in ``DOCKER`` repositories of mode ``STANDARD_REPOSITORY``.
* Unknown repository or image: ``NOT_FOUND``.
* Docker image names: ``projects/<p>/locations/<l>/repositories/<r>/dockerImages/<image>@<digest>``
  and ``uri`` ``<l>-docker.pkg.dev/<p>/<r>/<image>@<digest>`` (``DockerImage`` in the v1 API,
  https://cloud.google.com/artifact-registry/docs/reference/rest/v1/projects.locations.repositories.dockerImages);
  a nested image path has its ``/`` escaped as ``%2F`` in the resource name.
* A push needs the repository to exist; otherwise the registry answers ``name unknown:
  Repository "<r>" not found`` (what Cloud Build logs show for such a push, e.g.
  https://github.com/GoogleCloudPlatform/developer-journey-app/issues/117, and "you need to create
  repositories in the Artifact Registry before you can publish images",
  https://cloud.google.com/artifact-registry/docs/transition/changes-gcp#workflow). A push moves a
  tag from the image that had it, unless the repository has ``docker_config.immutable_tags``
  ("prevents all tags from being modified, moved or deleted": ``DockerRepositoryConfig``).
* Image path components follow the OCI distribution spec, ``[a-z0-9]+(?:[._-][a-z0-9]+)*``
  (https://github.com/opencontainers/distribution-spec/blob/main/spec.md), tags
  ``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`` (same spec).

Not modelled: IAM, cleanup policies, remote/virtual upstreams, packages/versions/tags APIs.
"""

from __future__ import annotations

import hashlib
import re
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc
from google.cloud import artifactregistry_v1 as ar
from google.longrunning import operations_pb2
from google.protobuf import timestamp_pb2

from .grpc_server import FakeError, FakeServer, ServedFake, Unary

__all__ = [
    "MEDIA_TYPE",
    "SERVICE",
    "ArtifactRegistryFake",
    "ImageRef",
    "PushRejected",
    "now_timestamp",
    "page",
    "parse_image",
    "repository_id_problem",
]

SERVICE = "google.devtools.artifactregistry.v1.ArtifactRegistry"
MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
NOT_FOUND_MESSAGE = "Requested entity was not found."

_REPO_ID = re.compile(r"^[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_PARENT = re.compile(r"^projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)$")
_REPO_NAME = re.compile(r"^projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/repositories/(?P<repo>[^/]+)$")
_IMAGE_NAME = re.compile(r"^(?P<repo>projects/[^/]+/locations/[^/]+/repositories/[^/]+)/dockerImages/(?P<image>[^/@]+)@sha256:[0-9a-f]{64}$")
_HOST = re.compile(r"^(?P<location>[a-z0-9-]+)-docker\.pkg\.dev$")
_PATH_COMPONENT = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_MAX_PAGE = 1000

T = TypeVar("T")


class PushRejected(Exception):
    """A ``docker push`` the registry refused; the message is what the registry answers."""


def repository_id_problem(repository_id: str) -> str | None:
    """Why ``repository_id`` is not a valid Artifact Registry repository id, or ``None``."""
    if _REPO_ID.match(repository_id):
        return None
    return (
        f"invalid repository id {repository_id!r}: use 1-63 lowercase letters, digits or hyphens, "
        "starting with a letter and ending with a letter or digit"
    )


@dataclass(frozen=True)
class ImageRef:
    """``<location>-docker.pkg.dev/<project>/<repository>/<image>[:<tag>][@<digest>]``."""

    location: str
    project: str
    repository: str
    image: str
    tag: str | None = None
    digest: str | None = None

    @property
    def repository_name(self) -> str:
        return f"projects/{self.project}/locations/{self.location}/repositories/{self.repository}"

    @property
    def base(self) -> str:
        return f"{self.location}-docker.pkg.dev/{self.project}/{self.repository}/{self.image}"


def parse_image(reference: str) -> ImageRef:
    """An Artifact Registry Docker reference, or ``ValueError`` saying what is wrong with it."""
    rest, _, digest = reference.partition("@")
    if digest and not _DIGEST.match(digest):
        raise ValueError(f"invalid reference format: bad digest in {reference!r}")
    host, _, path = rest.partition("/")
    host_match = _HOST.match(host)
    if host_match is None:
        raise ValueError(f"{reference!r} is not an Artifact Registry Docker reference (<location>-docker.pkg.dev/...)")
    last = path.rsplit("/", 1)[-1]
    tag = None
    if ":" in last:
        path, tag = path.rsplit(":", 1)
        if not _TAG.match(tag):
            raise ValueError(f"invalid reference format: bad tag {tag!r} in {reference!r}")
    parts = path.split("/")
    if len(parts) < 3:
        raise ValueError(
            f"{reference!r} names no image: pushes are of the form <location>-docker.pkg.dev/PROJECT/REPOSITORY/IMAGE"
        )
    project, repository, image = parts[0], parts[1], "/".join(parts[2:])
    if not all(_PATH_COMPONENT.match(p) for p in parts[1:]):
        raise ValueError(f"invalid reference format: repository name must be lowercase in {reference!r}")
    return ImageRef(host_match["location"], project, repository, image, tag, digest or None)


def page(items: Sequence[T], page_size: int, page_token: str, limit: int = _MAX_PAGE) -> tuple[list[T], str]:
    """One page of ``items`` and the token of the next (``""`` at the end); tokens are offsets."""
    try:
        start = int(page_token) if page_token else 0
    except ValueError:
        raise FakeError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid page token {page_token!r}") from None
    if start < 0 or start > len(items):
        raise FakeError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid page token {page_token!r}")
    size = min(page_size, limit) if page_size > 0 else limit
    end = start + size
    return list(items[start:end]), (str(end) if end < len(items) else "")


def now_timestamp() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(datetime.now(UTC))
    return stamp


def _name_filter(expression: str) -> Callable[[str], bool]:
    """``name="…"`` with ``*`` wildcards, case-insensitive (``ListRepositoriesRequest.filter``)."""
    if not expression.strip():
        return lambda _: True
    match = re.fullmatch(r'\s*name\s*=\s*"([^"]*)"\s*', expression)
    if match is None:
        raise FakeError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid filter {expression!r}: only name=\"…\" is supported")
    pattern = re.compile("^" + ".*".join(re.escape(p) for p in match[1].split("*")) + "$", re.IGNORECASE)
    return lambda name: bool(pattern.match(name))


class ArtifactRegistryFake(ServedFake):
    """Repositories and the Docker images pushed into them, per project and location."""

    SERVICE = SERVICE

    def __init__(self, *, create_delay: float = 0.0) -> None:
        self.create_delay = create_delay
        self._lock = threading.Lock()
        self._repos: dict[str, ar.Repository] = {}
        self._images: dict[str, dict[str, ar.DockerImage]] = {}  # repository name → image name → image

    # -- serving (ServedFake: start, stop, endpoint) --------------------------------------------

    def methods(self, server: FakeServer) -> dict[str, Unary]:
        return {
            "CreateRepository": Unary(
                ar.CreateRepositoryRequest, operations_pb2.Operation, lambda r, _: self._create_repository(server, r)
            ),
            "GetRepository": Unary(ar.GetRepositoryRequest, ar.Repository, lambda r, _: self.get_repository(r.name)),
            "ListRepositories": Unary(ar.ListRepositoriesRequest, ar.ListRepositoriesResponse, self._list_repositories),
            "ListDockerImages": Unary(ar.ListDockerImagesRequest, ar.ListDockerImagesResponse, self._list_docker_images),
            "GetDockerImage": Unary(ar.GetDockerImageRequest, ar.DockerImage, lambda r, _: self._get_docker_image(r.name)),
        }

    # -- state (also for tests) -----------------------------------------------------------------

    def create_repository(
        self, parent: str, repository_id: str, repository: ar.Repository | None = None
    ) -> ar.Repository:
        """Validate and store a repository at once (the RPC wraps this in an operation)."""
        match = _PARENT.match(parent)
        if match is None:
            raise FakeError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid parent {parent!r}: want projects/<project>/locations/<location>")
        if not repository_id:
            raise FakeError(grpc.StatusCode.INVALID_ARGUMENT, "repository_id is required")
        problem = repository_id_problem(repository_id)
        if problem:
            raise FakeError(grpc.StatusCode.INVALID_ARGUMENT, problem)
        repo = ar.Repository(repository) if repository is not None else ar.Repository(format_=ar.Repository.Format.DOCKER)
        if repo.format_ == ar.Repository.Format.FORMAT_UNSPECIFIED:
            raise FakeError(grpc.StatusCode.INVALID_ARGUMENT, "the repository format is required")
        name = f"{parent}/repositories/{repository_id}"
        repo.name = name
        if repo.mode == ar.Repository.Mode.MODE_UNSPECIFIED:
            repo.mode = ar.Repository.Mode(ar.Repository.Mode.STANDARD_REPOSITORY)
        stamp = now_timestamp()
        repo.create_time = stamp
        repo.update_time = stamp
        if repo.format_ == ar.Repository.Format.DOCKER:
            repo.registry_uri = f"{match['location']}-docker.pkg.dev/{match['project']}/{repository_id}"
        with self._lock:
            if name in self._repos:
                raise FakeError(grpc.StatusCode.ALREADY_EXISTS, "the repository already exists")
            self._repos[name] = repo
            self._images[name] = {}
        return ar.Repository(repo)

    def get_repository(self, name: str) -> ar.Repository:
        with self._lock:
            repo = self._repos.get(name)
            if repo is None:
                raise FakeError(grpc.StatusCode.NOT_FOUND, NOT_FOUND_MESSAGE)
            return ar.Repository(repo)

    def repositories(self) -> list[ar.Repository]:
        with self._lock:
            return [ar.Repository(r) for _, r in sorted(self._repos.items())]

    def images(self, repository_name: str | None = None) -> list[ar.DockerImage]:
        """Every stored image (of one repository, given its resource name), by name."""
        with self._lock:
            names = [repository_name] if repository_name else sorted(self._images)
            return [ar.DockerImage(i) for n in names for _, i in sorted(self._images.get(n, {}).items())]

    def pushed(self) -> list[str]:
        """``<uri base>:<tag>`` of every tagged image and ``<uri>`` of untagged ones, sorted."""
        refs: list[str] = []
        for image in self.images():
            base = image.uri.split("@", 1)[0]
            refs.extend([f"{base}:{t}" for t in image.tags] or [image.uri])
        return sorted(refs)

    def push(self, reference: str, digest: str | None = None, size_bytes: int = 4096) -> ar.DockerImage:
        """Store a pushed image (``<location>-docker.pkg.dev/<p>/<r>/<image>[:tag]``) or raise ``PushRejected``."""
        try:
            ref = parse_image(reference)
        except ValueError as exc:
            raise PushRejected(str(exc)) from None
        digest = digest or ref.digest or "sha256:" + hashlib.sha256(reference.encode()).hexdigest()
        if not _DIGEST.match(digest):
            raise PushRejected(f"invalid digest {digest!r}")
        with self._lock:
            repo = self._repos.get(ref.repository_name)
            if repo is None:
                raise PushRejected(f'name unknown: Repository "{ref.repository}" not found')
            if repo.format_ != ar.Repository.Format.DOCKER or repo.mode != ar.Repository.Mode.STANDARD_REPOSITORY:
                raise PushRejected(f'denied: repository "{ref.repository}" does not accept Docker image pushes')
            images = self._images[ref.repository_name]
            name = f"{ref.repository_name}/dockerImages/{urllib.parse.quote(ref.image, safe='')}@{digest}"
            if ref.tag:
                for other_name, other in images.items():
                    if other_name != name and other.uri.split("@", 1)[0] == ref.base and ref.tag in other.tags:
                        if repo.docker_config.immutable_tags:
                            raise PushRejected(
                                f"denied: tag {ref.tag!r} of {ref.base} is immutable and already points to another image"
                            )
                        other.tags = [t for t in other.tags if t != ref.tag]
            stamp = now_timestamp()
            image = images.get(name)
            if image is None:
                image = ar.DockerImage(
                    name=name,
                    uri=f"{ref.base}@{digest}",
                    image_size_bytes=size_bytes,
                    media_type=MEDIA_TYPE,
                    upload_time=stamp,
                    build_time=stamp,
                )
                images[name] = image
            if ref.tag and ref.tag not in image.tags:
                image.tags = [*image.tags, ref.tag]
            image.update_time = stamp
            return ar.DockerImage(image)

    # -- RPCs -----------------------------------------------------------------------------------

    def _create_repository(self, server: FakeServer, request: ar.CreateRepositoryRequest) -> Any:
        repo = self.create_repository(request.parent, request.repository_id, request.repository)
        delay = self.create_delay
        return server.operations.start(
            request.parent, lambda elapsed: repo if elapsed >= delay else None, ar.OperationMetadata()
        )

    def _list_repositories(self, request: ar.ListRepositoriesRequest, _: grpc.ServicerContext) -> ar.ListRepositoriesResponse:
        if _PARENT.match(request.parent) is None:
            raise FakeError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid parent {request.parent!r}")
        keep = _name_filter(request.filter)
        prefix = request.parent + "/repositories/"
        repos = [r for r in self.repositories() if r.name.startswith(prefix) and keep(r.name)]
        items, token = page(repos, request.page_size, request.page_token)
        return ar.ListRepositoriesResponse(repositories=items, next_page_token=token)

    def _list_docker_images(self, request: ar.ListDockerImagesRequest, _: grpc.ServicerContext) -> ar.ListDockerImagesResponse:
        if _REPO_NAME.match(request.parent) is None:
            raise FakeError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid parent {request.parent!r}")
        self.get_repository(request.parent)  # NOT_FOUND for an unknown repository
        images = self.images(request.parent)
        field, _, direction = (request.order_by or "name").strip().partition(" ")
        keys: dict[str, Callable[[ar.DockerImage], Any]] = {
            "name": lambda i: i.name,
            "upload_time": lambda i: ar.DockerImage.pb(i).upload_time.ToNanoseconds(),
            "update_time": lambda i: ar.DockerImage.pb(i).update_time.ToNanoseconds(),
        }
        if field not in keys or direction.strip().lower() not in ("", "asc", "desc"):
            raise FakeError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid order_by {request.order_by!r}")
        images.sort(key=keys[field], reverse=direction.strip().lower() == "desc")
        items, token = page(images, request.page_size, request.page_token)
        return ar.ListDockerImagesResponse(docker_images=items, next_page_token=token)

    def _get_docker_image(self, name: str) -> ar.DockerImage:
        match = _IMAGE_NAME.match(name)
        if match is None:
            raise FakeError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid docker image name {name!r}")
        with self._lock:
            image = self._images.get(match["repo"], {}).get(name)
            if image is None:
                raise FakeError(grpc.StatusCode.NOT_FOUND, NOT_FOUND_MESSAGE)
            return ar.DockerImage(image)

