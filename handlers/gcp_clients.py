"""Every Google Cloud client the gcp backends use, made in one place.

In production each client talks to Google's own endpoint with Application Default
Credentials. ``PODIUM_GCP_ENDPOINTS`` (``api=host:port,...``, e.g. ``run=127.0.0.1:7001``)
points an API at a plaintext endpoint on loopback with anonymous credentials instead: the
stateful fakes that the gcp end-to-end test runs against (``tests/fakes/``). Only loopback
hosts are accepted there, so the variable can never send credentials-free traffic elsewhere.

APIs (the keys of ``PODIUM_GCP_ENDPOINTS``): ``iam`` (IAM Admin v1), ``projects`` (Resource
Manager v3), ``run`` (Cloud Run Admin v2), ``cloudbuild``, ``artifactregistry``,
``secretmanager``, ``pubsub`` (topic and subscription IAM policies: the Pub/Sub emulator has
none), ``storage`` and ``bigquery`` (JSON APIs: ``http://host:port``).
"""

from __future__ import annotations

import importlib
import ipaddress
import threading
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from machines.errors import HandlerError

if TYPE_CHECKING:
    from handlers.settings import HandlerSettings

__all__ = ["API_NAMES", "GcpClients", "clients_for", "parse_endpoints"]

INSTALL_HINT = "pip install 'podium[gcp]'"


def _gapic(module: str, name: str) -> Callable[[str | None, str], Any]:
    """A maker for a GAPIC (gRPC) client class ``module.name`` (imported by name: the gcp extra
    is optional, and a missing package must be an ImportError even once its neighbours loaded)."""

    def make(endpoint: str | None, project: str) -> Any:
        cls = getattr(importlib.import_module(module), name)
        if endpoint is None:
            return cls()
        import grpc
        from google.auth.credentials import AnonymousCredentials

        transport = cls.get_transport_class("grpc")(
            channel=grpc.insecure_channel(endpoint), credentials=AnonymousCredentials()
        )
        return cls(transport=transport)

    return make


def _json_api(module: str) -> Callable[[str | None, str], Any]:
    """A maker for the ``Client`` of a JSON API library (``google.cloud.storage``, ``bigquery``)."""

    def make(endpoint: str | None, project: str) -> Any:
        cls = importlib.import_module(module).Client
        if endpoint is None:
            return cls(project=project)
        from google.auth.credentials import AnonymousCredentials

        return cls(project=project, credentials=AnonymousCredentials(), client_options={"api_endpoint": _http(endpoint)})

    return make


def _http(endpoint: str) -> str:
    return endpoint if endpoint.startswith("http") else f"http://{endpoint}"


_MAKERS: dict[str, Callable[[str | None, str], Any]] = {
    "iam": _gapic("google.cloud.iam_admin_v1", "IAMClient"),
    "projects": _gapic("google.cloud.resourcemanager_v3", "ProjectsClient"),
    "run": _gapic("google.cloud.run_v2", "ServicesClient"),
    "cloudbuild": _gapic("google.cloud.devtools.cloudbuild_v1", "CloudBuildClient"),
    "artifactregistry": _gapic("google.cloud.artifactregistry_v1", "ArtifactRegistryClient"),
    "secretmanager": _gapic("google.cloud.secretmanager_v1", "SecretManagerServiceClient"),
    "pubsub": _gapic("google.cloud.pubsub_v1", "PublisherClient"),
    "storage": _json_api("google.cloud.storage"),
    "bigquery": _json_api("google.cloud.bigquery"),
}
API_NAMES = frozenset(_MAKERS)
_PACKAGES = {"iam": "google-cloud-iam", "projects": "google-cloud-resource-manager", "run": "google-cloud-run",
             "cloudbuild": "google-cloud-build", "artifactregistry": "google-cloud-artifact-registry",
             "secretmanager": "google-cloud-secret-manager", "pubsub": "google-cloud-pubsub",
             "storage": "google-cloud-storage", "bigquery": "google-cloud-bigquery"}


def parse_endpoints(raw: str | Mapping[str, str] | None) -> dict[str, str]:
    """``api=host:port,...`` (or a mapping) checked: known APIs, loopback hosts only."""
    if not raw:
        return {}
    pairs = raw.items() if isinstance(raw, Mapping) else (_pair(p) for p in raw.split(",") if p.strip())
    endpoints: dict[str, str] = {}
    for api, endpoint in pairs:
        if api not in API_NAMES:
            raise ValueError(f"unknown API {api!r} in PODIUM_GCP_ENDPOINTS; known: {', '.join(sorted(API_NAMES))}")
        host = endpoint.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
        if not _loopback(host):
            raise ValueError(f"PODIUM_GCP_ENDPOINTS: {api}={endpoint} is not on loopback (fakes only)")
        endpoints[api] = endpoint
    return endpoints


def _pair(text: str) -> tuple[str, str]:
    api, sep, endpoint = text.strip().partition("=")
    if not sep or not endpoint:
        raise ValueError(f"PODIUM_GCP_ENDPOINTS: {text.strip()!r} is not api=host:port")
    return api.strip(), endpoint.strip()


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class GcpClients:
    """One client per API, made on first use (the gcp extra is optional) and then shared."""

    def __init__(self, project: str, endpoints: Mapping[str, str] | None = None) -> None:
        self.project = project
        self.endpoints = dict(endpoints or {})
        self._made: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get(self, api: str) -> Any:
        from handlers.google_errors import api_error

        with self._lock:
            if api not in self._made:
                try:
                    self._made[api] = _MAKERS[api](self.endpoints.get(api), self.project)
                except ImportError as exc:
                    raise HandlerError(
                        f"the gcp backend needs {_PACKAGES[api]}: {INSTALL_HINT}", retryable=False
                    ) from exc
                except Exception as exc:  # noqa: BLE001 - credentials, transport: classified
                    raise api_error(exc, f"creating the {api} client") from exc
            return self._made[api]


def clients_for(settings: HandlerSettings) -> GcpClients:
    """The process's clients for these settings (one set per project and endpoint table)."""
    return _clients(settings.project, settings.gcp_endpoints)


@lru_cache(maxsize=8)
def _clients(project: str, endpoints: str) -> GcpClients:
    return GcpClients(project, parse_endpoints(endpoints))
