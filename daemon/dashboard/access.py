"""Who may use the dashboard, and which requests may change a run.

Two modes, chosen by the settings as ``daemon/push_auth.py`` chooses for push:

* **loopback** (the local backend, no ``PODIUM_DASHBOARD_AUDIENCE``): the client must connect
  from a loopback address *and* name a loopback host (``localhost``, ``127.0.0.1``, ``[::1]``):
  a page of another site whose name was rebound to 127.0.0.1 (DNS rebinding) sends its own
  host name and is refused. The daemon binds loopback by default, so nothing else reaches it.
* **identity** (``PODIUM_BACKEND=gcp``, or whenever ``PODIUM_DASHBOARD_AUDIENCE`` is set): every
  request carries a Google-signed identity whose audience is ``PODIUM_DASHBOARD_AUDIENCE`` —
  the ``X-Goog-IAP-JWT-Assertion`` that Identity-Aware Proxy adds in front of Cloud Run (the
  browser path), or an ``Authorization: Bearer`` OIDC ID token (scripts, ``gcloud auth
  print-identity-token --audiences=…``), checked by google-auth as push tokens are — and its
  email must be in ``PODIUM_DASHBOARD_USERS`` (emails, ``domain:example.com``). Unconfigured,
  every request is refused (fail closed): 500 saying what to set.

Commands (cancel, retry) are POSTs that must also come from the dashboard's own page: a
custom ``X-Podium-Dashboard`` header (a cross-site form cannot send one, and a cross-site
script cannot without a CORS preflight this server never grants), an ``Origin`` naming this
host when the browser sends one, and ``Sec-Fetch-Site: same-origin`` when it sends that.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import google.auth.transport.requests
import structlog
from google.auth import exceptions as auth_exceptions
from google.oauth2 import id_token

from daemon.config import Settings
from daemon.push_auth import VerifyFunction, bearer_token, google_verify

log = structlog.get_logger("podium.dashboard")

IAP_HEADER = "x-goog-iap-jwt-assertion"
IAP_CERTS_URL = "https://www.gstatic.com/iap/verify/public_key"
IAP_ISSUER = "https://cloud.google.com/iap"
COMMAND_HEADER = "x-podium-dashboard"
LOOPBACK_NAMES = frozenset({"localhost"})
TOKEN_CACHE_SECONDS = 300.0
TOKEN_CACHE_SIZE = 256

Refusal = tuple[int, str]


def iap_verify(request: google.auth.transport.Request | None = None) -> VerifyFunction:
    """IAP's check: its signature (ES256, IAP's published keys), expiry, audience and issuer."""
    transport = request or google.auth.transport.requests.Request()

    def verify(token: str, audience: str | None) -> Mapping[str, Any]:
        claims = id_token.verify_token(token, transport, audience=audience, certs_url=IAP_CERTS_URL)
        if claims.get("iss") != IAP_ISSUER:
            raise ValueError(f"issuer {claims.get('iss')!r} is not IAP")
        return claims

    return verify


def parse_users(text: str) -> tuple[frozenset[str], frozenset[str]]:
    """``a@x.com, domain:y.com`` -> (emails, domains), lower-cased."""
    emails: set[str] = set()
    domains: set[str] = set()
    for entry in text.replace(",", " ").split():
        entry = entry.strip().lower()
        if entry.startswith("domain:"):
            domains.add(entry.removeprefix("domain:"))
        elif entry.startswith("user:") or entry.startswith("serviceaccount:"):
            emails.add(entry.split(":", 1)[1])
        elif entry:
            emails.add(entry)
    return frozenset(emails), frozenset(domains)


class Gate:
    """The dashboard's access check for these settings (``verify_*`` replace Google's, in tests)."""

    def __init__(self, settings: Settings, *, verify_iap: VerifyFunction | None = None,
                 verify_oidc: VerifyFunction | None = None) -> None:
        self.identity_required = settings.backend == "gcp" or bool(settings.dashboard_audience)
        self.audience = settings.dashboard_audience
        self.emails, self.domains = parse_users(settings.dashboard_users)
        self._verify_iap = verify_iap or (iap_verify() if self.identity_required else None)
        self._verify_oidc = verify_oidc or (google_verify() if self.identity_required else None)
        # A page load is a dozen requests with one token: each token's check is remembered
        # until it expires (at most TOKEN_CACHE_SECONDS), for a bounded number of tokens.
        self._verified: dict[str, tuple[float, Mapping[str, Any]]] = {}
        self._verified_lock = threading.Lock()
        self.unconfigured: str | None = None
        if self.identity_required:
            missing = [name for name, value in (("PODIUM_DASHBOARD_AUDIENCE", self.audience),
                                                ("PODIUM_DASHBOARD_USERS", self.emails or self.domains))
                       if not value]
            if missing:
                self.unconfigured = f"dashboard not configured: set {' and '.join(missing)}"
                log.warning("dashboard requests will be refused", reason=self.unconfigured)

    def check(self, client_host: str | None, headers: Mapping[str, str]) -> Refusal | str:
        """The caller's identity (an email, or ``loopback``), or why it is refused. May block
        (fetching signing keys): call it from a worker thread in identity mode."""
        if not self.identity_required:
            return self._loopback(client_host, headers.get("host"))
        if self.unconfigured:
            return 500, self.unconfigured
        iap = headers.get(IAP_HEADER)
        if iap:
            token, verify, kind = iap, self._verify_iap, "IAP assertion"
        else:
            bearer = bearer_token(headers.get("authorization"))
            if bearer is None:
                return 401, ("no identity: the dashboard needs IAP in front of it (X-Goog-IAP-JWT-Assertion) "
                             "or 'Authorization: Bearer <OIDC token>'")
            token, verify, kind = bearer, self._verify_oidc, "token"
        assert verify is not None
        try:
            claims = self._remembered(kind + token) or verify(token, self.audience)
        except auth_exceptions.TransportError as exc:
            log.warning("could not fetch Google's signing keys", error=repr(exc))
            return 503, "could not verify the identity now (signing keys unreachable)"
        except Exception as exc:  # noqa: BLE001 - ValueError, GoogleAuthError, pyjwt's: all a bad token
            text = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            return 401, f"invalid {kind}: {text}"
        email = str(claims.get("email") or "").lower()
        if kind == "token" and claims.get("email_verified") is not True:
            return 403, f"token email {email!r} is not verified"
        if not email or not (email in self.emails or email.rpartition("@")[2] in self.domains):
            log.warning("dashboard refused", email=email)
            return 403, f"{email or 'this identity'} is not in PODIUM_DASHBOARD_USERS"
        self._remember(kind + token, claims)
        return email

    def _remembered(self, key: str) -> Mapping[str, Any] | None:
        with self._verified_lock:
            found = self._verified.get(key)
            if found is not None and found[0] > time.time():
                return found[1]
            self._verified.pop(key, None)
            return None

    def _remember(self, key: str, claims: Mapping[str, Any]) -> None:
        try:
            expires = min(float(claims.get("exp") or 0), time.time() + TOKEN_CACHE_SECONDS)
        except (TypeError, ValueError):
            return
        with self._verified_lock:
            if len(self._verified) >= TOKEN_CACHE_SIZE:
                self._verified.clear()
            self._verified[key] = (expires, claims)

    @staticmethod
    def _loopback(client_host: str | None, host_header: str | None) -> Refusal | str:
        if not _is_loopback(client_host):
            return 403, "the dashboard answers loopback clients only (set PODIUM_DASHBOARD_AUDIENCE for an identity check)"
        if host_header is not None and not _is_loopback(_hostname(host_header)):
            return 403, f"Host {host_header!r} is not a loopback name (open http://127.0.0.1:PORT/dashboard/)"
        return "loopback"


def command_refusal(headers: Mapping[str, str]) -> str | None:
    """Why a POST that changes a run is refused as not coming from the dashboard's page, or None."""
    if headers.get(COMMAND_HEADER) != "1":
        return "commands need the X-Podium-Dashboard: 1 header (they come from the dashboard page)"
    site = headers.get("sec-fetch-site")
    if site is not None and site != "same-origin":
        return f"cross-site request refused (Sec-Fetch-Site: {site})"
    origin = headers.get("origin")
    if origin is not None and urlsplit(origin).netloc.lower() != (headers.get("host") or "").lower():
        return f"cross-origin request refused (Origin {origin!r})"
    return None


def _hostname(host_header: str) -> str:
    host = host_header.strip()
    if host.startswith("["):  # [::1]:8080
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
