"""Firestore databases and collections.

Databases: on Google Cloud through the Firestore Admin API (``CreateDatabase``/``DeleteDatabase``,
long-running operations). The Firestore emulator has no admin API: every database name exists
there, so locally ``ensure`` only reports it and ``delete`` empties it through the emulator's own
reset endpoint.

Collections: Firestore has no empty collections (a collection exists while it holds a document),
so the director writes one marker document, ``<collection>/_podium``, that makes it exist and
list; ``delete`` removes every document of the collection (the collection of an ephemeral
dataflow goes with its data).
"""

from __future__ import annotations

import logging
import os
import urllib.parse
import urllib.request
from typing import Any

from google.api_core import exceptions
from resource_kinds import Spec

log = logging.getLogger("director")
MARKER = "_podium"
DEFAULT_DATABASE = "(default)"
OPERATION_TIMEOUT_SECONDS = 300.0


def emulated() -> bool:
    return bool(os.environ.get("FIRESTORE_EMULATOR_HOST"))


class Databases:
    kind, section = "firestore_database", "firestore_databases"

    def __init__(self, project: str, region: str, admin: Any = None) -> None:
        self.project, self.region = project, region
        self._admin = admin

    @property
    def admin(self) -> Any:
        if self._admin is None:
            from google.cloud import firestore_admin_v1

            self._admin = firestore_admin_v1.FirestoreAdminClient()
        return self._admin

    def name(self, spec: Spec) -> str:
        return str(spec["name"])

    def location(self, spec: Spec) -> str:
        return str(spec.get("location_id") or self.region or "nam5")

    def path(self, spec: Spec) -> str:
        return f"projects/{self.project}/databases/{spec['name']}"

    def ensure(self, spec: Spec) -> bool:
        if emulated() or spec["name"] == DEFAULT_DATABASE:
            return False  # exists already: every name on the emulator, "(default)" in a project
        try:
            self.admin.get_database(name=self.path(spec))
            return False
        except exceptions.NotFound:
            pass
        kind = "DATASTORE_MODE" if spec.get("type") == "DATASTORE_MODE" else "FIRESTORE_NATIVE"
        database = {"location_id": self.location(spec), "type_": kind}
        try:
            self.admin.create_database(
                parent=f"projects/{self.project}", database=database, database_id=spec["name"]
            ).result(timeout=OPERATION_TIMEOUT_SECONDS)
        except exceptions.AlreadyExists:
            return False
        log.info("created Firestore database %s", spec["name"])
        return True

    def delete(self, spec: Spec) -> bool:
        if spec["name"] == DEFAULT_DATABASE:
            return False  # a project's default database is not Podium's to delete
        if emulated():
            return _empty_on_emulator(self.project, spec["name"])
        try:
            self.admin.delete_database(name=self.path(spec)).result(timeout=OPERATION_TIMEOUT_SECONDS)
        except exceptions.NotFound:
            return False
        log.info("deleted Firestore database %s", spec["name"])
        return True


class Collections:
    kind, section = "firestore_collection", "firestore_collections"

    def __init__(self, project: str, region: str, client_for: Any = None) -> None:
        self.project, self.region = project, region
        self._clients: dict[str, Any] = {}
        self._client_for = client_for

    def client(self, database: str) -> Any:
        if database not in self._clients:
            if self._client_for is not None:
                self._clients[database] = self._client_for(database)
            else:
                from google.cloud import firestore

                self._clients[database] = firestore.Client(project=self.project, database=database)
        return self._clients[database]

    def database(self, spec: Spec) -> str:
        return str(spec.get("database") or DEFAULT_DATABASE)

    def name(self, spec: Spec) -> str:
        return f"{self.database(spec)}/{spec['name']}"

    def location(self, spec: Spec) -> str:
        return self.region or "global"

    def ensure(self, spec: Spec) -> bool:
        marker = self.client(self.database(spec)).collection(spec["name"]).document(MARKER)
        try:
            marker.create({"created_by": "podium", "description": spec.get("description") or ""})
        except exceptions.AlreadyExists:
            return False
        log.info("created Firestore collection %s", self.name(spec))
        return True

    def delete(self, spec: Spec) -> bool:
        client = self.client(self.database(spec))
        collection = client.collection(spec["name"])
        if next(iter(collection.limit(1).stream()), None) is None:
            return False
        client.recursive_delete(collection)
        log.info("deleted Firestore collection %s", self.name(spec))
        return True


def _empty_on_emulator(project: str, database: str) -> bool:
    """DELETE every document of a database on the emulator (its documented reset endpoint);
    False if it held none."""
    from google.cloud import firestore

    if next(iter(firestore.Client(project=project, database=database).collections()), None) is None:
        return False
    host = os.environ["FIRESTORE_EMULATOR_HOST"]
    url = (f"http://{host}/emulator/v1/projects/{urllib.parse.quote(project, safe='')}"
           f"/databases/{urllib.parse.quote(database, safe='()')}/documents")
    with urllib.request.urlopen(urllib.request.Request(url, method="DELETE"), timeout=30) as resp:
        resp.read()
    return True
