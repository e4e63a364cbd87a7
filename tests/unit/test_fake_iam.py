"""The IAM fakes, driven by the real client libraries over loopback gRPC.

Each test pins one documented rule of tests/fakes/iam_policy.py, iam_admin.py or
pubsub_iam.py; removing the rule from the fake makes its test fail.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from google.api_core import exceptions
from google.cloud import iam_admin_v1, pubsub_v1, resourcemanager_v3, run_v2
from google.iam.v1 import policy_pb2
from google.type import expr_pb2

from tests.fakes.grpc_server import FakeServer, insecure_client
from tests.fakes.iam_admin import IamFakes, start_iam_fakes
from tests.fakes.iam_policy import PolicyStore, valid_member
from tests.fakes.pubsub_iam import PubsubIamFake, exists_in, start_pubsub_iam

PROJECT = "proj-a"
TOPIC = f"projects/{PROJECT}/topics/orders"
SUBSCRIPTION = f"projects/{PROJECT}/subscriptions/orders-worker"
ALICE = "user:alice@example.com"
CONDITION = expr_pb2.Expr(title="until 2030", expression="request.time < timestamp('2030-01-01T00:00:00Z')")


class Clock:
    """A hand-driven monotonic clock, so eventual consistency needs no sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def pubsub_iam() -> Iterator[PubsubIamFake]:
    fake = start_pubsub_iam()
    yield fake
    fake.stop()


@pytest.fixture
def publisher(pubsub_iam: PubsubIamFake) -> pubsub_v1.PublisherClient:
    return insecure_client(pubsub_v1.PublisherClient, pubsub_iam.endpoint)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def iam_fakes(clock: Clock) -> Iterator[IamFakes]:
    fakes = IamFakes([PROJECT, "proj-b"], visibility_delay=60, clock=clock)
    yield fakes
    fakes.stop()


@pytest.fixture
def iam(iam_fakes: IamFakes) -> iam_admin_v1.IAMClient:
    return insecure_client(iam_admin_v1.IAMClient, iam_fakes.admin_endpoint)


@pytest.fixture
def projects(iam_fakes: IamFakes) -> resourcemanager_v3.ProjectsClient:
    return insecure_client(resourcemanager_v3.ProjectsClient, iam_fakes.projects_endpoint)


def _policy(*bindings: policy_pb2.Binding, etag: bytes = b"", version: int = 0) -> policy_pb2.Policy:
    return policy_pb2.Policy(bindings=bindings, etag=etag, version=version)


def _set(client, resource: str, policy: policy_pb2.Policy, **extra) -> policy_pb2.Policy:
    return client.set_iam_policy(request={"resource": resource, "policy": policy, **extra}, retry=None)


def _get(client, resource: str, version: int = 0) -> policy_pb2.Policy:
    return client.get_iam_policy(
        request={"resource": resource, "options": {"requested_policy_version": version}}, retry=None)


def _create(iam: iam_admin_v1.IAMClient, account_id: str, project: str = PROJECT) -> iam_admin_v1.ServiceAccount:
    return iam.create_service_account(name=f"projects/{project}", account_id=account_id, retry=None)


# --- PolicyStore: etag ---------------------------------------------------------------------


def test_every_successful_set_changes_the_etag(publisher, pubsub_iam):
    first = _set(publisher, TOPIC, _policy(policy_pb2.Binding(role="roles/pubsub.publisher", members=[ALICE])))
    second = _set(publisher, TOPIC, _policy(policy_pb2.Binding(role="roles/pubsub.publisher", members=[ALICE])))
    assert first.etag and second.etag and first.etag != second.etag
    assert _get(publisher, TOPIC).etag == second.etag
    assert pubsub_iam.policies.set_count(TOPIC) == 2


def test_stale_etag_is_aborted_and_nothing_changes(publisher, pubsub_iam):
    read = _get(publisher, TOPIC)
    read.bindings.add(role="roles/pubsub.publisher", members=[ALICE])
    _set(publisher, TOPIC, read)  # read-modify-write with the current etag: accepted
    read.bindings.add(role="roles/pubsub.viewer", members=["user:bob@example.com"])
    with pytest.raises(exceptions.Aborted):
        _set(publisher, TOPIC, read)  # same etag again: someone else's write came between
    assert pubsub_iam.policies.bindings(TOPIC) == {"roles/pubsub.publisher": {ALICE}}
    assert pubsub_iam.policies.set_count(TOPIC) == 1


def test_set_without_etag_overwrites_blindly(publisher, pubsub_iam):
    _set(publisher, TOPIC, _policy(policy_pb2.Binding(role="roles/pubsub.publisher", members=[ALICE])))
    _set(publisher, TOPIC, _policy(policy_pb2.Binding(role="roles/pubsub.viewer", members=[ALICE])))
    assert pubsub_iam.policies.bindings(TOPIC) == {"roles/pubsub.viewer": {ALICE}}


def test_untouched_resource_has_an_empty_policy_whose_etag_a_set_accepts(publisher, pubsub_iam):
    empty = _get(publisher, TOPIC)
    assert list(empty.bindings) == [] and empty.etag
    assert pubsub_iam.policies.resources() == []
    empty.bindings.add(role="roles/pubsub.publisher", members=[ALICE])
    _set(publisher, TOPIC, empty)
    assert pubsub_iam.policies.resources() == [TOPIC]


# --- PolicyStore: versions and conditions --------------------------------------------------


@pytest.mark.parametrize("version", [0, 1])
def test_conditional_binding_below_version_3_is_invalid(publisher, pubsub_iam, version):
    conditional = policy_pb2.Binding(role="roles/pubsub.publisher", members=[ALICE], condition=CONDITION)
    with pytest.raises(exceptions.InvalidArgument):
        _set(publisher, TOPIC, _policy(conditional, version=version))
    assert pubsub_iam.policies.set_count(TOPIC) == 0


def test_version_3_keeps_conditions_and_reads_back_as_version_3(publisher):
    conditional = policy_pb2.Binding(role="roles/pubsub.publisher", members=[ALICE], condition=CONDITION)
    written = _set(publisher, TOPIC, _policy(conditional, version=3))
    assert written.version == 3
    read = _get(publisher, TOPIC, version=3)
    assert read.version == 3
    assert read.bindings[0].condition.expression == CONDITION.expression


def test_older_reader_of_a_conditional_policy_gets_version_1_without_conditions(publisher):
    conditional = policy_pb2.Binding(role="roles/pubsub.publisher", members=[ALICE], condition=CONDITION)
    _set(publisher, TOPIC, _policy(conditional, version=3))
    read = _get(publisher, TOPIC, version=1)
    assert read.version == 1
    assert not read.bindings[0].HasField("condition")
    assert read.bindings[0].role.startswith("roles/pubsub.publisher_withcond_")


def test_unconditional_policy_is_version_1_even_when_3_is_asked(publisher):
    _set(publisher, TOPIC, _policy(policy_pb2.Binding(role="roles/pubsub.publisher", members=[ALICE]), version=3))
    assert _get(publisher, TOPIC, version=3).version == 1


def test_version_1_write_with_etag_over_a_conditional_policy_is_invalid(publisher, pubsub_iam):
    conditional = policy_pb2.Binding(role="roles/pubsub.publisher", members=[ALICE], condition=CONDITION)
    _set(publisher, TOPIC, _policy(conditional, version=3))
    read = _get(publisher, TOPIC, version=1)
    del read.bindings[:]
    with pytest.raises(exceptions.InvalidArgument):
        _set(publisher, TOPIC, read)  # carries the etag -> version check applies
    read.etag = b""
    _set(publisher, TOPIC, read)  # no etag: the check is skipped and conditions are lost
    assert pubsub_iam.policies.bindings(TOPIC) == {}


def test_invalid_versions_are_rejected(publisher):
    with pytest.raises(exceptions.InvalidArgument):
        _set(publisher, TOPIC, _policy(policy_pb2.Binding(role="roles/pubsub.publisher", members=[ALICE]), version=2))
    with pytest.raises(exceptions.InvalidArgument):
        _get(publisher, TOPIC, version=2)


# --- PolicyStore: members, roles, bindings -------------------------------------------------


VALID_MEMBERS = [
    "user:alice@example.com", "serviceAccount:runner@proj-a.iam.gserviceaccount.com",
    "serviceAccount:proj-a.svc.id.goog[default/runner]", "group:admins@example.com", "domain:example.com",
    "allUsers", "allAuthenticatedUsers",
    "principal://iam.googleapis.com/locations/global/workforcePools/pool/subject/alice",
    "principalSet://iam.googleapis.com/locations/global/workforcePools/pool/*",
    "deleted:serviceAccount:old@proj-a.iam.gserviceaccount.com?uid=123",
]
INVALID_MEMBERS = ["alice@example.com", "user:", "user:alice", "robot:alice@example.com", "allusers",
                   "serviceAccount:", "domain:", "group:admins", "principal://", "deleted:nobody"]


@pytest.mark.parametrize("member", VALID_MEMBERS)
def test_documented_member_forms_are_accepted(publisher, pubsub_iam, member):
    _set(publisher, TOPIC, _policy(policy_pb2.Binding(role="roles/pubsub.subscriber", members=[member])))
    assert pubsub_iam.policies.bindings(TOPIC) == {"roles/pubsub.subscriber": {member}}


@pytest.mark.parametrize("member", INVALID_MEMBERS)
def test_other_member_forms_are_invalid(publisher, pubsub_iam, member):
    with pytest.raises(exceptions.InvalidArgument):
        _set(publisher, TOPIC, _policy(policy_pb2.Binding(role="roles/pubsub.subscriber", members=[ALICE, member])))
    assert pubsub_iam.policies.set_count(TOPIC) == 0
    assert not valid_member(member)


@pytest.mark.parametrize("role", ["", "viewer", "roles/", "roles/a b"])
def test_malformed_role_is_invalid(publisher, role):
    with pytest.raises(exceptions.InvalidArgument):
        _set(publisher, TOPIC, _policy(policy_pb2.Binding(role=role, members=[ALICE])))


def test_duplicates_collapse_and_empty_bindings_drop(publisher):
    written = _set(publisher, TOPIC, _policy(
        policy_pb2.Binding(role="roles/pubsub.publisher", members=[ALICE, ALICE]),
        policy_pb2.Binding(role="roles/pubsub.publisher", members=["group:g@example.com", ALICE]),
        policy_pb2.Binding(role="roles/pubsub.viewer", members=[]),
    ))
    assert [(b.role, list(b.members)) for b in written.bindings] == [
        ("roles/pubsub.publisher", [ALICE, "group:g@example.com"])]


def test_audit_configs_change_only_when_the_update_mask_names_them(publisher, pubsub_iam):
    policy = _policy(policy_pb2.Binding(role="roles/pubsub.viewer", members=[ALICE]))
    policy.audit_configs.add(service="pubsub.googleapis.com")
    _set(publisher, TOPIC, policy)  # default mask "bindings, etag"
    assert list(pubsub_iam.policies.policy(TOPIC).audit_configs) == []
    _set(publisher, TOPIC, policy, update_mask={"paths": ["bindings", "etag", "audit_configs"]})
    assert [c.service for c in pubsub_iam.policies.policy(TOPIC).audit_configs] == ["pubsub.googleapis.com"]


def test_test_iam_permissions_rejects_wildcards_and_reports_denials(publisher, pubsub_iam):
    def held(*permissions: str) -> list[str]:
        answer = publisher.test_iam_permissions(request={"resource": TOPIC, "permissions": permissions}, retry=None)
        return list(answer.permissions)

    assert held("pubsub.topics.publish", "pubsub.topics.get") == ["pubsub.topics.publish", "pubsub.topics.get"]
    pubsub_iam.policies.deny("pubsub.topics.publish")
    assert held("pubsub.topics.publish", "pubsub.topics.get") == ["pubsub.topics.get"]
    with pytest.raises(exceptions.InvalidArgument):
        held("pubsub.topics.*")


def test_any_fake_can_host_the_policy_methods_under_its_own_service():
    names = {"projects/p/locations/europe-west1/services/api"}
    store = PolicyStore(names.__contains__)
    server = FakeServer()
    server.add("google.cloud.run.v2.Services", store.methods())
    try:
        run = insecure_client(run_v2.ServicesClient, server.start())
        service = next(iter(names))
        _set(run, service, _policy(policy_pb2.Binding(role="roles/run.invoker", members=["allUsers"])))
        assert store.bindings(service) == {"roles/run.invoker": {"allUsers"}}
        with pytest.raises(exceptions.NotFound):
            _get(run, "projects/p/locations/europe-west1/services/missing")
    finally:
        server.stop()


# --- Pub/Sub IAM fake ----------------------------------------------------------------------


def test_topic_and_subscription_policies_through_the_real_clients(pubsub_iam):
    publisher = insecure_client(pubsub_v1.PublisherClient, pubsub_iam.endpoint)
    subscriber = insecure_client(pubsub_v1.SubscriberClient, pubsub_iam.endpoint)
    _set(publisher, TOPIC, _policy(policy_pb2.Binding(role="roles/pubsub.publisher", members=[ALICE])))
    _set(subscriber, SUBSCRIPTION, _policy(policy_pb2.Binding(role="roles/pubsub.subscriber", members=[ALICE])))
    assert pubsub_iam.policies.resources() == [SUBSCRIPTION, TOPIC]
    assert list(_get(subscriber, SUBSCRIPTION).bindings[0].members) == [ALICE]


@pytest.mark.parametrize("name", ["projects/p/snapshots/s", "projects/p/topics/", "topics/t", "projects/p/topics/t/x"])
def test_names_other_than_topics_and_subscriptions_are_invalid(publisher, name):
    with pytest.raises(exceptions.InvalidArgument):
        _get(publisher, name)


def test_missing_topic_is_not_found_when_the_fake_knows_what_exists():
    fake = start_pubsub_iam(exists={TOPIC}.__contains__)
    try:
        publisher = insecure_client(pubsub_v1.PublisherClient, fake.endpoint)
        _get(publisher, TOPIC)
        with pytest.raises(exceptions.NotFound):
            _get(publisher, f"projects/{PROJECT}/topics/other")
        with pytest.raises(exceptions.NotFound):
            _set(publisher, SUBSCRIPTION, _policy())
    finally:
        fake.stop()


def test_the_fake_is_reached_even_when_an_emulator_host_is_exported(pubsub_iam, monkeypatch):
    # `make test` exports PUBSUB_EMULATOR_HOST; the explicit transport must still win.
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:9")
    publisher = insecure_client(pubsub_v1.PublisherClient, pubsub_iam.endpoint)
    _set(publisher, TOPIC, _policy(policy_pb2.Binding(role="roles/pubsub.publisher", members=[ALICE])))
    assert pubsub_iam.policies.set_count(TOPIC) == 1


def test_exists_in_asks_pubsub_for_topics_and_subscriptions():
    class Pubsub:
        def get_topic(self, request):
            if request["topic"] != TOPIC:
                raise exceptions.NotFound("no topic")

        def get_subscription(self, request):
            raise exceptions.NotFound("no subscription")

    exists = exists_in(Pubsub(), Pubsub())
    assert exists(TOPIC)
    assert not exists(f"projects/{PROJECT}/topics/other")
    assert not exists(SUBSCRIPTION)


# --- IAM Admin: service accounts -----------------------------------------------------------


@pytest.mark.parametrize("account_id", ["abcde", "a" * 31, "Runner-1", "1runner", "runner-", "run_ner1", "run.ner1", ""])
def test_account_id_outside_the_documented_form_is_invalid(iam, iam_fakes, account_id):
    with pytest.raises(exceptions.InvalidArgument):
        _create(iam, account_id)
    assert iam_fakes.accounts(PROJECT) == {}


@pytest.mark.parametrize("account_id", ["abcdef", "a" * 30, "run-n3r"])
def test_account_id_inside_the_documented_form_is_accepted(iam, iam_fakes, account_id):
    created = _create(iam, account_id)
    email = f"{account_id}@{PROJECT}.iam.gserviceaccount.com"
    assert created.email == email
    assert created.name == f"projects/{PROJECT}/serviceAccounts/{email}"
    assert created.project_id == PROJECT and created.unique_id.isdigit()
    assert list(iam_fakes.accounts(PROJECT)) == [email]


def test_second_create_of_an_id_already_exists_even_before_it_is_visible(iam, iam_fakes):
    _create(iam, "runner-1")
    with pytest.raises(exceptions.AlreadyExists):
        _create(iam, "runner-1")
    other = _create(iam, "runner-1", project="proj-b")  # unique within a project only
    assert other.unique_id != iam_fakes.accounts(PROJECT)["runner-1@proj-a.iam.gserviceaccount.com"].unique_id


def test_only_display_name_and_description_are_taken_and_limited(iam):
    created = iam.create_service_account(
        name=f"projects/{PROJECT}", account_id="runner-1",
        service_account={"display_name": "Runner", "description": "runs", "email": "evil@example.com"}, retry=None)
    assert (created.display_name, created.description) == ("Runner", "runs")
    assert created.email == "runner-1@proj-a.iam.gserviceaccount.com"
    with pytest.raises(exceptions.InvalidArgument):
        iam.create_service_account(name=f"projects/{PROJECT}", account_id="runner-2",
                                   service_account={"display_name": "x" * 101}, retry=None)


def test_create_in_an_unknown_project_is_not_found(iam):
    with pytest.raises(exceptions.NotFound):
        _create(iam, "runner-1", project="nowhere")


def test_new_account_is_invisible_to_reads_until_the_delay_passes(iam, projects, iam_fakes, clock):
    created = _create(iam, "runner-1")
    grant = _policy(policy_pb2.Binding(role="roles/run.invoker", members=[f"serviceAccount:{created.email}"]))
    with pytest.raises(exceptions.NotFound):
        iam.get_service_account(name=created.name, retry=None)
    assert list(iam.list_service_accounts(name=f"projects/{PROJECT}", retry=None)) == []
    with pytest.raises(exceptions.NotFound):
        _get(iam, created.name)
    with pytest.raises(exceptions.NotFound):
        _set(iam, created.name, _policy())
    with pytest.raises(exceptions.InvalidArgument):  # "Service account ... does not exist."
        _set(projects, f"projects/{PROJECT}", grant)

    clock.now += 60
    assert iam.get_service_account(name=created.name, retry=None).unique_id == created.unique_id
    assert [a.email for a in iam.list_service_accounts(name=f"projects/{PROJECT}", retry=None)] == [created.email]
    _get(iam, created.name)
    _set(projects, f"projects/{PROJECT}", grant)
    assert iam_fakes.project_policies.bindings(f"projects/{PROJECT}") == {
        "roles/run.invoker": {f"serviceAccount:{created.email}"}}


def test_visibility_delay_runs_on_the_real_clock():
    fakes = start_iam_fakes([PROJECT], visibility_delay=0.2)
    try:
        iam = insecure_client(iam_admin_v1.IAMClient, fakes.admin_endpoint)
        created = _create(iam, "runner-1")
        with pytest.raises(exceptions.NotFound):
            iam.get_service_account(name=created.name, retry=None)
        time.sleep(0.25)
        assert iam.get_service_account(name=created.name, retry=None).email == created.email
    finally:
        fakes.stop()


def test_default_visibility_delay_is_zero():
    fakes = start_iam_fakes([PROJECT])
    try:
        iam = insecure_client(iam_admin_v1.IAMClient, fakes.admin_endpoint)
        created = _create(iam, "runner-1")
        assert iam.get_service_account(name=created.name, retry=None).email == created.email
    finally:
        fakes.stop()


def test_accounts_are_named_by_email_or_unique_id_under_a_project_or_dash(iam, clock):
    created = _create(iam, "runner-1")
    clock.now += 60
    for name in (f"projects/{PROJECT}/serviceAccounts/{created.email}",
                 f"projects/-/serviceAccounts/{created.email}",
                 f"projects/{PROJECT}/serviceAccounts/{created.unique_id}",
                 f"projects/-/serviceAccounts/{created.unique_id}"):
        assert iam.get_service_account(name=name, retry=None).name == created.name
    with pytest.raises(exceptions.NotFound):
        iam.get_service_account(name=f"projects/proj-b/serviceAccounts/{created.email}", retry=None)
    with pytest.raises(exceptions.NotFound):
        iam.get_service_account(name=f"projects/{PROJECT}/serviceAccounts/ghost@{PROJECT}.iam.gserviceaccount.com",
                                retry=None)
    # Documented: with "-", a missing account is a 403, not a 404.
    with pytest.raises(exceptions.PermissionDenied):
        iam.get_service_account(name=f"projects/-/serviceAccounts/ghost@{PROJECT}.iam.gserviceaccount.com",
                                retry=None)


def test_list_pages_through_visible_accounts_of_one_project(iam, clock):
    for account_id in ("runner-3", "runner-1", "runner-2"):
        _create(iam, account_id)
    _create(iam, "runner-9", project="proj-b")
    clock.now += 60
    pager = iam.list_service_accounts(request={"name": f"projects/{PROJECT}", "page_size": 2}, retry=None)
    pages = list(pager.pages)
    assert [len(page.accounts) for page in pages] == [2, 1]
    assert [a.email.split("@")[0] for page in pages for a in page.accounts] == ["runner-1", "runner-2", "runner-3"]


def test_delete_removes_the_account_and_marks_it_deleted_in_policies(iam, projects, iam_fakes, clock):
    created = _create(iam, "runner-1")
    clock.now += 60
    member = f"serviceAccount:{created.email}"
    _set(projects, f"projects/{PROJECT}", _policy(policy_pb2.Binding(role="roles/run.invoker", members=[member])))
    _set(iam, created.name, _policy(policy_pb2.Binding(role="roles/iam.serviceAccountUser", members=[ALICE])))

    iam.delete_service_account(name=f"projects/-/serviceAccounts/{created.email}", retry=None)

    assert iam_fakes.accounts(PROJECT) == {}
    with pytest.raises(exceptions.NotFound):
        iam.get_service_account(name=created.name, retry=None)
    with pytest.raises(exceptions.NotFound):
        iam.delete_service_account(name=created.name, retry=None)
    assert iam_fakes.project_policies.bindings(f"projects/{PROJECT}") == {
        "roles/run.invoker": {f"deleted:{member}?uid={created.unique_id}"}}
    assert created.name not in iam_fakes.account_policies.resources()
    again = _create(iam, "runner-1")  # the id is free again, with a new unique id
    assert again.unique_id != created.unique_id


def test_account_policy_grants_check_accounts_too(iam, clock):
    created = _create(iam, "runner-1")
    clock.now += 60
    ghost = f"serviceAccount:ghost-1@{PROJECT}.iam.gserviceaccount.com"
    with pytest.raises(exceptions.InvalidArgument):
        _set(iam, created.name, _policy(policy_pb2.Binding(role="roles/iam.serviceAccountUser", members=[ghost])))


def test_account_policy_is_one_policy_whatever_the_name_form(iam, iam_fakes, clock):
    created = _create(iam, "runner-1")
    clock.now += 60
    grant = policy_pb2.Binding(role="roles/iam.serviceAccountTokenCreator", members=[ALICE])
    _set(iam, f"projects/-/serviceAccounts/{created.unique_id}", _policy(grant))
    assert list(_get(iam, created.name).bindings) == [grant]
    assert iam_fakes.account_policies.resources() == [created.name]
    assert iam_fakes.account_policies.bindings(created.name) == {grant.role: {ALICE}}


# --- Resource Manager: project policies ----------------------------------------------------


def test_project_policy_by_id_or_number(projects, iam_fakes):
    project = projects.get_project(name=f"projects/{PROJECT}", retry=None)
    assert project.project_id == PROJECT and project.name == f"projects/{iam_fakes.projects.number(PROJECT)}"
    _set(projects, project.name, _policy(policy_pb2.Binding(role="roles/viewer", members=[ALICE])))
    assert iam_fakes.project_policies.bindings(f"projects/{PROJECT}") == {"roles/viewer": {ALICE}}
    assert list(_get(projects, f"projects/{PROJECT}").bindings[0].members) == [ALICE]


def test_unknown_project_is_permission_denied(projects):
    for call in (lambda: _get(projects, "projects/nowhere"),
                 lambda: _set(projects, "projects/nowhere", _policy()),
                 lambda: projects.get_project(name="projects/nowhere", retry=None)):
        with pytest.raises(exceptions.PermissionDenied):
            call()


def test_project_grants_check_only_accounts_of_served_projects(projects, iam_fakes):
    google_managed = "serviceAccount:service-1@gcp-sa-pubsub.iam.gserviceaccount.com"
    _set(projects, f"projects/{PROJECT}", _policy(policy_pb2.Binding(role="roles/viewer", members=[google_managed])))
    ghost = f"serviceAccount:ghost-1@{PROJECT}.iam.gserviceaccount.com"
    with pytest.raises(exceptions.InvalidArgument):
        _set(projects, f"projects/{PROJECT}", _policy(policy_pb2.Binding(role="roles/viewer", members=[ghost])))
    assert iam_fakes.project_policies.set_count(f"projects/{PROJECT}") == 1


def test_project_policy_follows_the_etag_rule(projects):
    read = _get(projects, f"projects/{PROJECT}")
    read.bindings.add(role="roles/viewer", members=[ALICE])
    _set(projects, f"projects/{PROJECT}", read)
    with pytest.raises(exceptions.Aborted):
        _set(projects, f"projects/{PROJECT}", read)
