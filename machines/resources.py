"""Which resources each service links to: the content of its ``resources.yaml`` (anchor §3).

``resources_for_service`` is the anchor's ``buildServiceResourceSpec``: across **all** dataflows,
the whole resource objects linked to the service with lookup method ``yaml`` (or empty) — topics
it produces to, subscriptions it consumes (the subscription only, not its topic), tables,
buckets, Firestore databases and collections where it is a producer or consumer, plus each linked
table's dataset. Scheduler jobs are never included. The director's file holds the completion
topic and the command subscription (not the command topic, which it does not produce).

The result is plain data in the anchor's ``CloudResourcesSpec`` shape: lists sorted by name,
no ``None``/empty fields, so ``render_resources_yaml`` is byte-for-byte stable. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from machines.architecture import (
    YAML_METHODS,
    Architecture,
    CloudResource,
    ServiceMapping,
    prune,
)
from machines.hydration import all_services, hydrate

__all__ = ["lookup_map", "render_resources_yaml", "resources_for_service", "yaml_linked"]

RESOURCE_KINDS = (
    "topics",
    "subscriptions",
    "bigquery_datasets",
    "bigquery_tables",
    "gcs_buckets",
    "firestore_databases",
    "firestore_collections",
)


def yaml_linked(link: ServiceMapping | None, service: str) -> bool:
    """True when ``link`` points at ``service`` with a ``yaml`` (or empty) lookup method."""
    return link is not None and link.name == service and link.lookup.method in YAML_METHODS


def _any_yaml_linked(links: Iterable[ServiceMapping], service: str) -> bool:
    return any(yaml_linked(link, service) for link in links)


def _sort_key(item: CloudResource) -> tuple[str, str]:
    """Tables sort by (dataset, name), collections by (database, name), the rest by name."""
    parent = getattr(item, "dataset", None) or getattr(item, "database", None) or ""
    return (str(parent), item.name)


def resources_for_service(arch: Architecture, service: str) -> dict[str, list[dict[str, Any]]]:
    """The filtered ``CloudResourcesSpec`` for ``service`` as plain, sorted, pruned data.

    ``arch`` is hydrated first (hydration is idempotent, so a hydrated one is unchanged).
    Raises ``KeyError`` for a service that is not in the architecture.
    """
    arch = hydrate(arch)
    if service not in all_services(arch):
        raise KeyError(f"service {service!r} is not declared in the architecture")
    picked: dict[str, dict[tuple[str, str], CloudResource]] = {k: {} for k in RESOURCE_KINDS}

    def pick(kind: str, item: CloudResource) -> None:
        picked[kind].setdefault(_sort_key(item), item)

    datasets = {d.name: d for df in arch.dataflows.values() for d in df.resources.bigquery_datasets}
    for df in arch.dataflows.values():
        res = df.resources
        for topic in res.topics:
            if yaml_linked(topic.producer_service, service):
                pick("topics", topic)
        for sub in res.subscriptions:
            if yaml_linked(sub.consumer_service, service):
                pick("subscriptions", sub)
        for table in res.bigquery_tables:
            if _any_yaml_linked((*table.producers, *table.consumers), service):
                pick("bigquery_tables", table)
                if table.dataset in datasets:
                    pick("bigquery_datasets", datasets[table.dataset])
        for bucket in res.gcs_buckets:
            if _any_yaml_linked((*bucket.producers, *bucket.consumers), service):
                pick("gcs_buckets", bucket)
        for db in res.firestore_databases:
            if _any_yaml_linked((*db.producers, *db.consumers), service):
                pick("firestore_databases", db)
        for coll in res.firestore_collections:
            if _any_yaml_linked((*coll.producers, *coll.consumers), service):
                pick("firestore_collections", coll)

    out: dict[str, list[dict[str, Any]]] = {}
    for kind in RESOURCE_KINDS:
        items = picked[kind]
        if items:
            out[kind] = [prune(items[key].model_dump(mode="json", by_alias=True)) for key in sorted(items)]
    return out


def lookup_map(resources: Mapping[str, Any], service: str | None = None) -> dict[str, str]:
    """``{lookup.key: resource name}`` from a ``resources.yaml`` mapping, as a service reads it.

    Every link with a key and a ``yaml``/empty method counts (only ``service``'s links when it is
    given). Unlike the anchor's ``ReadResourceMappings``, a producer/consumer key of a table,
    bucket or Firestore resource maps to the **resource** name, not to the service name.
    """
    out: dict[str, str] = {}

    def add(link: Any, resource: Any) -> None:
        if not isinstance(link, Mapping) or not isinstance(resource, str):
            return
        lookup = link.get("lookup") or {}
        key = lookup.get("key") or ""
        method = lookup.get("method") or ""
        if not key or method not in YAML_METHODS:
            return
        if service is not None and link.get("name") != service:
            return
        out[key] = resource

    for topic in resources.get("topics") or ():
        add(topic.get("producer_service"), topic.get("name"))
    for sub in resources.get("subscriptions") or ():
        add(sub.get("consumer_service"), sub.get("name"))
    for kind in ("bigquery_tables", "gcs_buckets", "firestore_databases", "firestore_collections"):
        for item in resources.get(kind) or ():
            for link in (*(item.get("producers") or ()), *(item.get("consumers") or ())):
                add(link, item.get("name"))
    return out


def render_resources_yaml(resources: Mapping[str, Any]) -> str:
    """The YAML text of a ``resources.yaml`` (sorted keys, block style): stable byte for byte."""
    return yaml.safe_dump(dict(resources), sort_keys=True, default_flow_style=False)
