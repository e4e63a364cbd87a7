"""Whether the fakes grant an IAM binding of Podium's plan: read from the fake that holds its
resource (a policy store, the GCS emulator's bucket policy, the BigQuery fake's table policy)."""

from __future__ import annotations

from collections.abc import Mapping

from handlers.iam.base import resource_name
from machines.iam_plan import IamBinding

from .bigquery import BigQueryFake
from .iam_policy import PolicyStore
from .storage import StorageFake


def binding_granted(
    b: IamBinding,
    project: str,
    stores: Mapping[str, PolicyStore],
    storage: StorageFake,
    bigquery: BigQueryFake,
) -> bool:
    """``stores``: the policy store of each resource type a gRPC fake serves."""
    name = resource_name(b, project)
    if b.resource_type in stores:
        return b.member in stores[b.resource_type].bindings(name).get(b.role, set())
    if b.resource_type == "gcs_bucket":
        policy = storage.client(project).bucket(name.rsplit("/", 1)[1]).get_iam_policy()
        return b.member in policy.get(b.role, set())
    if b.resource_type == "bigquery_table":
        _, table_project, _, dataset, _, table = name.split("/")
        bindings = bigquery.table_policy(f"{table_project}.{dataset}.{table}").get("bindings", [])
        return any(x["role"] == b.role and b.member in x.get("members", []) for x in bindings)
    raise AssertionError(f"no fake holds {b.resource_type}")
