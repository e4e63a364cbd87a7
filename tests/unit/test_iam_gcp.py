"""handlers.iam.gcp: the exact requests the gcp IAM backend sends, on autospecced clients
(there is no emulator for IAM), and the effects on top of it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from google.api_core import exceptions as gexc
from google.cloud import iam_admin_v1, resourcemanager_v3, run_v2, secretmanager_v1
from google.cloud.pubsub_v1 import PublisherClient, SubscriberClient
from google.iam.v1 import iam_policy_pb2, policy_pb2
from google.type import expr_pb2
from pytest_mock import MockerFixture

from daemon.config import Settings
from handlers.base import EffectContext, Outcome
from handlers.iam import effects
from handlers.iam.effects import bindings_to_apply, invoker_bindings_for
from handlers.iam.gcp import GcpIam
from machines.architecture import Architecture
from machines.errors import HandlerError, NotReady
from machines.hydration import hydrate
from machines.iam_plan import IamBinding, ServiceAccountPlan, plan_iam
from machines.messages import RunView
from tests.architectures import rich_architecture

PROJECT = "podium-local"
PROJECT_NAME = f"projects/{PROJECT}"


def email(account: str) -> str:
    return f"{account}@{PROJECT}.iam.gserviceaccount.com"


DIRECTOR = email("director-sa")
PUBLISHER = email("publisher-sa")
SUBSCRIBER = email("subscriber-sa")


# ---- fakes --------------------------------------------------------------------------------------
class PolicyStore:
    """Server-side IAM policies keyed by resource name, with etags that change on every write."""

    def __init__(self) -> None:
        self.policies: dict[str, policy_pb2.Policy] = {}
        self.writes = 0

    def put(self, resource: str, *bindings: tuple[str, list[str]], etag: bytes = b"etag-0") -> None:
        policy = policy_pb2.Policy(version=1, etag=etag)
        for role, members in bindings:
            policy.bindings.add(role=role, members=members)
        self.policies[resource] = policy

    def get(self, request: iam_policy_pb2.GetIamPolicyRequest, **_: Any) -> policy_pb2.Policy:
        if request.resource not in self.policies:
            self.put(request.resource)
        copy = policy_pb2.Policy()
        copy.CopyFrom(self.policies[request.resource])
        return copy

    def set(self, request: iam_policy_pb2.SetIamPolicyRequest, **_: Any) -> policy_pb2.Policy:
        current = self.policies.get(request.resource)
        if current is not None and request.policy.etag != current.etag:
            raise gexc.Aborted("There were concurrent policy changes (etag mismatch)")
        self.writes += 1
        stored = policy_pb2.Policy()
        stored.CopyFrom(request.policy)
        stored.etag = f"etag-{self.writes}".encode()
        self.policies[request.resource] = stored
        return stored

    def members(self, resource: str, role: str) -> list[str]:
        return [
            m
            for b in self.policies[resource].bindings
            if b.role == role and not b.HasField("condition")
            for m in b.members
        ]


@dataclass
class Clients:
    iam: Any
    projects: Any
    publisher: Any
    subscriber: Any
    run: Any
    secrets: Any
    store: PolicyStore

    def backend(self, **kw: Any) -> GcpIam:
        return GcpIam(
            PROJECT,
            iam_client=self.iam,
            projects_client=self.projects,
            publisher=self.publisher,
            subscriber=self.subscriber,
            run_client=self.run,
            secrets_client=self.secrets,
            **kw,
        )

    def policy_clients(self) -> list[Any]:
        return [self.projects, self.publisher, self.subscriber, self.run, self.secrets, self.iam]


@pytest.fixture
def clients(mocker: MockerFixture) -> Iterator[Clients]:
    store = PolicyStore()
    c = Clients(
        iam=mocker.create_autospec(iam_admin_v1.IAMClient, instance=True),
        projects=mocker.create_autospec(resourcemanager_v3.ProjectsClient, instance=True),
        publisher=mocker.create_autospec(PublisherClient, instance=True),
        subscriber=mocker.create_autospec(SubscriberClient, instance=True),
        run=mocker.create_autospec(run_v2.ServicesClient, instance=True),
        secrets=mocker.create_autospec(secretmanager_v1.SecretManagerServiceClient, instance=True),
        store=store,
    )
    for client in c.policy_clients():
        client.get_iam_policy.side_effect = store.get
        client.set_iam_policy.side_effect = store.set
    c.iam.create_service_account.side_effect = lambda request, **_: iam_admin_v1.ServiceAccount(
        email=f"{request.account_id}@{request.name.split('/')[1]}.iam.gserviceaccount.com"
    )
    yield c


def make_ctx(arch: Architecture, kind: str, item: str | None) -> EffectContext:
    hydrated = hydrate(arch)
    return EffectContext(
        run_id="run-1",
        effect_id=f"run-1:{kind}:{item}",
        kind=kind,
        item=item,
        params={},
        attempt=0,
        run=RunView.model_validate({"run_id": "run-1", "architecture": hydrated.to_dict(), "plan": {}}),
        settings=Settings(project=PROJECT),
    )


def binding(**kw: Any) -> IamBinding:
    values: dict[str, Any] = {
        "member_sa": DIRECTOR,
        "resource_type": "project",
        "resource_id": PROJECT,
        "role": "roles/pubsub.admin",
        "reason": "test",
        "phase": "project",
    }
    values.update(kw)
    return IamBinding(**values)


def requests(method: Any) -> list[Any]:
    return [c.kwargs["request"] for c in method.call_args_list]


# ---- accounts -----------------------------------------------------------------------------------
def test_provision_creates_the_plans_accounts_and_project_roles(
    clients: Clients, demo: Architecture
) -> None:
    outcomes = effects.provision(make_ctx(demo, "iam.provision", "accounts"), clients.backend())

    created = requests(clients.iam.create_service_account)
    assert sorted((r.name, r.account_id) for r in created) == [
        (PROJECT_NAME, "director-sa"),
        (PROJECT_NAME, "publisher-sa"),
        (PROJECT_NAME, "subscriber-sa"),
    ]
    for r in created:
        assert isinstance(r, iam_admin_v1.CreateServiceAccountRequest)
        assert "podium" in r.service_account.display_name
    assert len(outcomes) == 1
    out = outcomes[0]
    assert out.type == "iam.accounts_created" and out.item is None
    assert out.data["service_accounts"] == {
        "director": DIRECTOR,
        "publisher": PUBLISHER,
        "subscriber": SUBSCRIBER,
    }
    # The director's one project role (plan for testdata) on projects/podium-local.
    assert out.data["bindings"] == 1
    assert clients.store.members(PROJECT_NAME, "roles/pubsub.editor") == [f"serviceAccount:{DIRECTOR}"]
    gets = requests(clients.projects.get_iam_policy)
    assert {r.resource for r in gets} == {PROJECT_NAME}
    assert all(r.options.requested_policy_version == 3 for r in gets)
    assert {r.resource for r in requests(clients.projects.set_iam_policy)} == {PROJECT_NAME}
    # No resource-phase binding is touched by provision.
    for client in (clients.publisher, clients.subscriber, clients.run):
        client.get_iam_policy.assert_not_called()


def test_provision_twice_writes_nothing_new(clients: Clients, demo: Architecture) -> None:
    backend = clients.backend()
    ctx = make_ctx(demo, "iam.provision", "accounts")
    effects.provision(ctx, backend)
    writes = clients.store.writes
    clients.iam.create_service_account.side_effect = gexc.AlreadyExists("exists")

    again = effects.provision(ctx, backend)

    assert again[0].data["service_accounts"]["director"] == DIRECTOR
    assert clients.store.writes == writes  # members already in their roles: no set_iam_policy


def test_already_exists_is_success(clients: Clients) -> None:
    clients.iam.create_service_account.side_effect = gexc.AlreadyExists("already exists")
    account = ServiceAccountPlan(
        service="publisher",
        kind="service",
        account="publisher-sa",
        account_id="publisher-sa",
        email=PUBLISHER,
    )
    assert clients.backend().ensure_service_account(account) == PUBLISHER


def test_account_in_another_project_is_created_there(clients: Clients) -> None:
    account = ServiceAccountPlan(
        service="reader",
        kind="service",
        account="reader@other-project.iam.gserviceaccount.com",
        account_id="reader",
        email="reader@other-project.iam.gserviceaccount.com",
    )
    clients.backend().ensure_service_account(account)
    (request,) = requests(clients.iam.create_service_account)
    assert (request.name, request.account_id) == ("projects/other-project", "reader")


def test_google_managed_account_is_not_created(clients: Clients) -> None:
    account = ServiceAccountPlan(
        service="x",
        kind="service",
        account="123-compute@developer.gserviceaccount.com",
        account_id="123-compute",
        email="123-compute@developer.gserviceaccount.com",
    )
    assert clients.backend().ensure_service_account(account) == account.email
    clients.iam.create_service_account.assert_not_called()


def test_permission_denied_on_create_is_not_retryable(clients: Clients, demo: Architecture) -> None:
    clients.iam.create_service_account.side_effect = gexc.PermissionDenied(
        "Permission 'iam.serviceAccounts.create' denied"
    )
    with pytest.raises(HandlerError) as err:
        effects.provision(make_ctx(demo, "iam.provision", "accounts"), clients.backend())
    assert err.value.retryable is False
    assert "permission denied" in err.value.message
    assert "iam.serviceAccounts.create" in err.value.message
    assert "@podium-local.iam.gserviceaccount.com" in err.value.message
    assert PROJECT_NAME in err.value.message


def test_account_visible(clients: Clients) -> None:
    backend = clients.backend()
    clients.iam.get_service_account.return_value = iam_admin_v1.ServiceAccount(email=PUBLISHER)
    assert backend.account_visible(PUBLISHER) is True
    clients.iam.get_service_account.side_effect = gexc.NotFound("no such account")
    assert backend.account_visible(PUBLISHER) is False
    names = [r["name"] for r in requests(clients.iam.get_service_account)]
    assert names == [f"{PROJECT_NAME}/serviceAccounts/{PUBLISHER}"] * 2


# ---- bindings: additive read-modify-write --------------------------------------------------------
def test_add_binding_keeps_foreign_bindings_and_members(clients: Clients) -> None:
    store = clients.store
    store.put(
        PROJECT_NAME,
        ("roles/owner", ["user:alice@example.com"]),
        ("roles/pubsub.admin", ["group:ops@example.com"]),
        etag=b"etag-read",
    )
    conditional = store.policies[PROJECT_NAME].bindings.add(
        role="roles/pubsub.admin",
        members=["user:temp@example.com"],
        condition=expr_pb2.Expr(
            title="until friday", expression="request.time < timestamp('2030-01-01T00:00:00Z')"
        ),
    )
    assert conditional.HasField("condition")

    clients.backend().add_binding(binding(role="roles/pubsub.admin"))

    (set_request,) = requests(clients.projects.set_iam_policy)
    assert set_request.resource == PROJECT_NAME
    assert set_request.policy.etag == b"etag-read"  # the etag that was read is sent back
    written = {
        (b.role, b.HasField("condition")): list(b.members) for b in set_request.policy.bindings
    }
    assert written == {
        ("roles/owner", False): ["user:alice@example.com"],
        ("roles/pubsub.admin", False): ["group:ops@example.com", f"serviceAccount:{DIRECTOR}"],
        ("roles/pubsub.admin", True): ["user:temp@example.com"],
    }


def test_add_binding_creates_the_role_binding_when_missing(clients: Clients) -> None:
    clients.store.put(PROJECT_NAME, ("roles/owner", ["user:alice@example.com"]))
    clients.backend().add_binding(binding(role="roles/run.admin"))
    assert clients.store.members(PROJECT_NAME, "roles/owner") == ["user:alice@example.com"]
    assert clients.store.members(PROJECT_NAME, "roles/run.admin") == [f"serviceAccount:{DIRECTOR}"]


def test_member_already_in_role_costs_no_write(clients: Clients) -> None:
    clients.store.put(PROJECT_NAME, ("roles/pubsub.admin", [f"serviceAccount:{DIRECTOR}"]))
    clients.backend().add_binding(binding(role="roles/pubsub.admin"))
    clients.projects.set_iam_policy.assert_not_called()


def test_etag_conflict_rereads_and_sets_again(clients: Clients) -> None:
    store = clients.store
    store.put(PROJECT_NAME, ("roles/owner", ["user:alice@example.com"]), etag=b"etag-old")
    real_get = store.get
    calls = {"n": 0}

    def racing_get(request: Any, **kw: Any) -> policy_pb2.Policy:
        policy = real_get(request, **kw)
        if calls["n"] == 0:  # someone else writes right after our first read
            store.put(
                PROJECT_NAME,
                ("roles/owner", ["user:alice@example.com"]),
                ("roles/viewer", ["user:bob@example.com"]),
                etag=b"etag-new",
            )
        calls["n"] += 1
        return policy

    clients.projects.get_iam_policy.side_effect = racing_get

    clients.backend().add_binding(binding(role="roles/pubsub.admin"))

    sets = requests(clients.projects.set_iam_policy)
    assert [r.policy.etag for r in sets] == [b"etag-old", b"etag-new"]
    assert clients.projects.get_iam_policy.call_count == 2
    # The concurrent writer's binding survived ours.
    assert store.members(PROJECT_NAME, "roles/viewer") == ["user:bob@example.com"]
    assert store.members(PROJECT_NAME, "roles/pubsub.admin") == [f"serviceAccount:{DIRECTOR}"]


def test_etag_conflict_gives_up_retryably_after_five_tries(clients: Clients) -> None:
    clients.projects.set_iam_policy.side_effect = gexc.Aborted("concurrent policy changes")
    with pytest.raises(HandlerError) as err:
        clients.backend().add_binding(binding())
    assert err.value.retryable is True
    assert clients.projects.set_iam_policy.call_count == 5
    assert clients.projects.get_iam_policy.call_count == 5


def test_permission_denied_on_set_names_role_member_and_resource(clients: Clients) -> None:
    clients.publisher.set_iam_policy.side_effect = gexc.PermissionDenied(
        "Permission 'pubsub.topics.setIamPolicy' denied"
    )
    b = binding(
        resource_type="pubsub_topic",
        resource_id="tracer-topic",
        role="roles/pubsub.publisher",
        member_sa=PUBLISHER,
        phase="resource",
    )
    with pytest.raises(HandlerError) as err:
        clients.backend().add_binding(b)
    assert err.value.retryable is False
    msg = err.value.message
    assert "roles/pubsub.publisher" in msg and PUBLISHER in msg
    assert f"{PROJECT_NAME}/topics/tracer-topic" in msg and "permission denied" in msg


@pytest.mark.parametrize(
    "exc",
    [
        gexc.ServiceUnavailable("down"),
        gexc.DeadlineExceeded("slow"),
        gexc.TooManyRequests("quota"),
        gexc.ResourceExhausted("quota"),
    ],
)
def test_transient_errors_are_retryable(clients: Clients, exc: Exception) -> None:
    clients.projects.get_iam_policy.side_effect = exc
    with pytest.raises(HandlerError) as err:
        clients.backend().add_binding(binding())
    assert err.value.retryable is True


def test_invalid_argument_is_not_retryable(clients: Clients) -> None:
    clients.projects.set_iam_policy.side_effect = gexc.InvalidArgument(
        "Role roles/nope is not supported"
    )
    with pytest.raises(HandlerError) as err:
        clients.backend().add_binding(binding(role="roles/nope"))
    assert err.value.retryable is False
    assert "roles/nope" in err.value.message


def test_new_account_not_yet_usable_is_not_ready(clients: Clients, demo: Architecture) -> None:
    """IAM may reject a just-created account in a policy for a while: wait durably (NotReady)."""
    clients.projects.set_iam_policy.side_effect = gexc.InvalidArgument(
        f"Service account {DIRECTOR} does not exist."
    )
    with pytest.raises(NotReady):
        effects.provision(make_ctx(demo, "iam.provision", "accounts"), clients.backend())
    # An account Podium did not ensure is a real error.
    with pytest.raises(HandlerError) as err:
        clients.backend().add_binding(binding())
    assert not isinstance(err.value, NotReady) and err.value.retryable is False


def test_bind_applies_resource_bindings_on_each_resources_policy(
    clients: Clients, demo: Architecture
) -> None:
    outcomes = effects.bind(make_ctx(demo, "iam.bind", "resources"), clients.backend())

    assert [(o.type, o.item) for o in outcomes] == [("iam.bindings_applied", "resources")]
    assert outcomes[0].data == {"applied": 11, "deferred": 0}
    topics = f"{PROJECT_NAME}/topics"
    subs = f"{PROJECT_NAME}/subscriptions"
    store = clients.store
    assert store.members(f"{topics}/tracer-topic", "roles/pubsub.publisher") == [
        f"serviceAccount:{PUBLISHER}"
    ]
    assert sorted(store.members(f"{topics}/tracer-topic", "roles/pubsub.viewer")) == [
        f"serviceAccount:{PUBLISHER}",
        f"serviceAccount:{SUBSCRIBER}",
    ]
    assert store.members(f"{subs}/tracer-sub", "roles/pubsub.subscriber") == [
        f"serviceAccount:{SUBSCRIBER}"
    ]
    assert store.members(f"{subs}/director-commands-sub", "roles/pubsub.subscriber") == [
        f"serviceAccount:{DIRECTOR}"
    ]
    run_name = f"{PROJECT_NAME}/locations/europe-west1/services/director"
    assert store.members(run_name, "roles/run.invoker") == [f"serviceAccount:{PUBLISHER}"]
    # Each client only saw its own kind of resource.
    assert {r.resource for r in requests(clients.publisher.set_iam_policy)} == {
        f"{topics}/tracer-topic",
        f"{topics}/director-commands",
        f"{topics}/director-completions",
    }
    assert {r.resource for r in requests(clients.subscriber.set_iam_policy)} == {
        f"{subs}/tracer-sub",
        f"{subs}/director-commands-sub",
    }
    assert {r.resource for r in requests(clients.run.set_iam_policy)} == {run_name}
    clients.projects.set_iam_policy.assert_not_called()


def test_invokers_on_app_services_wait_for_their_deploy(clients: Clients) -> None:
    # In this project (the backend's), without buckets and BigQuery tables (their JSON APIs are
    # tested against their fakes in test_iam_gcp_fakes.py).
    arch = rich_architecture(
        project_id=PROJECT,
        dataflows__ingest__resources__bigquery_tables=[],
        dataflows__ingest__resources__gcs_buckets=[],
        dataflows__report__resources__bigquery_tables=[],
    )
    plan = plan_iam(arch)
    now, deferred = bindings_to_apply(plan, "sd")
    reader_run = {(b.member_sa, b.role) for b in invoker_bindings_for(plan, "reader")}
    assert reader_run == {
        (email("writer-account"), "roles/run.invoker"),
        (email("nightly-sa"), "roles/run.invoker"),
    }
    assert set(deferred) == set(invoker_bindings_for(plan, "reader"))
    assert [b.resource_id for b in now if b.resource_type == "cloudrun_service"] == ["sd"]

    backend = clients.backend()
    effects.bind(make_ctx(arch, "iam.bind", "resources"), backend)
    run_name = f"{PROJECT_NAME}/locations/europe-west4/services/reader"
    assert run_name not in clients.store.policies  # bind leaves the reader's invokers to its deploy

    effects.apply_bindings(backend, invoker_bindings_for(plan, "reader"))
    assert sorted(clients.store.members(run_name, "roles/run.invoker")) == [
        f"serviceAccount:{email('nightly-sa')}",
        f"serviceAccount:{email('writer-account')}",
    ]


def test_scheduler_accounts_are_created_and_secret_accessors_granted(clients: Clients) -> None:
    arch = rich_architecture(project_id=PROJECT)
    effects.provision(make_ctx(arch, "iam.provision", "accounts"), clients.backend())
    assert clients.store.members(f"{PROJECT_NAME}/secrets/api-key", "roles/secretmanager.secretAccessor") == [
        f"serviceAccount:{email('writer-account')}"
    ]
    ids = {r.account_id for r in requests(clients.iam.create_service_account)}
    assert ids == {
        "sd-account",
        "writer-account",
        "reader-account",
        "reporter-account",
        "nightly-sa",
    }


# ---- visibility and the verify effect ----------------------------------------------------------
def test_bindings_visible_rereads_the_policy(clients: Clients) -> None:
    backend = clients.backend()
    b = binding(role="roles/pubsub.admin")
    assert backend.bindings_visible([b]) == [False]
    clients.store.put(PROJECT_NAME, ("roles/pubsub.admin", [f"serviceAccount:{DIRECTOR}"]))
    assert backend.bindings_visible([b]) == [True]
    clients.projects.get_iam_policy.side_effect = gexc.NotFound("no such resource")
    assert backend.bindings_visible([b]) == [False]


def test_bindings_visible_reads_one_resources_policy_once(clients: Clients) -> None:
    backend = clients.backend()
    admin, viewer = binding(role="roles/pubsub.admin"), binding(role="roles/viewer")
    clients.store.put(PROJECT_NAME, ("roles/viewer", [f"serviceAccount:{DIRECTOR}"]))
    before = clients.projects.get_iam_policy.call_count
    assert backend.bindings_visible([admin, viewer]) == [False, True]
    assert clients.projects.get_iam_policy.call_count == before + 1
    assert backend.bindings_visible([]) == []


def test_verify_accounts_checks_once_and_reports(clients: Clients, demo: Architecture) -> None:
    backend = clients.backend()
    ctx = make_ctx(demo, "iam.verify", "accounts")
    effects.provision(make_ctx(demo, "iam.provision", "accounts"), backend)
    visible = {DIRECTOR, PUBLISHER}

    def get_account(request: Any, **_: Any) -> iam_admin_v1.ServiceAccount:
        found = request["name"].rsplit("/", 1)[1]
        if found not in visible:
            raise gexc.NotFound(found)
        return iam_admin_v1.ServiceAccount(email=found)

    clients.iam.get_service_account.side_effect = get_account
    assert effects.verify(ctx, backend) == []
    assert clients.iam.get_service_account.call_count == 3  # one check each, no waiting

    visible.add(SUBSCRIBER)
    (out,) = effects.verify(ctx, backend)
    assert (out.type, out.item, out.data) == ("iam.verified", "accounts", {"checked": 4})  # 3 accounts + 1 project role


def test_verify_resources_counts_a_transient_error_as_not_yet(
    clients: Clients, demo: Architecture
) -> None:
    backend = clients.backend()
    effects.bind(make_ctx(demo, "iam.bind", "resources"), backend)
    ctx = make_ctx(demo, "iam.verify", "resources")
    (out,) = effects.verify(ctx, backend)
    assert out.data == {"checked": 11}

    clients.subscriber.get_iam_policy.side_effect = gexc.ServiceUnavailable("blip")
    assert effects.verify(ctx, backend) == []

    clients.subscriber.get_iam_policy.side_effect = gexc.PermissionDenied("no getIamPolicy")
    with pytest.raises(HandlerError) as err:
        effects.verify(ctx, backend)
    assert err.value.retryable is False


def test_verify_reads_each_resources_policy_once_per_check(clients: Clients, demo: Architecture) -> None:
    backend = clients.backend()
    effects.bind(make_ctx(demo, "iam.bind", "resources"), backend)
    now, _ = effects.bindings_to_apply(plan_iam(demo), demo.service_manager_spec.name)
    resources = {(b.resource_type, b.resource_location, b.resource_id) for b in now}
    assert len(resources) < len(now)  # the demo has resources with several bindings
    for client in clients.policy_clients():
        client.get_iam_policy.reset_mock()
    (out,) = effects.verify(make_ctx(demo, "iam.verify", "resources"), backend)
    assert out.data == {"checked": len(now)}  # every binding checked ...
    reads = sum(client.get_iam_policy.call_count for client in clients.policy_clients())
    assert reads == len(resources)  # ... with one policy read per resource


def test_verify_rejects_an_unknown_item(clients: Clients, demo: Architecture) -> None:
    with pytest.raises(HandlerError) as err:
        effects.verify(make_ctx(demo, "iam.verify", "nonsense"), clients.backend())
    assert err.value.retryable is False


def test_clients_are_created_lazily(mocker: MockerFixture) -> None:
    factory = mocker.patch("google.cloud.iam_admin_v1.IAMClient", autospec=True)
    backend = GcpIam(PROJECT)
    factory.assert_not_called()
    backend.account_visible(PUBLISHER)
    backend.account_visible(DIRECTOR)
    factory.assert_called_once_with()


def test_resources_are_named_in_the_architectures_project_not_the_daemons(clients: Clients) -> None:
    arch = rich_architecture(project_id="tenant-project")
    backend = clients.backend()  # the daemon's project is PROJECT
    effects.provision(make_ctx(arch, "iam.provision", "accounts"), backend)
    assert "projects/tenant-project/secrets/api-key" in clients.store.policies
    assert not any(name.startswith(f"{PROJECT_NAME}/") for name in clients.store.policies)
    assert backend.project == PROJECT  # the run's scope did not leak into the shared backend


def test_the_deploy_effect_grants_run_invoker_once_the_service_is_up(clients: Clients) -> None:
    arch = rich_architecture(project_id=PROJECT)
    backend = clients.backend()
    run_name = f"{PROJECT_NAME}/locations/europe-west4/services/reader"
    ctx = make_ctx(arch, "deploy", "reader")

    def not_ready(_: EffectContext) -> list[Outcome]:
        raise NotReady("rolling out", retry_after=5)

    with pytest.raises(NotReady):
        effects.deploy_then_grant_invokers(ctx, backend, not_ready)
    assert run_name not in clients.store.policies  # not up yet: nothing granted

    def up(c: EffectContext) -> list[Outcome]:
        return [Outcome("deploy.succeeded", c.item, {"url": "https://reader"})]

    for _ in range(2):  # a redriven effect grants nothing twice
        (out,) = effects.deploy_then_grant_invokers(ctx, backend, up)
        assert out.type == "deploy.succeeded"
    assert sorted(clients.store.members(run_name, "roles/run.invoker")) == [
        f"serviceAccount:{email('nightly-sa')}",
        f"serviceAccount:{email('writer-account')}",
    ]
    assert clients.store.writes == 2  # one per binding, none when redone
