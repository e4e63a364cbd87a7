"""Cross-checks: what one part of the document says about another.

The models check each value in place; these check references between places: a service's name
matches its key and is unique across dataflows, a resource is declared once, the director's
topics are not declared elsewhere, and every producer, consumer, dependency, scheduler target
and IAM grant names a declared service (every subscription a declared topic).

They run on the raw, normalised document, not on the models, so they report even when the schema
fails. When a list or map of declarations is itself malformed, links into it cannot be judged:
those checks are skipped rather than adding consequences of the schema problem.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from machines.architecture.fields import scalar_to_str
from machines.architecture.naming import (
    pubsub_id_problem,
    service_account_id_problem,
    service_account_problem,
)
from machines.architecture.problems import Loc, format_path

__all__ = ["FIRESTORE_ROLES", "cross_check"]

_DIRECTOR: Loc = ("service_manager_spec",)
_SHARED_RESOURCE_KINDS = ("bigquery_datasets", "firestore_databases")
_RESOURCE_KIND_LABEL = {
    "topics": "topic",
    "subscriptions": "subscription",
    "bigquery_datasets": "dataset",
    "bigquery_tables": "table",
    "gcs_buckets": "bucket",
    "firestore_databases": "Firestore database",
    "firestore_collections": "Firestore collection",
    "cloud_scheduler_jobs": "scheduler job",
}
# Resources with ``producers``/``consumers`` lists of services.
_IO_RESOURCE_KINDS = ("bigquery_tables", "gcs_buckets", "firestore_databases", "firestore_collections")

Declared = dict[str, dict[str, Loc]]
"""Where each resource was first declared: kind → key → path of its ``name``."""


# The project roles a Firestore database's access policy may grant (machines.iam_grants.PROJECT_ROLES
# includes them; deploy/setup.sh lets the daemon grant nothing else on a project).
FIRESTORE_ROLES: frozenset[str] = frozenset({"roles/datastore.owner", "roles/datastore.user", "roles/datastore.viewer"})

def cross_check(doc: Mapping[str, Any]) -> list[str]:
    """Every cross-reference problem of a normalised document, as ``"<path>: <what>"`` lines.

    In this order: dataflow and service names, declared resources, the director's topics, then
    the links of the director and of each dataflow.
    """
    sd = _as_map(doc.get("service_manager_spec"))
    sd_name = _name(sd.get("name"))
    infra = f"{sd_name}-infra" if sd_name else None
    dataflows = _as_map(doc.get("dataflows"))

    problems, services = _declared_services(dataflows, sd_name)
    resource_problems, declared = _declared_resources(dataflows)
    problems += resource_problems
    director_problems, director_topics = _director_topics(sd, declared, infra)
    problems += director_problems

    services_known, topics_known = _readable(doc)
    topics = frozenset(declared["topics"]) | director_topics
    known = _Known(services, services_known, topics, topics_known)
    director_deps: Loc = ("service_manager_spec", "dependencies")
    problems += _dependency_links(director_deps, sd.get("dependencies"), known)
    for df_key, df in dataflows.items():
        if isinstance(df, Mapping):
            problems += _dataflow_links(df_key, df, known)
    return problems


# ---------------------------------------------------------------------------------------------
# Reading the raw document.
# ---------------------------------------------------------------------------------------------


def _problem(loc: Loc, what: str) -> str:
    return f"{format_path(loc)}: {what}"


def _as_map(value: Any) -> Mapping[Any, Any]:
    return value if isinstance(value, Mapping) else {}


def _items(value: Any) -> Iterator[tuple[int, Mapping[Any, Any]]]:
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            if isinstance(item, Mapping):
                yield i, item


def _name(value: Any) -> str | None:
    value = scalar_to_str(value)
    return value if isinstance(value, str) and value else None


def _well_formed(value: Any, container: type) -> bool:
    """``None`` or a ``container`` whose entries (values of a map, items of a list) are mappings."""
    if value is None:
        return True
    if container is list:
        return isinstance(value, list | tuple) and all(isinstance(v, Mapping) for v in value)
    return isinstance(value, Mapping) and all(isinstance(v, Mapping) for v in value.values())


def _suggest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _resource_key(kind: str, item: Mapping[Any, Any]) -> str | None:
    name = _name(item.get("name"))
    if name is None:
        return None
    if kind == "bigquery_tables":
        return f"{_name(item.get('dataset')) or ''}.{name}"
    if kind == "firestore_collections":
        return f"{_name(item.get('database')) or '(default)'}/{name}"
    return name


# ---------------------------------------------------------------------------------------------
# Declarations: services and resources, unique where they must be.
# ---------------------------------------------------------------------------------------------


def _readable(doc: Mapping[str, Any]) -> tuple[bool, bool]:
    """Whether every dataflow's ``services`` map, and every ``resources.topics`` list, could be
    read: links into a malformed one are not judged."""
    dataflows = doc.get("dataflows")
    if not isinstance(dataflows, Mapping | None):
        return False, False
    services = topics = True
    for df in _as_map(dataflows).values():
        if not isinstance(df, Mapping):
            return False, False
        services = services and _well_formed(df.get("services"), Mapping)
        resources = df.get("resources")
        topics = topics and isinstance(resources, Mapping | None) and _well_formed(
            _as_map(resources).get("topics"), list
        )
    return services, topics


def _declared_services(
    dataflows: Mapping[Any, Any], sd_name: str | None
) -> tuple[list[str], dict[str, Loc]]:
    """Names of dataflows and services; and every service name (the director's too) → where."""
    problems: list[str] = []
    services: dict[str, Loc] = {}
    if sd_name:
        services[sd_name] = _DIRECTOR
    for df_key, df in dataflows.items():
        if not isinstance(df, Mapping):
            continue
        explicit = _name(df.get("name"))
        if explicit is not None and explicit != df_key:
            problems.append(_problem(
                ("dataflows", df_key, "name"),
                f"name {explicit!r} does not match its key {df_key!r} (a dataflow's name is its key)",
            ))
        for s_key, svc in _as_map(df.get("services")).items():
            if isinstance(svc, Mapping):
                loc: Loc = ("dataflows", df_key, "services", s_key)
                problems += _service_declaration(loc, s_key, svc, services)
    return problems, services


def _service_declaration(
    loc: Loc, s_key: Any, svc: Mapping[Any, Any], services: dict[str, Loc]
) -> list[str]:
    """One service: its name is its key, it has a deployment, and no one else has its name.
    Records it in ``services``."""
    problems: list[str] = []
    s_name = _name(svc.get("name"))
    if s_name is not None and s_name != s_key:
        problems.append(_problem(
            (*loc, "name"),
            f"name {s_name!r} does not match its key {s_key!r} (a service's name is its key)",
        ))
        services.setdefault(str(s_key), loc)  # links may use either name meanwhile
    if svc.get("deployment") is None:
        problems.append(_problem(
            (*loc, "deployment"),
            "required field is missing (every dataflow service needs a deployment with a source_path)",
        ))
    name = s_name or str(s_key)
    if name in services and services[name] != loc:
        first = services[name]
        where = (
            "is the ServiceDirector's name"
            if first == _DIRECTOR
            else f"is already declared at {format_path(first)}"
        )
        problems.append(_problem(loc, f"service {name!r} {where}"))
    else:
        services[name] = loc
    return problems


def _declared_resources(dataflows: Mapping[Any, Any]) -> tuple[list[str], Declared]:
    """Resources are unique across dataflows (datasets and Firestore databases may be shared)."""
    problems: list[str] = []
    declared: Declared = {kind: {} for kind in _RESOURCE_KIND_LABEL}
    for df_key, df in dataflows.items():
        if not isinstance(df, Mapping):
            continue
        resources = _as_map(df.get("resources"))
        for kind, label in _RESOURCE_KIND_LABEL.items():
            for i, item in _items(resources.get(kind)):
                key = _resource_key(kind, item)
                if key is None:
                    continue
                loc: Loc = ("dataflows", df_key, "resources", kind, i, "name")
                seen = declared[kind]
                if key in seen and (kind not in _SHARED_RESOURCE_KINDS or seen[key][1] == df_key):
                    problems.append(
                        _problem(loc, f"{label} {key!r} is already declared at {format_path(seen[key])}")
                    )
                else:
                    seen.setdefault(key, loc)
    return problems, declared


# ---------------------------------------------------------------------------------------------
# The director's topics: generated into "<director>-infra", so not declared elsewhere.
# ---------------------------------------------------------------------------------------------


def _director_topics(
    sd: Mapping[Any, Any], declared: Declared, infra: str | None
) -> tuple[list[str], frozenset[str]]:
    """The command and completion topics' ids, and that no dataflow declares them."""
    problems: list[str] = []
    topics = declared["topics"]
    director_topics: set[str] = set()
    for field in ("command_topic", "completion_topic"):
        t_name = _name(_as_map(sd.get(field)).get("name"))
        if t_name is None:
            continue
        director_topics.add(t_name)
        loc: Loc = ("service_manager_spec", field, "name")
        id_problem = pubsub_id_problem(t_name, "topic")
        if id_problem is not None:
            problems.append(_problem(loc, id_problem))
        if t_name in topics and topics[t_name][1] != infra:
            problems.append(_problem(
                loc,
                f"topic {t_name!r} is also declared at {format_path(topics[t_name])}; the director's "
                f"topics are generated into the {infra!r} dataflow and must not be declared elsewhere",
            ))
        if field == "command_topic":
            problems += _command_subscription(t_name, declared["subscriptions"], infra)
    return problems, frozenset(director_topics)


def _command_subscription(
    t_name: str, subscriptions: Mapping[str, Loc], infra: str | None
) -> list[str]:
    """``<command topic>-sub`` is generated: a valid id, and not declared in any dataflow."""
    problems: list[str] = []
    problem_text = pubsub_id_problem(f"{t_name}-sub", "subscription")
    if problem_text is not None and pubsub_id_problem(t_name) is None:
        problems.append(_problem(
            ("service_manager_spec", "command_topic", "name"),
            f"the generated command subscription: {problem_text}",
        ))
    sub_loc = subscriptions.get(f"{t_name}-sub")
    if sub_loc is not None and sub_loc[1] != infra:
        problems.append(_problem(
            sub_loc,
            f"subscription '{t_name}-sub' is the director's command subscription, "
            f"generated into the {infra!r} dataflow; choose another name",
        ))
    return problems


# ---------------------------------------------------------------------------------------------
# Links: dependencies, producers, consumers, subscriptions' topics, scheduler targets, grants.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Known:
    """What links may name: declared services and topics, and whether each could be read."""

    services: Mapping[str, Loc]
    services_known: bool
    topics: frozenset[str]
    topics_known: bool

    def service(self, loc: Loc, name: Any) -> list[str]:
        """A problem if ``name`` is a service no dataflow declares."""
        n = _name(name)
        if n is not None and n not in self.services and self.services_known:
            return [_problem(loc, f"service {n!r} is not declared in any dataflow{_suggest(n, self.services)}")]
        return []

    def mapping(self, loc: Loc, mapping: Any) -> list[str]:
        """A problem if a ``{name, lookup}`` link names an undeclared service."""
        if isinstance(mapping, Mapping):
            return self.service((*loc, "name"), mapping.get("name"))
        return []

    def topic(self, loc: Loc, name: Any) -> list[str]:
        """A problem if ``name`` is a topic no dataflow declares (nor the director)."""
        t_name = _name(name)
        if t_name is not None and t_name not in self.topics and self.topics_known:
            return [_problem(
                loc, f"topic {t_name!r} is not declared in any dataflow{_suggest(t_name, self.topics)}"
            )]
        return []


def _dataflow_links(df_key: Any, df: Mapping[Any, Any], known: _Known) -> list[str]:
    """Every link out of one dataflow, in document order by concern."""
    problems: list[str] = []
    for s_key, svc in _as_map(df.get("services")).items():
        if isinstance(svc, Mapping):
            loc: Loc = ("dataflows", df_key, "services", s_key, "dependencies")
            problems += _dependency_links(loc, svc.get("dependencies"), known)
    base: Loc = ("dataflows", df_key, "resources")
    resources = _as_map(df.get("resources"))
    for check in (_pubsub_links, _io_links, _scheduler_job_links, _iam_grant_links):
        problems += check(base, resources, known)
    return problems


def _dependency_links(loc: Loc, deps: Any, known: _Known) -> list[str]:
    """Each entry of a ``dependencies`` list (at ``loc``) names a declared service."""
    if not isinstance(deps, list):
        return []
    return [p for i, dep in enumerate(deps) for p in known.service((*loc, i), dep)]


def _pubsub_links(base: Loc, resources: Mapping[Any, Any], known: _Known) -> list[str]:
    """Topics' producers; subscriptions' consumers and topics."""
    problems: list[str] = []
    for i, topic in _items(resources.get("topics")):
        problems += known.mapping((*base, "topics", i, "producer_service"), topic.get("producer_service"))
    for i, sub in _items(resources.get("subscriptions")):
        problems += known.mapping(
            (*base, "subscriptions", i, "consumer_service"), sub.get("consumer_service")
        )
        problems += known.topic((*base, "subscriptions", i, "topic"), sub.get("topic"))
    return problems


def _io_links(base: Loc, resources: Mapping[Any, Any], known: _Known) -> list[str]:
    """Producers and consumers of tables, buckets and Firestore databases and collections."""
    problems: list[str] = []
    for kind in _IO_RESOURCE_KINDS:
        for i, item in _items(resources.get(kind)):
            for role in ("producers", "consumers"):
                for j, link in _items(item.get(role)):
                    problems += known.service((*base, kind, i, role, j, "name"), link.get("name"))
    return problems


def _scheduler_job_links(base: Loc, resources: Mapping[Any, Any], known: _Known) -> list[str]:
    """A scheduler job targets a declared service, and can fall back to a ``<job>-sa`` account."""
    problems: list[str] = []
    for i, job in _items(resources.get("cloud_scheduler_jobs")):
        loc: Loc = (*base, "cloud_scheduler_jobs", i)
        target = _name(job.get("target_service"))
        if target is None:
            problems.append(_problem((*loc, "target_service"), "required field is missing"))
        else:
            problems += known.service((*loc, "target_service"), target)
        job_name = _name(job.get("name"))
        if job.get("service_account") is None and job_name is not None:
            default_problem = service_account_id_problem(f"{job_name}-sa")
            if default_problem is not None:
                problems.append(_problem(
                    (*loc, "service_account"),
                    f"no service_account given and the default is not usable: {default_problem}",
                ))
    return problems


def _iam_grant_links(base: Loc, resources: Mapping[Any, Any], known: _Known) -> list[str]:
    """An IAM grant names a declared service, or (``type: service-account``) a valid account."""
    problems: list[str] = []
    for kind in _RESOURCE_KIND_LABEL:
        for i, item in _items(resources.get(kind)):
            for j, grant in _items(item.get("iam_access_policy")):
                loc: Loc = (*base, kind, i, "iam_access_policy", j, "name")
                role = grant.get("role")
                if kind == "firestore_databases" and isinstance(role, str) and role not in FIRESTORE_ROLES:
                    # A database's grant lands on the project: only Firestore's data roles, or an
                    # architecture could have Podium grant anything on the project.
                    allowed = ", ".join(sorted(FIRESTORE_ROLES))
                    problems.append(_problem(
                        (*base, kind, i, "iam_access_policy", j, "role"),
                        f"{role!r}: a Firestore database's grant is a project role; one of {allowed}",
                    ))
                if grant.get("type") == "service-account":
                    n = _name(grant.get("name"))
                    sa_problem = None if n is None else service_account_problem(n)
                    if sa_problem is not None:
                        problems.append(_problem(loc, sa_problem))
                else:
                    problems += known.service(loc, grant.get("name"))
    return problems
