"""The IAM role plan: the anchor's role table, each binding with its reason and phase."""

from __future__ import annotations

from machines.architecture import Architecture, load_architecture
from machines.hydration import hydrate
from machines.iam_plan import IamBinding, IamPlan, plan_iam
from tests.architectures import RICH

PROJECT = "podium-local"
READER = "reader-account@other-project.iam.gserviceaccount.com"  # RICH's account in another project


def email(account: str, project: str = PROJECT) -> str:
    return f"{account}@{project}.iam.gserviceaccount.com"


def find(plan: IamPlan, member: str, resource_type: str, resource_id: str) -> dict[str, IamBinding]:
    return {
        b.role: b
        for b in plan.bindings
        if (b.member_sa, b.resource_type, b.resource_id) == (member, resource_type, resource_id)
    }


def test_testdata_plan(demo: Architecture) -> None:
    plan = plan_iam(demo)
    assert plan.project_id == PROJECT
    assert [(sa.service, sa.kind, sa.email) for sa in plan.service_accounts] == [
        ("director", "director", email("director-sa")),
        ("publisher", "service", email("publisher-sa")),
        ("subscriber", "service", email("subscriber-sa")),
    ]
    got = {(b.phase, b.member_sa, b.resource_type, b.resource_id, b.role) for b in plan.bindings}
    sd, pub, sub = email("director-sa"), email("publisher-sa"), email("subscriber-sa")
    assert got == {
        ("project", sd, "project", PROJECT, "roles/pubsub.editor"),
        ("resource", sd, "pubsub_topic", "director-completions", "roles/pubsub.publisher"),
        ("resource", sd, "pubsub_topic", "director-completions", "roles/pubsub.viewer"),
        ("resource", sd, "pubsub_subscription", "director-commands-sub", "roles/pubsub.subscriber"),
        ("resource", sd, "pubsub_subscription", "director-commands-sub", "roles/pubsub.viewer"),
        ("resource", sd, "pubsub_topic", "director-commands", "roles/pubsub.viewer"),
        ("resource", pub, "pubsub_topic", "tracer-topic", "roles/pubsub.publisher"),
        ("resource", pub, "pubsub_topic", "tracer-topic", "roles/pubsub.viewer"),
        ("resource", pub, "cloudrun_service", "director", "roles/run.invoker"),
        ("resource", sub, "pubsub_subscription", "tracer-sub", "roles/pubsub.subscriber"),
        ("resource", sub, "pubsub_subscription", "tracer-sub", "roles/pubsub.viewer"),
        ("resource", sub, "pubsub_topic", "tracer-topic", "roles/pubsub.viewer"),
    }


def test_reasons_are_sentences(demo: Architecture) -> None:
    plan = plan_iam(demo)
    pub = find(plan, email("publisher-sa"), "pubsub_topic", "tracer-topic")
    assert pub["roles/pubsub.publisher"].reason == "publisher produces to topic tracer-topic"
    sub = find(plan, email("subscriber-sa"), "pubsub_topic", "tracer-topic")
    assert sub["roles/pubsub.viewer"].reason == (
        "subscriber consumes subscription tracer-sub of topic tracer-topic"
    )
    invoker = find(plan, email("publisher-sa"), "cloudrun_service", "director")["roles/run.invoker"]
    assert invoker.reason == "publisher depends on director (invokes its Cloud Run service)"
    assert invoker.resource_location == "europe-west1"
    assert invoker.member == f"serviceAccount:{email('publisher-sa')}"


def test_role_table(rich: Architecture) -> None:
    plan = plan_iam(rich)
    p = "rich-project"
    writer, reader = email("writer-account", p), READER
    assert set(find(plan, writer, "gcs_bucket", "rich-archive")) == {"roles/storage.objectAdmin"}
    assert set(find(plan, reader, "gcs_bucket", "rich-archive")) == {"roles/storage.objectViewer"}
    assert set(find(plan, writer, "bigquery_table", "warehouse:facts")) == {
        "roles/bigquery.dataEditor"
    }
    assert set(find(plan, reader, "bigquery_table", "warehouse:facts")) == {
        "roles/bigquery.dataViewer"
    }
    # Firestore: project level; a collection writer gets datastore.user like a database writer
    assert set(find(plan, writer, "project", p)) == {"roles/datastore.user"}
    assert set(find(plan, reader, "project", p)) == {
        "roles/datastore.viewer",
        "roles/datastore.user",
    }
    assert find(plan, reader, "project", p)["roles/datastore.user"].reason == (
        "reader writes to Firestore collection sessions"
    )
    assert all(b.phase == "project" for b in plan.bindings if b.resource_type == "project")
    # producer with an env lookup still gets its roles (IAM does not depend on the lookup method)
    assert set(find(plan, writer, "pubsub_topic", "events.v1")) == {
        "roles/pubsub.publisher",
        "roles/pubsub.viewer",
    }
    assert set(find(plan, reader, "pubsub_subscription", "events-sub")) == {
        "roles/pubsub.subscriber",
        "roles/pubsub.viewer",
    }


def test_dependencies_and_secrets(rich: Architecture) -> None:
    plan = plan_iam(rich)
    writer = email("writer-account", "rich-project")
    invoker = find(plan, writer, "cloudrun_service", "reader")["roles/run.invoker"]
    assert invoker.resource_location == "europe-west4"  # the target's region
    secret = find(plan, writer, "secret", "api-key")["roles/secretmanager.secretAccessor"]
    assert secret.phase == "project"
    assert secret.reason == "writer reads secret api-key as $API_KEY"


def test_scheduler_jobs_get_an_account_and_invoker(rich: Architecture) -> None:
    plan = plan_iam(rich)
    (job,) = [sa for sa in plan.service_accounts if sa.kind == "scheduler_job"]
    assert (job.service, job.account, job.email) == (
        "nightly",
        "nightly-sa",
        email("nightly-sa", "rich-project"),
    )
    invoker = find(plan, job.email, "cloudrun_service", "reader")["roles/run.invoker"]
    assert invoker.reason == "scheduler job nightly invokes reader"


def test_iam_access_policy(rich: Architecture) -> None:
    plan = plan_iam(rich)
    viewer = find(plan, READER, "pubsub_topic", "events.v1")["roles/pubsub.viewer"]
    assert "iam_access_policy" in viewer.reason
    auditor = find(plan, email("auditor-account", "rich-project"), "pubsub_topic", "events.v1")
    assert set(auditor) == {"roles/pubsub.subscriber"}


def test_director_roles_follow_the_architecture(rich: Architecture, demo: Architecture) -> None:
    def director_roles(arch: Architecture) -> set[str]:
        plan = plan_iam(arch)
        sd = plan.account_of(arch.service_manager_spec.name).email
        return {
            b.role
            for b in plan.for_phase("project")
            if b.member_sa == sd and b.resource_type == "project"
        }

    # Creating resources only: no role that edits a policy (Podium applies every binding itself).
    assert director_roles(rich) == {
        "roles/pubsub.editor",
        "roles/storage.admin",
        "roles/bigquery.dataEditor",
        "roles/datastore.owner",
        "roles/cloudscheduler.admin",
    }
    assert director_roles(demo) == {"roles/pubsub.editor"}


def test_no_duplicates_and_merged_reasons(demo: Architecture) -> None:
    data = demo.to_dict()
    # the subscriber also produces to the topic it consumes from: one viewer binding, two reasons
    data["dataflows"]["tracer"]["resources"]["topics"].append(
        {"name": "echo-topic", "producer_service": {"name": "subscriber"}}
    )
    data["dataflows"]["tracer"]["resources"]["topics"][0]["producer_service"]["name"] = "subscriber"
    plan = plan_iam(Architecture.from_dict(data))
    keys = [b.key for b in plan.bindings]
    assert len(keys) == len(set(keys))
    viewer = find(plan, email("subscriber-sa"), "pubsub_topic", "tracer-topic")[
        "roles/pubsub.viewer"
    ]
    assert viewer.reason == (
        "subscriber produces to topic tracer-topic; "
        "subscriber consumes subscription tracer-sub of topic tracer-topic"
    )


def test_deterministic_order(rich: Architecture) -> None:
    plan = plan_iam(rich)
    assert plan == plan_iam(load_architecture(RICH))
    assert plan == plan_iam(hydrate(rich))
    ranks = [0 if b.phase == "project" else 1 for b in plan.bindings]
    assert ranks == sorted(ranks)
    project_part = [
        (b.member_sa, b.resource_type, b.resource_id, b.role) for b in plan.for_phase("project")
    ]
    assert project_part == sorted(project_part)


def test_shared_accounts(demo: Architecture) -> None:
    data = demo.to_dict()
    data["dataflows"]["tracer"]["services"]["subscriber"]["service_account"] = "publisher-sa"
    plan = plan_iam(Architecture.from_dict(data))
    assert len(plan.service_accounts) == 3  # one per service
    assert plan.emails() == (email("director-sa"), email("publisher-sa"))
