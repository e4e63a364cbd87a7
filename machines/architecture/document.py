"""The parsed document around the models: size limits, shape check, normalisation and pruning.

Before validation a parsed document (YAML or JSON) is bounded (``document_shape_problem``) and
normalised (``normalize``: names the anchor infers from map keys are filled in); after
serialisation, ``prune`` drops empty fields as Go's ``omitempty`` does. These work on plain
mappings and lists, not on the models, so loading and the models can both use them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from machines.architecture.fields import scalar_to_str

__all__ = [
    "ENVIRONMENT_KEYS",
    "MAX_ARCHITECTURE_BYTES",
    "MAX_DEPTH",
    "MAX_NODES",
    "document_shape_problem",
    "normalize",
    "prune",
]

# Bounds on what one architecture may cost to read: a real file is a few KiB and a few hundred
# nodes; these are far above that and far below what would hurt the daemon.
MAX_ARCHITECTURE_BYTES = 1024 * 1024
MAX_NODES = 50_000
MAX_DEPTH = 64

# Keys of an old-style ``environment`` mapping copied into the root when the root lacks them.
ENVIRONMENT_KEYS = ("name", "project_id", "region", "location", "labels", "teardown_protection")

# Maps whose entries are the user's own data: kept verbatim (an empty env var value is a value).
_VERBATIM_KEYS = frozenset(
    {"environment_vars", "labels", "metadata", "config_templates", "environment"}
)


def prune(value: Any) -> Any:
    """Drop ``None``, ``""``, ``False``, empty lists and empty mappings (Go's ``omitempty``).

    Entries of user maps (``environment_vars``, ``labels``, ``metadata``, ...) are kept as they are.
    """
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            pv = v if k in _VERBATIM_KEYS else prune(v)
            if pv is None or pv is False or pv == "" or pv == [] or pv == {}:
                continue
            out[k] = pv
        return out
    if isinstance(value, list | tuple):
        return [prune(v) for v in value]
    return value


def document_shape_problem(data: Any) -> str | None:
    """A parsed document (YAML or JSON) too big, too deep or circular to validate safely.

    Iterative (a deep document must not exhaust the stack here), and bounded: it stops at the
    first limit it crosses, so a circular structure ends as "too many nodes".
    """
    nodes, chars = 0, 0
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            return f"more than {MAX_NODES} values (too large, or circular)"
        if depth > MAX_DEPTH:
            return f"nested more than {MAX_DEPTH} levels deep"
        if isinstance(value, Mapping):
            for k, v in value.items():
                chars += len(k) if isinstance(k, str) else 0
                stack.append((v, depth + 1))
        elif isinstance(value, list | tuple):
            stack.extend((v, depth + 1) for v in value)
        elif isinstance(value, str):
            chars += len(value)
        if chars > MAX_ARCHITECTURE_BYTES:
            return f"more than {MAX_ARCHITECTURE_BYTES} characters of keys and values"
    return None


def normalize(data: Mapping[Any, Any]) -> dict[str, Any]:
    """Fill the names the anchor infers from map keys; copy an old-style ``environment`` mapping
    into the root. Never fails: problems are found afterwards, with their paths."""
    out = {scalar_to_str(k): v for k, v in data.items()}
    env = out.get("environment")
    if isinstance(env, Mapping):
        for key in ENVIRONMENT_KEYS:
            if key in env and key not in out:
                out[key] = env[key]
    dataflows = out.get("dataflows")
    if isinstance(dataflows, Mapping):
        new_dataflows: dict[str, Any] = {}
        for raw_key, dataflow in dataflows.items():
            key = scalar_to_str(raw_key)
            if isinstance(dataflow, Mapping):
                dataflow = dict(dataflow)
                if dataflow.get("name") is None:
                    dataflow["name"] = key
                services = dataflow.get("services")
                if isinstance(services, Mapping):
                    new_services: dict[str, Any] = {}
                    for raw_skey, service in services.items():
                        skey = scalar_to_str(raw_skey)
                        if isinstance(service, Mapping) and service.get("name") is None:
                            service = {**service, "name": skey}
                        new_services[skey] = service
                    dataflow["services"] = new_services
            new_dataflows[key] = dataflow
        out["dataflows"] = new_dataflows
    return out
