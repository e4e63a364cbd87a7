"""handlers.iam.local on the real Firestore emulator: the registry, simulated propagation, and
the same polling path the machine drives on Google Cloud."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.cloud import firestore

from daemon.config import Settings
from handlers.base import EffectContext, Outcome
from handlers.iam import effects
from handlers.iam.base import IamBackend
from handlers.iam.local import COLLECTION, LocalIam, binding_doc_id
from machines.architecture import Architecture, load_architecture
from machines.hydration import all_services, hydrate
from machines.iam_plan import IamBinding, plan_iam
from machines.messages import RunView

TESTDATA = Path(__file__).resolve().parents[2] / "testdata" / "architecture.yaml"
DELAY = 0.5


def make_ctx(arch: Architecture, settings: Settings, kind: str, item: str | None) -> EffectContext:
    hydrated = hydrate(arch)
    services = all_services(hydrated)
    director = hydrated.service_manager_spec.name
    run = {
        "run_id": "iam-run",
        "architecture": hydrated.to_dict(),
        "plan": {
            "director": director,
            "all_services": sorted(services),
            "services": sorted(s for s in services if s != director),
        },
    }
    return EffectContext(
        run_id="iam-run",
        effect_id=f"iam-run:{kind}:{item}",
        kind=kind,
        item=item,
        params={},
        attempt=0,
        run=RunView.model_validate(run),
        settings=settings,
    )


def poll(check: Callable[[], Sequence[Outcome]], timeout: float = 10.0) -> tuple[Outcome, int]:
    """Call ``check`` until it reports (as the machine's timer would), returning the outcome and
    how many checks it took."""
    deadline = time.monotonic() + timeout
    checks = 0
    while time.monotonic() < deadline:
        checks += 1
        outcomes = check()
        if outcomes:
            assert len(outcomes) == 1
            return outcomes[0], checks
        time.sleep(0.05)
    raise AssertionError(f"not verified after {timeout} s ({checks} checks)")


def docs(client: firestore.Client, prefix: str = "") -> dict[str, dict[str, Any]]:
    return {
        d.id: d.to_dict() or {}
        for d in client.collection(COLLECTION).stream()
        if d.id.startswith(prefix)
    }


@pytest.fixture
def settings(project: str) -> Settings:
    return Settings(project=project, local_iam_delay_seconds=DELAY, backend="local")


@pytest.fixture
def backend(firestore_client: firestore.Client, settings: Settings) -> LocalIam:
    return LocalIam(settings, client=firestore_client)


@pytest.fixture
def demo() -> Architecture:
    return load_architecture(TESTDATA.read_text())


def test_local_backend_is_an_iam_backend(backend: LocalIam) -> None:
    assert isinstance(backend, IamBackend)


def test_provision_then_verify_after_the_simulated_delay(
    backend: LocalIam, firestore_client: firestore.Client, settings: Settings, demo: Architecture
) -> None:
    started = time.monotonic()
    (created,) = effects.provision(make_ctx(demo, settings, "iam.provision", "accounts"), backend)

    plan = plan_iam(demo)
    assert created.type == "iam.accounts_created"
    assert created.data["service_accounts"] == {a.service: a.email for a in plan.service_accounts}
    assert created.data["bindings"] == len(plan.for_phase("project")) == 1  # the director's pubsub.editor
    accounts = docs(firestore_client, "account~")
    assert set(accounts) == {f"account~{e}" for e in plan.emails()}
    for doc in accounts.values():
        assert doc["visible_at"] > doc["created_at"]
    assert len(docs(firestore_client, "binding~")) == 1

    verify_ctx = make_ctx(demo, settings, "iam.verify", "accounts")
    first = effects.verify(verify_ctx, backend)
    if time.monotonic() - started < DELAY:  # (always, unless this machine stalled for 0.5 s)
        assert first == []

    out, checks = poll(lambda: effects.verify(verify_ctx, backend))
    assert time.monotonic() - started >= DELAY  # never visible before the simulated delay
    assert (out.type, out.item) == ("iam.verified", "accounts")
    assert out.data == {"checked": len(plan.emails()) + 1}
    assert checks >= 1


def test_provision_twice_creates_nothing_twice(
    backend: LocalIam, firestore_client: firestore.Client, settings: Settings, demo: Architecture
) -> None:
    ctx = make_ctx(demo, settings, "iam.provision", "accounts")
    first = effects.provision(ctx, backend)
    before = docs(firestore_client)
    time.sleep(0.05)

    again = effects.provision(ctx, backend)

    assert again == first
    after = docs(firestore_client)
    assert after == before  # same documents, same created_at / visible_at


def test_bind_is_additive_and_idempotent(
    backend: LocalIam, firestore_client: firestore.Client, settings: Settings, demo: Architecture
) -> None:
    effects.provision(make_ctx(demo, settings, "iam.provision", "accounts"), backend)
    # Someone else's binding on one of our topics, made outside Podium.
    foreign = IamBinding(
        member_sa="ops@elsewhere.iam.gserviceaccount.com",
        resource_type="pubsub_topic",
        resource_id="tracer-topic",
        role="roles/pubsub.viewer",
        reason="granted by hand",
        phase="resource",
    )
    backend.add_binding(foreign)
    before = docs(firestore_client)

    ctx = make_ctx(demo, settings, "iam.bind", "resources")
    (applied,) = effects.bind(ctx, backend)
    plan = plan_iam(demo)
    resource_bindings = plan.for_phase("resource")
    assert (applied.type, applied.item) == ("iam.bindings_applied", "resources")
    assert applied.data == {"applied": len(resource_bindings), "deferred": 0}

    after_first = docs(firestore_client)
    assert {k: v for k, v in after_first.items() if k in before} == before  # nothing replaced
    added = set(after_first) - set(before)
    assert added == {binding_doc_id(b, settings.project) for b in resource_bindings}
    topic_viewers = sorted(
        d["member"]
        for d in after_first.values()
        if d.get("resource_id") == "tracer-topic" and d.get("role") == "roles/pubsub.viewer"
    )
    assert topic_viewers == [
        "serviceAccount:ops@elsewhere.iam.gserviceaccount.com",
        "serviceAccount:publisher-sa@podium-local.iam.gserviceaccount.com",
        "serviceAccount:subscriber-sa@podium-local.iam.gserviceaccount.com",
    ]

    assert effects.bind(ctx, backend) == [applied]  # a redriven effect
    assert docs(firestore_client) == after_first

    started = time.monotonic()
    out, _ = poll(
        lambda: effects.verify(make_ctx(demo, settings, "iam.verify", "resources"), backend)
    )
    assert (out.type, out.item, out.data) == (
        "iam.verified",
        "resources",
        {"checked": len(resource_bindings)},
    )
    assert time.monotonic() - started < 5.0


def test_invokers_on_app_services_are_deferred_to_their_deploy(
    backend: LocalIam, firestore_client: firestore.Client, settings: Settings
) -> None:
    data = yaml.safe_load(TESTDATA.read_text())
    data["dataflows"]["tracer"]["services"]["publisher"]["dependencies"] = [
        "director",
        "subscriber",
    ]
    arch = Architecture.from_dict(data)
    plan = plan_iam(arch)
    effects.provision(make_ctx(arch, settings, "iam.provision", "accounts"), backend)

    (applied,) = effects.bind(make_ctx(arch, settings, "iam.bind", "resources"), backend)
    assert applied.data["deferred"] == 1
    (invoker,) = effects.invoker_bindings_for(plan, "subscriber")
    assert (invoker.member_sa, invoker.role) == (
        "publisher-sa@podium-local.iam.gserviceaccount.com",
        "roles/run.invoker",
    )
    assert binding_doc_id(invoker, settings.project) not in docs(firestore_client)
    # verify "resources" does not wait for the deferred binding ...
    out, _ = poll(
        lambda: effects.verify(make_ctx(arch, settings, "iam.verify", "resources"), backend)
    )
    assert out.type == "iam.verified"
    # ... which the deploy handler applies once the subscriber is deployed.
    effects.apply_bindings(backend, effects.invoker_bindings_for(plan, "subscriber"))
    assert binding_doc_id(invoker, settings.project) in docs(firestore_client)
    assert backend.bindings_visible([invoker]) == [False]  # propagation is simulated for it too
