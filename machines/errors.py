"""One error root for Podium, with retryability carried on the error itself.

Callers never guess whether to retry: they read ``err.retryable``. Pure code raises
these; the daemon decides ack/nack/record from the flag.
"""

from __future__ import annotations


class PodiumError(Exception):
    """Root of every error Podium raises on purpose."""

    retryable: bool = False
    reason: str = "error"
    retry_after: float | None = None  # seconds the source asked us to wait before trying again

    def __init__(self, message: str, *, retryable: bool | None = None, reason: str | None = None,
                 retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        if retryable is not None:
            self.retryable = retryable
        if reason is not None:
            self.reason = reason
        if retry_after is not None:
            self.retry_after = retry_after

    def as_dict(self) -> dict[str, object]:
        return {"reason": self.reason, "message": self.message, "retryable": self.retryable}


class InvalidArchitecture(PodiumError):
    """The architecture file does not validate. Carries every problem found, with its path."""

    reason = "invalid_architecture"

    def __init__(self, problems: list[str], *, source: str = "<architecture>"):
        self.problems = list(problems)
        self.source = source
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s):\n{lines}")


class InvalidMessage(PodiumError):
    """A message could not be understood (not JSON, unknown command, schema violation)."""

    reason = "invalid_message"


class UnknownRun(PodiumError):
    reason = "unknown_run"


class TransientError(PodiumError):
    """Something outside us is briefly unavailable; try again later."""

    retryable = True
    reason = "transient"


class HandlerError(PodiumError):
    """A side effect failed. ``retryable`` says whether running it again may help."""

    reason = "handler_failed"


class EmulatorError(PodiumError):
    """An emulator (or Java) is missing or did not start."""

    reason = "emulator"


class NotReady(PodiumError):
    """The work was started but is not finished (an LRO, a process still starting).

    The effect runner re-checks it after ``retry_after`` seconds through the effect's lease
    (durable: a restarted daemon re-checks too), without counting it as a failed attempt.
    The state's deadline bounds the wait.
    """

    retryable = True
    reason = "not_ready"
    retry_after: float = 1.0

    def __init__(self, message: str, *, retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after


MAX_ERROR_CHARS = 4000  # of any error text stored in Firestore, a message or a log line


def clip(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how much was cut (stored errors stay small)."""
    if len(text) <= limit:
        return text
    note = f"… ({len(text) - limit} more characters)"
    return text[: max(limit - len(note), 0)] + note
