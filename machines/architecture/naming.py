"""Naming rules: what an id, a name, a duration, a path or a variable name may look like.

These are Google Cloud's real limits (Pub/Sub ids, service accounts, Cloud Run names, project
ids, buckets, datasets, scheduler jobs, IAM roles, cron schedules) and Podium's own rules for
service folders and environment variables. Each ``*_problem`` function returns what was expected
as a sentence, or ``None`` when the value is fine; the models and the cross-checks turn those
sentences into errors. Kept apart from the models so the rules can be read and tested alone.
"""

from __future__ import annotations

import re

__all__ = [
    "bucket_name_problem",
    "cloud_run_name_problem",
    "cron_problem",
    "dataset_name_problem",
    "duration_seconds",
    "env_var_problem",
    "project_id_problem",
    "pubsub_id_problem",
    "relative_path_problem",
    "role_problem",
    "scheduler_job_name_problem",
    "service_account_id_problem",
    "service_account_problem",
]

_PUBSUB_ID = re.compile(r"^[A-Za-z][A-Za-z0-9\-_.~+%]*$")
_SA_ID = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])$")
_SA_EMAIL = re.compile(r"^(?P<id>[^@]+)@(?P<project>[^@]+)\.iam\.gserviceaccount\.com$")
_CLOUD_RUN = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_PROJECT_ID = re.compile(r"^[a-z][-a-z0-9]{4,28}[a-z0-9]$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9\-_.]*[a-z0-9]$")
_DATASET = re.compile(r"^[A-Za-z0-9_]{1,1024}$")
_SCHEDULER_JOB = re.compile(r"^[A-Za-z0-9_-]{1,500}$")
_ROLE = re.compile(r"^(roles/|projects/[^/\s]+/roles/|organizations/[^/\s]+/roles/)[A-Za-z0-9_.]+$")
_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h|d))+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d)")
_CRON_FIELD = re.compile(r"^[A-Za-z0-9*/,\-?LW#]+$")

_DURATION_UNITS: dict[str, float] = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}

# ---------------------------------------------------------------------------------------------
# Google Cloud ids and names.
# ---------------------------------------------------------------------------------------------


def pubsub_id_problem(value: str, kind: str = "topic") -> str | None:
    """Pub/Sub topic and subscription ids: 3–255 chars, a letter first, ``[A-Za-z0-9-_.~+%]``, not ``goog*``."""
    if not 3 <= len(value) <= 255:
        return f"{kind} id {value!r} must be 3 to 255 characters long (it has {len(value)})"
    if not value[0].isascii() or not value[0].isalpha():
        return f"{kind} id {value!r} must start with a letter"
    if not _PUBSUB_ID.match(value):
        return f"{kind} id {value!r} may only contain letters, digits and - _ . ~ + %"
    if value.lower().startswith("goog"):
        return f"{kind} id {value!r} must not start with 'goog'"
    return None


def service_account_problem(value: str) -> str | None:
    """A service account id (6–30 chars) or a full ``id@project.iam.gserviceaccount.com`` email."""
    if "@" in value:
        match = _SA_EMAIL.match(value)
        if not match:
            return (
                f"service account {value!r} must be an account id or an email of the form "
                "'<id>@<project>.iam.gserviceaccount.com'"
            )
        problem = service_account_id_problem(match.group("id"))
        if problem is None:
            problem = project_id_problem(match.group("project"))
        return None if problem is None else f"service account {value!r}: {problem}"
    return service_account_id_problem(value)


def service_account_id_problem(value: str) -> str | None:
    """A service account id alone (the part before ``@``): 6–30 chars, ``^[a-z]([-a-z0-9]*[a-z0-9])$``."""
    if not 6 <= len(value) <= 30:
        return f"service account id {value!r} must be 6 to 30 characters long (it has {len(value)})"
    if not _SA_ID.match(value):
        return (
            f"service account id {value!r} must be lowercase letters, digits and dashes, "
            "start with a letter and not end with a dash"
        )
    return None


def cloud_run_name_problem(value: str) -> str | None:
    """Cloud Run service names: at most 49 chars, ``^[a-z]([-a-z0-9]*[a-z0-9])?$``."""
    if not 1 <= len(value) <= 49:
        return f"service name {value!r} must be 1 to 49 characters long (it has {len(value)})"
    if not _CLOUD_RUN.match(value):
        return (
            f"service name {value!r} must be lowercase letters, digits and dashes, "
            "start with a letter and not end with a dash (it is a Cloud Run service name)"
        )
    return None


def project_id_problem(value: str) -> str | None:
    """Project ids: 6–30 chars, ``^[a-z][-a-z0-9]{4,28}[a-z0-9]$``."""
    if not _PROJECT_ID.match(value):
        return (
            f"project id {value!r} must be 6 to 30 lowercase letters, digits and dashes, "
            "start with a letter and not end with a dash"
        )
    return None


def bucket_name_problem(value: str) -> str | None:
    """GCS bucket names: 3–63 chars (222 with dots), lowercase, no 'goog' prefix, no 'google'."""
    limit = 222 if "." in value else 63
    if not 3 <= len(value) <= limit:
        return f"bucket name {value!r} must be 3 to {limit} characters long (it has {len(value)})"
    if not _BUCKET.match(value):
        return (
            f"bucket name {value!r} must be lowercase letters, digits, - _ and ., "
            "and start and end with a letter or digit"
        )
    if value.startswith("goog") or "google" in value:
        return f"bucket name {value!r} must not start with 'goog' or contain 'google'"
    return None


def dataset_name_problem(value: str) -> str | None:
    """BigQuery dataset names: 1–1024 letters, digits and underscores."""
    if _DATASET.match(value):
        return None
    return f"dataset name {value!r} must be 1 to 1024 letters, digits and underscores"


def scheduler_job_name_problem(value: str) -> str | None:
    """Cloud Scheduler job names: 1–500 letters, digits, ``-`` and ``_``."""
    if _SCHEDULER_JOB.match(value):
        return None
    return f"job name {value!r} must be 1 to 500 letters, digits, '-' and '_'"


def role_problem(value: str) -> str | None:
    """IAM roles: predefined (``roles/...``) or custom (``projects/<p>/roles/<id>``, organizations)."""
    if _ROLE.match(value):
        return None
    return f"role {value!r} must look like 'roles/pubsub.viewer' or 'projects/<p>/roles/<id>'"


# ---------------------------------------------------------------------------------------------
# Durations and schedules.
# ---------------------------------------------------------------------------------------------


def duration_seconds(value: str) -> float:
    """Seconds in a duration string as the anchor writes them (``"600s"``, ``"1h30m"``, ``"7d"``)."""
    if not _DURATION.match(value):
        raise ValueError(f"{value!r} is not a duration such as '600s', '10m', '1h30m' or '7d'")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(value))


def cron_problem(value: str) -> str | None:
    """A unix-cron schedule: five fields of digits, names and ``* / , - ? L W #``."""
    fields = value.split()
    if len(fields) != 5 or not all(_CRON_FIELD.match(f) for f in fields):
        return (
            f"schedule {value!r} must be a unix-cron expression with 5 fields, e.g. '*/5 * * * *'"
        )
    return None


# ---------------------------------------------------------------------------------------------
# Service folders and environment variables.
# ---------------------------------------------------------------------------------------------


def relative_path_problem(value: str) -> str | None:
    """Service folders (``source_path``, ``buildable_module_path``) stay under the source root:
    no absolute path, no ``..`` component (the handlers also check where a folder resolves)."""
    if "\x00" in value:
        return f"{value!r} contains a NUL character"
    if value.startswith(("/", "\\")):
        return f"{value!r} is an absolute path; it must be relative to the source root"
    if ".." in re.split(r"[/\\]", value):
        return f"{value!r} has a '..' component; it must stay inside the source root"
    return None


def preflight_program_problem(program: str) -> str | None:
    """``preflight.command[0]``: a file of the service, as a relative path (``./test.sh``): no PATH
    lookup, no absolute path, no ``..``. A start command may run only the service's own code."""
    parts = re.split(r"[/\\]", program)
    if program.startswith(("/", "\\")) or "/" not in program or ".." in parts:
        return (f"{program!r}: the program must be a file of the service given as a relative path "
                "like ./test.sh (no PATH lookup, no absolute path, no '..'): a start command may run "
                "only the service's own code; wrap other tools in such a script")
    return None


# Variables that make a loader or an interpreter load or run code of the variable's choosing:
# a start command must not be able to run anything beyond the service's own code.
_CODE_VARS = frozenset(
    {
        "BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS", "PS4", "PROMPT_COMMAND",
        "NODE_OPTIONS", "NODE_PATH", "NODE_REPL_EXTERNAL_MODULE",
        "PERL5OPT", "PERL5LIB", "PERLLIB", "PERL5DB",
        "RUBYOPT", "RUBYLIB",
        "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS", "CLASSPATH",
        "GCONV_PATH", "GETCONF_DIR", "HOSTALIASES", "LOCPATH", "NLSPATH", "RESOLV_HOST_CONF",
        # go test: -toolexec/-exec in GOFLAGS, a go.env elsewhere, a downloaded toolchain, compilers
        "GOFLAGS", "GOENV", "GOTOOLCHAIN", "GOROOT", "GOCACHEPROG", "CC", "CXX", "FC", "AR",
    }
)
_CODE_VAR_PREFIXES = ("LD_", "DYLD_", "BASH_FUNC_", "CGO_")
# PYTHON* is refused but for these, which only tune the interpreter (PYTHONPATH, PYTHONSTARTUP,
# PYTHONHOME, PYTHONUSERBASE, PYTHONWARNINGS, PYTHONBREAKPOINT, ... all import code).
_HARMLESS_PYTHON_VARS = frozenset(
    {
        "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PYTHONHASHSEED", "PYTHONIOENCODING",
        "PYTHONUTF8", "PYTHONFAULTHANDLER", "PYTHONOPTIMIZE", "PYTHONTRACEMALLOC", "PYTHONDEVMODE",
        "PYTHONASYNCIODEBUG", "PYTHONNOUSERSITE", "PYTHONSAFEPATH", "PYTHONCOERCECLOCALE",
        "PYTHONMALLOC", "PYTHONMALLOCSTATS", "PYTHONINTMAXSTRDIGITS", "PYTHONWARNDEFAULTENCODING",
        "PYTHONVERBOSE", "PYTHONDEBUG", "PYTHONLEGACYWINDOWSSTDIO", "PYTHONNODEBUGRANGES",
    }
)


def env_var_problem(name: str) -> str | None:
    """A variable name a service may be given: not empty, no ``=`` or NUL, and not one that
    makes a loader or interpreter run code (``LD_PRELOAD``, ``PYTHONPATH``, ``NODE_OPTIONS``...)."""
    if not name or "=" in name or "\x00" in name:
        return f"variable name {name!r} must be non-empty, without '=' or NUL"
    upper = name.upper()
    if (
        upper in _CODE_VARS
        or upper.startswith(_CODE_VAR_PREFIXES)
        or (upper.startswith("PYTHON") and upper not in _HARMLESS_PYTHON_VARS)
    ):
        return f"variable {name!r} is refused: it makes the dynamic loader or an interpreter load code"
    return None
