"""What a child process may see, and keeping secret values out of everything Podium stores.

Preflight tests and locally deployed services are the user's code: they get a minimal
environment (``child_env``), never the daemon's own (which holds every ``PODIUM_SECRET_*``,
credentials and Podium's settings), plus the variables their deployment declares and their
*own* secrets (``resolve_secrets``).

Whatever such a process prints may reach Firestore (a preflight tail, a deploy's log tail in an
error message), so those texts go through ``redact`` with every secret value the daemon knows
(``known_secret_values``): the service's resolved ones, every ``PODIUM_SECRET_*`` variable and
the files of ``<state_dir>/secrets``. Values shorter than ``MIN_REDACT_CHARS`` are left alone:
replacing every "1" or "on" in a log would mangle it and hide nothing worth hiding.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from machines.architecture import DeploymentSpec
from machines.errors import HandlerError

__all__ = [
    "EMULATOR_VARS",
    "MIN_REDACT_CHARS",
    "REDACTED",
    "SECRET_PREFIX",
    "child_env",
    "known_secret_values",
    "redact",
    "resolve_secrets",
    "secret_env_name",
    "service_env",
]

SECRET_PREFIX = "PODIUM_SECRET_"
REDACTED = "***"
MIN_REDACT_CHARS = 4
_MAX_SECRET_FILE_BYTES = 64 * 1024

# Passed through from the daemon when set: the basics a process needs, and the emulator switches.
_BASE_VARS = ("PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR")
EMULATOR_VARS = (
    "PUBSUB_EMULATOR_HOST",
    "FIRESTORE_EMULATOR_HOST",
    "STORAGE_EMULATOR_HOST",
    "DATASTORE_EMULATOR_HOST",
    "BIGTABLE_EMULATOR_HOST",
    "SPANNER_EMULATOR_HOST",
)
_NON_ALNUM = re.compile(r"[^A-Z0-9]")


def child_env(declared: Mapping[str, str] | None = None, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``PATH``, ``HOME``, ``LANG``/``LC_*``/``TZ``, ``TMPDIR`` and the emulator switches of the
    daemon (when set), then ``declared`` (the service's own variables and secrets) on top."""
    source = os.environ if environ is None else environ
    env = {k: v for k, v in source.items() if k in _BASE_VARS or k in EMULATOR_VARS or k.startswith("LC_")}
    env.update(declared or {})
    return env


def service_env(deployment: DeploymentSpec, *, project: str, service: str, dataflow: str) -> dict[str, str]:
    """The non-secret variables Podium gives a service: ``PROJECT_ID``, ``SERVICE_NAME``,
    ``DATAFLOW_NAME`` (unless declared non-empty), its ``environment_vars``, and the Pub/Sub and
    Firestore and Storage emulator switches."""
    env = {"PROJECT_ID": project, "SERVICE_NAME": service, "DATAFLOW_NAME": dataflow}
    env.update({k: str(v) for k, v in deployment.environment_vars.items()})
    for key, default in (("PROJECT_ID", project), ("SERVICE_NAME", service), ("DATAFLOW_NAME", dataflow)):
        env[key] = env.get(key) or default
    for key in ("PUBSUB_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST", "STORAGE_EMULATOR_HOST"):
        if os.environ.get(key):
            env[key] = os.environ[key]
    return env


def secret_env_name(value_from: str) -> str:
    """``PODIUM_SECRET_<VALUE_FROM upper, every non-alphanumeric character → _>``."""
    return SECRET_PREFIX + _NON_ALNUM.sub("_", value_from.upper())


def resolve_secrets(
    deployment: DeploymentSpec, state_dir: Path, service: str, *, missing_ok: bool = False
) -> dict[str, str]:
    """``{name: value}`` for the deployment's own secret variables, from the daemon's variable
    ``PODIUM_SECRET_<VALUE_FROM>`` or else the file ``<state_dir>/secrets/<value_from>``.

    A missing one is a non-retryable error naming it (never a value), or skipped with
    ``missing_ok`` (preflight: the tests may not need it, and gcp mode keeps secrets elsewhere).
    """
    secrets_dir = (state_dir / "secrets").resolve()
    out: dict[str, str] = {}
    for secret in deployment.secret_environment_vars:
        var = secret_env_name(secret.value_from)
        value = os.environ.get(var)
        path = (secrets_dir / secret.value_from).resolve()
        if value is None and path.is_relative_to(secrets_dir) and path.is_file():
            try:
                value = path.read_text().removesuffix("\n").removesuffix("\r")
            except OSError:
                value = None
        if value is None:
            if missing_ok:
                continue
            raise HandlerError(
                f"deploy: {service}'s secret variable {secret.name} needs secret {secret.value_from!r}, "
                f"which is not set: export {var} in the daemon's environment or write the file "
                f"{secrets_dir / secret.value_from}",
                retryable=False,
            )
        out[secret.name] = value
    return out


def known_secret_values(state_dir: Path | None = None, environ: Mapping[str, str] | None = None) -> list[str]:
    """Every secret value the daemon holds: ``PODIUM_SECRET_*`` variables and, with
    ``state_dir``, the files of ``<state_dir>/secrets`` (small ones; unreadable ones skipped)."""
    source = os.environ if environ is None else environ
    values = [v for k, v in source.items() if k.startswith(SECRET_PREFIX)]
    if state_dir is not None:
        folder = Path(state_dir) / "secrets"
        try:
            files = [p for p in folder.iterdir() if p.is_file()]
        except OSError:
            files = []
        for path in files:
            try:
                if path.stat().st_size <= _MAX_SECRET_FILE_BYTES:
                    values.append(path.read_text(errors="replace").removesuffix("\n").removesuffix("\r"))
            except OSError:
                continue
    return values


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each secret value (``MIN_REDACT_CHARS`` or longer)
    replaced by ``***``; longest first, so a secret that contains another goes whole."""
    for value in sorted({s for s in secrets if len(s) >= MIN_REDACT_CHARS}, key=len, reverse=True):
        text = text.replace(value, REDACTED)
    return text
