"""The three IAM effect handlers (``iam.provision``, ``iam.verify``, ``iam.bind``).

Plain functions of ``(ctx, backend)``; the backend tables bind ``backend`` with
``functools.partial``. Each is idempotent: accounts that exist and members already in a role
are left alone, so a re-run (a redriven effect, a ``retry`` command) creates nothing twice.

* ``provision``: every account of the plan (services, the director, scheduler jobs), then the
  ``project``-phase bindings (project roles and secrets, whose resources exist before the run).
* ``verify``: ONE check of everything the phase needs (``accounts``: accounts + project-phase
  bindings; ``resources``: the resource-phase bindings ``bind`` applied), in parallel, one read
  per account and one per resource policy (however many bindings it holds). Not yet
  visible → ``[]``: the machine's timer polls again with backoff and fails the run when the IAM
  budget runs out (DESIGN.md §7 rule 3). A transient API error during a check counts as "not
  yet" for the same reason; a permission problem fails the run at once.
* ``bind``: the ``resource``-phase bindings, except ``run.invoker`` on Cloud Run services other
  than the director: those services are deployed later (``deploying_services``), so
  ``deploy_then_grant_invokers`` applies ``invoker_bindings_for(plan, service)`` right after
  each one is up (the anchor applied them before the services existed).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import structlog

from handlers.base import EffectContext, Handler, Outcome
from handlers.iam.base import IamBackend, describe
from machines.errors import HandlerError, NotReady
from machines.iam_plan import IamBinding, IamPlan, plan_iam

__all__ = [
    "apply_bindings",
    "bind",
    "deploy_then_grant_invokers",
    "remove",
    "bindings_to_apply",
    "invoker_bindings_for",
    "provision",
    "verify",
]

log = structlog.get_logger("podium.iam")

MAX_PARALLEL = 8
T = TypeVar("T")
R = TypeVar("R")


# ---- the effects ----------------------------------------------------------------------------
def provision(ctx: EffectContext, backend: IamBackend) -> Sequence[Outcome]:
    backend = backend.in_project(ctx.architecture.project_id)
    plan = plan_iam(ctx.architecture)
    unique = {a.email: a for a in plan.service_accounts}  # several services may share one account
    emails = dict(
        zip(unique, _parallel(backend.ensure_service_account, list(unique.values())), strict=True)
    )
    project_bindings = plan.for_phase("project")
    apply_bindings(backend, project_bindings)
    accounts = {
        a.service: emails[a.email] for a in plan.service_accounts if a.kind != "scheduler_job"
    }
    data: dict[str, object] = {"service_accounts": accounts, "bindings": len(project_bindings)}
    jobs = {a.service: emails[a.email] for a in plan.service_accounts if a.kind == "scheduler_job"}
    if jobs:
        data["scheduler_accounts"] = jobs
    log.info("iam accounts ensured", accounts=len(unique), project_bindings=len(project_bindings))
    return [Outcome("iam.accounts_created", None, data)]


def verify(ctx: EffectContext, backend: IamBackend) -> Sequence[Outcome]:
    backend = backend.in_project(ctx.architecture.project_id)
    plan = plan_iam(ctx.architecture)
    # Each check: what it looks at (one name per account or binding) and how, in one call.
    checks: list[tuple[list[str], Callable[[], list[bool]]]]
    if ctx.item == "accounts":
        checks = [([f"account {e}"], _account_check(backend, e)) for e in plan.emails()]
        bindings: Sequence[IamBinding] = plan.for_phase("project")
    elif ctx.item == "resources":
        bindings, _ = bindings_to_apply(plan, ctx.architecture.service_manager_spec.name)
        checks = []
    else:
        raise HandlerError(
            f"iam.verify: unknown item {ctx.item!r} (expected 'accounts' or 'resources')",
            retryable=False,
        )
    # One read of each resource's policy for all its bindings (a project may hold many).
    checks += [([describe(b) for b in group], _bound(backend.bindings_visible, group))
               for group in _by_resource(bindings)]
    results = _parallel(_check, checks)
    whats = [what for names, _ in checks for what in names]
    missing = [what for what, ok in zip(whats, (ok for oks in results for ok in oks), strict=True) if not ok]
    if missing:
        log.info(
            "iam not visible yet",
            phase=ctx.item,
            missing=len(missing),
            of=len(whats),
            first=missing[:3],
        )
        return []
    return [Outcome("iam.verified", ctx.item, {"checked": len(whats)})]


def bind(ctx: EffectContext, backend: IamBackend) -> Sequence[Outcome]:
    backend = backend.in_project(ctx.architecture.project_id)
    plan = plan_iam(ctx.architecture)
    now, deferred = bindings_to_apply(plan, ctx.architecture.service_manager_spec.name)
    apply_bindings(backend, now)
    log.info("iam resource bindings applied", applied=len(now), deferred=len(deferred))
    return [
        Outcome(
            "iam.bindings_applied", "resources", {"applied": len(now), "deferred": len(deferred)}
        )
    ]


def remove(ctx: EffectContext, backend: IamBackend) -> Sequence[Outcome]:
    """``iam.remove`` (teardown): delete the plan's accounts that Podium created; accounts that
    existed before (or that someone else made) are kept and listed."""
    backend = backend.in_project(ctx.architecture.project_id)
    emails = sorted({a.email for a in plan_iam(ctx.architecture).service_accounts})
    gone = _parallel(backend.remove_service_account, emails)
    removed = [e for e, ok in zip(emails, gone, strict=True) if ok]
    log.info("iam accounts removed", removed=len(removed), kept=len(emails) - len(removed))
    return [Outcome("iam.accounts_removed", ctx.item, {"removed": removed,
                                                        "kept": [e for e in emails if e not in removed]})]


def deploy_then_grant_invokers(ctx: EffectContext, backend: IamBackend, deploy: Handler) -> Sequence[Outcome]:
    """The ``deploy`` effect: deploy, and once the service is up grant ``run.invoker`` on it to
    its dependants and scheduler jobs (it did not exist before). A failed grant fails the effect,
    which redoes both: the deploy finds its revision ready, the grants find themselves in place."""
    outcomes = deploy(ctx)
    if ctx.item and any(o.type == "deploy.succeeded" for o in outcomes):
        granted = apply_bindings(
            backend.in_project(ctx.architecture.project_id),
            invoker_bindings_for(plan_iam(ctx.architecture), ctx.item),
        )
        if granted:
            log.info("run.invoker granted", service=ctx.item, bindings=granted)
    return outcomes


# ---- helpers the deploy handler uses too -------------------------------------------------------
def bindings_to_apply(plan: IamPlan, director: str) -> tuple[list[IamBinding], list[IamBinding]]:
    """The resource-phase bindings split into (apply in ``iam.bind``, apply after a deploy):
    ``run.invoker`` on a Cloud Run service other than the director waits for that service."""
    now: list[IamBinding] = []
    deferred: list[IamBinding] = []
    for b in plan.for_phase("resource"):
        if b.resource_type == "cloudrun_service" and b.resource_id != director:
            deferred.append(b)
        else:
            now.append(b)
    return now, deferred


def invoker_bindings_for(plan: IamPlan, service: str) -> list[IamBinding]:
    """The bindings on Cloud Run service ``service`` (``run.invoker`` for its dependants and
    scheduler jobs): apply them with ``apply_bindings`` once the service is deployed."""
    return [
        b
        for b in plan.for_phase("resource")
        if b.resource_type == "cloudrun_service" and b.resource_id == service
    ]


def apply_bindings(backend: IamBackend, bindings: Iterable[IamBinding]) -> int:
    """Apply ``bindings`` additively: one resource's bindings one after another (each is a
    read-modify-write of the same policy), different resources in parallel. Returns the count."""

    def apply_group(group: list[IamBinding]) -> int:
        for b in group:
            backend.add_binding(b)
        return len(group)

    return sum(_parallel(apply_group, _by_resource(bindings)))


# ---- internals ----------------------------------------------------------------------------------
def _by_resource(bindings: Iterable[IamBinding]) -> list[list[IamBinding]]:
    """``bindings`` grouped by the resource whose policy holds them, in first-seen order."""
    groups: dict[tuple[str, str, str], list[IamBinding]] = defaultdict(list)
    for b in bindings:
        groups[(b.resource_type, b.resource_location, b.resource_id)].append(b)
    return list(groups.values())


def _bound(fn: Callable[[T], R], arg: T) -> Callable[[], R]:
    return lambda: fn(arg)


def _account_check(backend: IamBackend, email: str) -> Callable[[], list[bool]]:
    return lambda: [backend.account_visible(email)]


def _check(check: tuple[list[str], Callable[[], list[bool]]]) -> list[bool]:
    whats, fn = check
    try:
        return fn()
    except HandlerError as exc:
        if not exc.retryable:
            raise
        log.info(
            "iam check failed transiently; counts as not visible yet",
            check=whats[0] + (f" and {len(whats) - 1} more" if len(whats) > 1 else ""),
            error=exc.message[:200],
        )
        return [False] * len(whats)
    except NotReady:
        return [False] * len(whats)


def _parallel(fn: Callable[[T], R], items: list[T]) -> list[R]:
    """``[fn(x) for x in items]`` on a small pool. Waits for all; then raises the most decisive
    error: a non-retryable one first (fail the run clearly), then a retryable one, then NotReady."""
    if len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(
        max_workers=min(MAX_PARALLEL, len(items)), thread_name_prefix="iam"
    ) as pool:
        futures = [pool.submit(fn, x) for x in items]
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        raise min(errors, key=_severity)  # type: ignore[misc]
    return [f.result() for f in futures]


def _severity(exc: BaseException | None) -> int:
    if isinstance(exc, NotReady):
        return 3
    if isinstance(exc, HandlerError):
        return 1 if exc.retryable else 0
    return 2  # a bug: raise it as it is (the runner retries, then fails the run with it)
