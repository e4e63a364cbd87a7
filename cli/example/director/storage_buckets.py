"""Cloud Storage buckets through ``google-cloud-storage``: on Google Cloud, or locally the
``gcp-storage-emulator`` the client finds through ``STORAGE_EMULATOR_HOST``."""

from __future__ import annotations

import logging
from typing import Any

from google.api_core import exceptions
from resource_kinds import Spec

log = logging.getLogger("director")


class Buckets:
    kind, section = "gcs_bucket", "gcs_buckets"

    def __init__(self, project: str, region: str, client: Any = None) -> None:
        self.project, self.region = project, region
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:  # imported on first use: a dataflow without buckets never needs it
            from google.cloud import storage  # type: ignore[attr-defined,unused-ignore]

            self._client = storage.Client(project=self.project)
        return self._client

    def name(self, spec: Spec) -> str:
        return str(spec["name"])

    def location(self, spec: Spec) -> str:
        return str(spec.get("location") or self.region or "US")

    def ensure(self, spec: Spec) -> bool:
        bucket = self.client.bucket(spec["name"])
        if bucket.exists():
            return False
        bucket.storage_class = spec.get("storage_class") or None
        bucket.versioning_enabled = bool(spec.get("versioning_enabled"))
        bucket.labels = dict(spec.get("labels") or {})
        for rule in spec.get("lifecycle_rules") or []:
            action = (rule.get("action") or {}).get("type")
            age = (rule.get("condition") or {}).get("age_in_days")
            if action == "Delete" and age is not None:
                bucket.add_lifecycle_delete_rule(age=int(age))
        try:
            self.client.create_bucket(bucket, project=self.project, location=self.location(spec))
        except exceptions.Conflict:  # created by a concurrent delivery of the same command
            return False
        log.info("created bucket %s", spec["name"])
        return True

    def delete(self, spec: Spec) -> bool:
        """Delete the bucket and every object in it (a bucket must be empty to be deleted)."""
        bucket = self.client.bucket(spec["name"])
        try:
            for blob in self.client.list_blobs(bucket, versions=True):
                blob.delete()
            bucket.delete()
        except exceptions.NotFound:
            return False
        log.info("deleted bucket %s", spec["name"])
        return True
