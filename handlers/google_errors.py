"""Which errors from Google's clients are worth another try: the one classifier.

Retrying is right only when the same request may succeed later: the service was unavailable,
a deadline passed, a transaction lost a conflict (Aborted), a quota was exhausted, or the
connection broke. Everything else (InvalidArgument, a document over 1 MiB, a value Firestore
cannot encode, a bug) fails the same way every time, so retrying it only stalls the work
behind it.

* ``is_transient``: the engine nacks only what it accepts; the rest is recorded.
* ``api_error``: what every gcp handler (IAM, Cloud Build, Cloud Run, the director's topic)
  turns a Google error into: a ``HandlerError`` that names the work, says whether the effect
  runner should retry, and carries the server's ``retry_after`` hint when it sent one.
"""

from __future__ import annotations

import concurrent.futures

import grpc
from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exc

from machines.errors import HandlerError, PodiumError

# ServiceUnavailable = UNAVAILABLE, GatewayTimeout ⊃ DeadlineExceeded, Conflict ⊃ Aborted,
# TooManyRequests ⊃ ResourceExhausted; Internal/Unknown are what a dropped stream surfaces as.
TRANSIENT_API_ERRORS: tuple[type[BaseException], ...] = (
    gexc.ServiceUnavailable,
    gexc.GatewayTimeout,
    gexc.Aborted,
    gexc.TooManyRequests,
    gexc.InternalServerError,
    gexc.Unknown,
    gexc.Cancelled,
    gexc.RetryError,
)
TRANSIENT_GRPC_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
    }
)
# Connection trouble below the API layer (an emulator restarting, a socket reset).
TRANSIENT_OS_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    concurrent.futures.TimeoutError,
)


def is_transient(exc: BaseException) -> bool:
    """True if running the same work again may succeed: the only errors worth a nack."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, PodiumError):
            return current.retryable
        if isinstance(current, TRANSIENT_API_ERRORS + TRANSIENT_OS_ERRORS):
            return True
        if isinstance(current, grpc.RpcError) and _grpc_code(current) in TRANSIENT_GRPC_CODES:
            return True
        # Firestore wraps a transaction that lost every retry to contention in a ValueError
        # raised ``from`` the last Aborted: follow explicit causes only.
        current = current.__cause__
    return False


def _grpc_code(exc: grpc.RpcError) -> grpc.StatusCode | None:
    code = getattr(exc, "code", None)
    try:
        return code() if callable(code) else None
    except Exception:  # noqa: BLE001 - a half-built RpcError
        return None


# Errors that say the request itself is wrong (AIP-193): retrying it changes nothing.
# FailedPrecondition is a BadRequest: the system must be fixed first (an etag conflict is Aborted).
PERMANENT_API_ERRORS: tuple[type[BaseException], ...] = (
    gexc.BadRequest,
    gexc.MethodNotAllowed,
    gexc.MethodNotImplemented,
)
DENIED_API_ERRORS: tuple[type[BaseException], ...] = (gexc.Forbidden, gexc.Unauthorized)


def api_error(exc: BaseException, what: str, *, missing_is_transient: bool = False) -> PodiumError:
    """A Google API (or auth) error as a ``HandlerError`` naming ``what`` was being done.

    Denied and malformed requests are not retryable; transient ones are, and so is anything
    unrecognised (the runner's attempt budget bounds it). ``missing_is_transient``: a NotFound
    means "not visible yet" (IAM: an account created moments ago is not readable everywhere).
    """
    if isinstance(exc, PodiumError):
        return exc
    detail = str(exc) or type(exc).__name__  # a Google error prints its code: "503 try later"
    kind = type(exc).__name__
    if isinstance(exc, DENIED_API_ERRORS):
        return HandlerError(
            f"{what}: permission denied ({kind}: {detail}); the daemon's account lacks a permission for this",
            retryable=False,
        )
    if isinstance(exc, PERMANENT_API_ERRORS):
        return HandlerError(f"{what}: rejected ({kind}: {detail})", retryable=False)
    if isinstance(exc, auth_exc.DefaultCredentialsError):
        return HandlerError(f"{what}: no Google credentials ({detail})", retryable=False)
    if isinstance(exc, auth_exc.RefreshError):
        return HandlerError(f"{what}: credentials could not be refreshed ({detail})",
                            retryable=bool(getattr(exc, "retryable", False)))
    if is_transient(exc) or (missing_is_transient and isinstance(exc, gexc.NotFound)):
        error = HandlerError(f"{what}: transient error ({kind}: {detail})", retryable=True)
    else:
        # Anything else (other API errors, transport errors): worth another try, then the run fails.
        error = HandlerError(f"{what}: {kind}: {detail}", retryable=True)
    error.retry_after = retry_after(exc)
    return error


def retry_after(exc: BaseException) -> float | None:
    """The server's hint (``google.rpc.RetryInfo.retry_delay``) of when to try again, if any."""
    for detail in getattr(exc, "details", None) or ():
        delay = getattr(detail, "retry_delay", None)
        if delay is not None:
            seconds = float(getattr(delay, "seconds", 0)) + float(getattr(delay, "nanos", 0)) / 1e9
            if seconds > 0:
                return seconds
    return None
