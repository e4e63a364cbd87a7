"""Which errors from Google's clients are worth another try.

Retrying is right only when the same request may succeed later: the service was unavailable,
a deadline passed, a transaction lost a conflict (Aborted), a quota was exhausted, or the
connection broke. Everything else (InvalidArgument, a document over 1 MiB, a value Firestore
cannot encode, a bug) fails the same way every time, so retrying it only stalls the work
behind it. The engine nacks only what ``is_transient`` accepts; the rest is recorded.
"""

from __future__ import annotations

import concurrent.futures

import grpc
from google.api_core import exceptions as gexc

from machines.errors import PodiumError

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
