"""Verification of Pub/Sub push requests (DESIGN.md §8: ``POST /pubsub/push`` in gcp mode).

The endpoint itself exists only with ``PODIUM_DELIVERY=push`` (``daemon/http.py`` answers 404
otherwise), so a local daemon that pulls accepts no unauthenticated message over HTTP.

A push subscription with authentication sends ``Authorization: Bearer <OIDC token>``, a
Google-signed ID token whose audience is the subscription's configured audience and whose
``email`` is the subscription's push service account. ``make_verifier`` returns the check
``DaemonHTTP`` runs before it reads an envelope: ``None`` accepts, ``(status, reason)``
refuses (401 no or bad token, 403 a valid token of another identity, 500 a daemon that is
not configured to verify, 503 Google's signing keys unreachable — Pub/Sub retries every
non-2xx answer, so nothing refused is lost).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import google.auth.transport.requests
import structlog
from google.auth import exceptions as auth_exceptions
from google.oauth2 import id_token

from daemon.config import Settings

log = structlog.get_logger("podium.push_auth")

# A push request's Authorization header -> None when it may pass, else (HTTP status, reason).
TokenVerifier = Callable[[str | None], tuple[int, str] | None]
# (token, audience) -> the token's claims; raises ValueError / GoogleAuthError when it is not valid.
VerifyFunction = Callable[[str, str | None], Mapping[str, Any]]


def google_verify(request: google.auth.transport.Request | None = None) -> VerifyFunction:
    """The real check: signature against Google's certificates, expiry, issuer and audience."""
    transport = request or google.auth.transport.requests.Request()  # one session, reused

    def verify(token: str, audience: str | None) -> Mapping[str, Any]:
        return id_token.verify_oauth2_token(token, transport, audience=audience)

    return verify


def bearer_token(header: str | None) -> str | None:
    """The token of ``Authorization: Bearer <token>``, or None if the header is missing or garbled."""
    if not header:
        return None
    parts = header.split()
    if len(parts) != 2 or parts[0].lower() != "bearer" or parts[1].count(".") != 2:
        return None
    return parts[1]


def make_verifier(settings: Settings, verify: VerifyFunction | None = None) -> TokenVerifier | None:
    """The push token check for these settings, or None when pushes are not authenticated.

    Authenticated in gcp mode, or whenever ``push_audience`` is set. ``verify`` replaces the
    call to Google's verification (tests).
    """
    if settings.backend != "gcp" and not settings.push_audience:
        return None
    audience, account = settings.push_audience, settings.push_service_account
    if not audience or not account:
        missing = [name for name, value in (("PODIUM_PUSH_AUDIENCE", audience),
                                            ("PODIUM_PUSH_SERVICE_ACCOUNT", account)) if not value]
        reason = f"push endpoint not configured: set {' and '.join(missing)}"
        log.warning("push requests will be refused", reason=reason)

        def refuse(_header: str | None) -> tuple[int, str] | None:
            # Fail closed: an audience-less or identity-less check would accept any Google token.
            return 500, reason

        return refuse
    check = verify or google_verify()

    def verifier(header: str | None) -> tuple[int, str] | None:
        token = bearer_token(header)
        if token is None:
            return 401, "missing or malformed Authorization header (expected 'Bearer <OIDC token>')"
        try:
            claims = check(token, audience)
        except auth_exceptions.TransportError as exc:
            log.warning("could not fetch Google's signing keys", error=repr(exc))
            return 503, "could not verify the token now (signing keys unreachable)"
        except (ValueError, auth_exceptions.GoogleAuthError) as exc:
            return 401, f"invalid token: {_short(exc)}"
        except Exception as exc:  # noqa: BLE001 - e.g. pyjwt's errors on a JWK certs URL: still a bad token
            return 401, f"invalid token: {type(exc).__name__}: {_short(exc)}"
        email = claims.get("email")
        if email != account:
            return 403, f"token of {email!r}, not of the push service account"
        if claims.get("email_verified") is not True:
            return 403, f"token email {email!r} is not verified"
        return None

    return verifier


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
