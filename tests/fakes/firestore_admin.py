"""A stateful fake of the Firestore Admin API v1 (``google.firestore.admin.v1.FirestoreAdmin``),
limited to databases.

Served over gRPC on loopback; the real ``firestore_admin_v1.FirestoreAdminClient`` talks to it
through ``tests.fakes.grpc_server.insecure_client`` (``fake.client()`` builds one). Methods:
``CreateDatabase`` and ``DeleteDatabase`` (long-running operations whose response is the
``Database``, polled through ``google.longrunning.Operations`` like the real API), ``GetDatabase``
and ``ListDatabases``. Other FirestoreAdmin methods (indexes, fields, backups, UpdateDatabase ...)
answer UNIMPLEMENTED. ``start_firestore_admin_fake()`` starts one; ``fake.databases`` (name ->
Database) lets a test look at what exists.

Rules enforced, and where they are written (``google/firestore/admin/v1/firestore_admin.proto`` and
``database.proto`` of googleapis/googleapis; the REST reference
https://cloud.google.com/firestore/docs/reference/rest/v1/projects.databases/create carries the
same text):

* ``parent`` is "A parent name of the form projects/{project_id}"; names are
  ``projects/{project_id}/databases/{database_id}``.
* ``database_id`` (CreateDatabaseRequest): "This value should be 4-63 characters. Valid characters
  are /[a-z][0-9]-/ with first character a letter and the last a letter or a number. Must not be
  UUID-like /[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}/. "(default)" database ID is also valid if
  the database is Standard edition." Violations -> INVALID_ARGUMENT.
* A database id that exists already in the project -> ALREADY_EXISTS, worded as the API does
  ("Database already exists. Please use another database_id", the 409 quoted in
  GoogleCloudPlatform/core-solution-services#6).
* ``database`` is "Required. The Database to create."; its ``location_id`` and ``type`` are
  required in practice: ``gcloud firestore databases create`` lists ``--location`` under "REQUIRED
  FLAGS" (and always sends a type, default ``firestore-native``), and the Terraform resource
  generated from the API marks both ``locationId`` and ``type`` ``required: true``
  (GoogleCloudPlatform/magic-modules ``mmv1/products/firestore/Database.yaml``). Missing ->
  INVALID_ARGUMENT. ``OPTIMISTIC_WITH_ENTITY_GROUPS`` is "not supported for Firestore Native
  databases" -> INVALID_ARGUMENT.
* Defaults the service fills (``database.proto``): ``database_edition`` STANDARD ("This is the
  default setting if not specified"); ``concurrency_mode`` "Optimistic for Enterprise and
  Pessimistic for all other databases"; ``app_engine_integration_mode`` DISABLED ("the default
  setting for databases created with the Firestore API");
  ``point_in_time_recovery_enablement`` DISABLED (Terraform's ``default_value``);
  ``version_retention_period`` "If the PITR feature is enabled, the retention period is 7 days.
  Otherwise, the retention period is 1 hour", ``earliest_version_time`` "populated with now -
  version_retention_period"; ``delete_protection_state`` DISABLED when unspecified ("currently
  equivalent to DELETE_PROTECTION_DISABLED", Terraform); ``free_tier``: "The first (or next)
  database that is created in a project without a free tier database will be marked as eligible
  for the free tier"; ``uid`` "The system-generated UUID4"; ``create_time``/``update_time``; an
  ``etag`` "computed by the server".
* GetDatabase / DeleteDatabase of a missing database -> NOT_FOUND. DeleteDatabaseRequest.etag:
  "If an etag is provided and does not match the current etag of the database, deletion will be
  blocked and a FAILED_PRECONDITION error will be returned." Delete protection: "You cannot delete
  a database with deletion protection enabled until you disable this setting"
  (https://cloud.google.com/firestore/docs/manage-databases) -> FAILED_PRECONDITION. The delete
  operation's response is the deleted Database with ``delete_time`` set.
* ListDatabases lists "all the databases in the project" (no paging in this API).

Not modelled: ``show_deleted`` (deleted databases are forgotten, so it lists nothing more), the
location list (any non-empty ``location_id`` is taken), CMEK, tags, data-access modes (stored as
sent), a database being invisible while its create operation runs (it is stored at once; the
operation finishes after ``create_delay``), and any wait before a deleted id can be reused.
"""

from __future__ import annotations

import hashlib
import re
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.cloud import firestore_admin_v1
from google.cloud.firestore_admin_v1.types import database as database_types
from google.cloud.firestore_admin_v1.types import firestore_admin as admin_types
from google.longrunning import operations_pb2

from .grpc_server import FakeError, FakeServer, ServedFake, Unary, insecure_client

__all__ = [
    "DEFAULT_DATABASE",
    "SERVICE",
    "FirestoreAdminFake",
    "database_id_problem",
    "start_firestore_admin_fake",
]

SERVICE = "google.firestore.admin.v1.FirestoreAdmin"
DEFAULT_DATABASE = "(default)"

Database = database_types.Database
Type = Database.DatabaseType
Edition = Database.DatabaseEdition
Concurrency = Database.ConcurrencyMode
Protection = Database.DeleteProtectionState
Pitr = Database.PointInTimeRecoveryEnablement

_PARENT = re.compile(r"^projects/(?P<project>[^/]+)$")
_NAME = re.compile(r"^(?P<parent>projects/[^/]+)/databases/(?P<database>[^/]+)$")
_DATABASE_ID = re.compile(r"^[a-z][a-z0-9-]{2,61}[a-z0-9]$")  # 4-63 characters
_UUID_LIKE = re.compile(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}")
_RETENTION = {True: timedelta(days=7), False: timedelta(hours=1)}
# Fields a caller sets on create; the rest are output only (database.proto).
_INPUT_FIELDS = (
    "location_id", "type_", "concurrency_mode", "point_in_time_recovery_enablement",
    "app_engine_integration_mode", "delete_protection_state", "cmek_config", "tags",
    "database_edition", "realtime_updates_mode", "firestore_data_access_mode",
    "mongodb_compatible_data_access_mode",
)


def _invalid(message: str) -> FakeError:
    return FakeError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _copy(database: Database) -> Database:
    return Database(database)  # proto-plus copies the message it is given


def _utc_now() -> datetime:
    return datetime.now(UTC)


def database_id_problem(database_id: str, edition: int = Edition.STANDARD) -> str | None:
    """Why ``database_id`` is not a valid Firestore database id, or ``None``."""
    if database_id == DEFAULT_DATABASE:
        if edition in (Edition.DATABASE_EDITION_UNSPECIFIED, Edition.STANDARD):
            return None
        return "database_id \"(default)\" is valid only for a Standard edition database."
    if not _DATABASE_ID.match(database_id):
        return (
            f"database_id '{database_id}' should be 4-63 characters; valid characters are /[a-z][0-9]-/ "
            "with first character a letter and the last a letter or a number."
        )
    if _UUID_LIKE.fullmatch(database_id):
        return f"database_id '{database_id}' must not be UUID-like."
    return None


class FirestoreAdminFake(ServedFake):
    """Firestore databases of any project; see the module docstring for the rules.

    ``create_delay`` / ``delete_delay``: seconds before the operations finish. ``clock`` (an aware
    ``datetime`` factory) gives the write times.
    """

    SERVICE = SERVICE

    def __init__(
        self, *, create_delay: float = 0.0, delete_delay: float = 0.0,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.create_delay = create_delay
        self.delete_delay = delete_delay
        self.clock = clock
        self._lock = threading.Lock()
        self._databases: dict[str, Database] = {}

    # -- serving (ServedFake: start, stop, endpoint) --------------------------------------------

    def methods(self, server: FakeServer) -> dict[str, Unary]:
        return {
            "CreateDatabase": Unary(
                admin_types.CreateDatabaseRequest, operations_pb2.Operation,
                lambda r, _: self._create_operation(server, r),
            ),
            "GetDatabase": Unary(admin_types.GetDatabaseRequest, Database, lambda r, _: self.get_database(r.name)),
            "ListDatabases": Unary(
                admin_types.ListDatabasesRequest, admin_types.ListDatabasesResponse,
                lambda r, _: self.list_databases(r.parent),
            ),
            "DeleteDatabase": Unary(
                admin_types.DeleteDatabaseRequest, operations_pb2.Operation,
                lambda r, _: self._delete_operation(server, r),
            ),
        }

    def client(self) -> firestore_admin_v1.FirestoreAdminClient:
        """A real ``FirestoreAdminClient`` on this fake (plaintext gRPC, anonymous credentials)."""
        return insecure_client(firestore_admin_v1.FirestoreAdminClient, self.endpoint)

    # -- inspection (for tests) -------------------------------------------------------------------

    @property
    def databases(self) -> dict[str, Database]:
        """Every database by full name, as GetDatabase would return it now (copies)."""
        with self._lock:
            return {name: self._read(name) for name in sorted(self._databases)}

    # -- state (the RPCs wrap these; also callable directly) --------------------------------------

    def create_database(self, parent: str, database_id: str, database: Database | None) -> Database:
        """Validate and store a database at once (the RPC wraps this in an operation)."""
        match = _PARENT.match(parent)
        if match is None:
            raise _invalid(f"parent '{parent}' must be of the form projects/{{project_id}}.")
        if database is None:
            raise _invalid("database is required.")
        edition = int(Database.pb(database).database_edition)
        problem = database_id_problem(database_id, edition)
        if problem:
            raise _invalid(problem)
        if not database.location_id:
            raise _invalid("database.location_id is required (see https://cloud.google.com/firestore/docs/locations).")
        raw_type = Database.pb(database).type_  # proto-plus names the field type_ in its descriptor
        if raw_type not in (Type.FIRESTORE_NATIVE, Type.DATASTORE_MODE):
            raise _invalid("database.type is required: FIRESTORE_NATIVE or DATASTORE_MODE.")
        if raw_type == Type.FIRESTORE_NATIVE and database.concurrency_mode == Concurrency.OPTIMISTIC_WITH_ENTITY_GROUPS:
            raise _invalid("concurrency_mode OPTIMISTIC_WITH_ENTITY_GROUPS is not supported for Firestore Native databases.")
        stored = Database()
        for name in _INPUT_FIELDS:
            if name in database:
                setattr(stored, name, getattr(database, name))
        name = f"{parent}/databases/{database_id}"
        stored.name = name
        if not stored.database_edition:
            stored.database_edition = Edition(Edition.STANDARD)
        if not stored.concurrency_mode:
            enterprise = stored.database_edition == Edition.ENTERPRISE
            stored.concurrency_mode = Concurrency(Concurrency.OPTIMISTIC if enterprise else Concurrency.PESSIMISTIC)
        if not stored.app_engine_integration_mode:
            stored.app_engine_integration_mode = Database.AppEngineIntegrationMode(Database.AppEngineIntegrationMode.DISABLED)
        if not stored.point_in_time_recovery_enablement:
            stored.point_in_time_recovery_enablement = Pitr(Pitr.POINT_IN_TIME_RECOVERY_DISABLED)
        if not stored.delete_protection_state:
            stored.delete_protection_state = Protection(Protection.DELETE_PROTECTION_DISABLED)
        pitr = stored.point_in_time_recovery_enablement == Pitr.POINT_IN_TIME_RECOVERY_ENABLED
        stored.version_retention_period = _RETENTION[pitr]
        now = self.clock()
        stored.uid = str(uuid.uuid4())
        stored.create_time = now
        stored.update_time = now
        stored.etag = hashlib.sha1(f"{stored.uid}/{now.isoformat()}".encode()).hexdigest()
        with self._lock:
            if name in self._databases:
                raise FakeError(grpc.StatusCode.ALREADY_EXISTS, "Database already exists. Please use another database_id")
            prefix = parent + "/databases/"
            stored.free_tier = not any(
                db.free_tier for other, db in self._databases.items() if other.startswith(prefix)
            )
            self._databases[name] = stored
            return self._read(name)

    def get_database(self, name: str) -> Database:
        self._check_name(name)
        with self._lock:
            self._require(name)
            return self._read(name)

    def list_databases(self, parent: str) -> admin_types.ListDatabasesResponse:
        if _PARENT.match(parent) is None:
            raise _invalid(f"parent '{parent}' must be of the form projects/{{project_id}}.")
        prefix = parent + "/databases/"
        with self._lock:
            found = [self._read(name) for name in sorted(self._databases) if name.startswith(prefix)]
        return admin_types.ListDatabasesResponse(databases=found)

    def delete_database(self, name: str, etag: str = "") -> Database:
        """Remove a database at once and return it with ``delete_time`` (the RPC wraps this)."""
        self._check_name(name)
        with self._lock:
            current = self._require(name)
            if etag and etag != current.etag:
                raise FakeError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"The etag '{etag}' does not match the current etag of database {name}.",
                )
            if current.delete_protection_state == Protection.DELETE_PROTECTION_ENABLED:
                raise FakeError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"Database {name} has delete protection enabled; disable it "
                    "(delete_protection_state DELETE_PROTECTION_DISABLED) before deleting the database.",
                )
            snapshot = self._read(name)
            del self._databases[name]
        snapshot.delete_time = self.clock()
        return snapshot

    # -- RPCs -----------------------------------------------------------------------------------

    def _create_operation(self, server: FakeServer, request: admin_types.CreateDatabaseRequest) -> Any:
        database = request.database if "database" in request else None
        created = self.create_database(request.parent, request.database_id, database)
        delay = self.create_delay
        return server.operations.start(
            created.name, lambda elapsed: created if elapsed >= delay else None,
            admin_types.CreateDatabaseMetadata(),
        )

    def _delete_operation(self, server: FakeServer, request: admin_types.DeleteDatabaseRequest) -> Any:
        deleted = self.delete_database(request.name, request.etag)
        delay = self.delete_delay
        return server.operations.start(
            deleted.name, lambda elapsed: deleted if elapsed >= delay else None,
            admin_types.DeleteDatabaseMetadata(),
        )

    # -- internals ----------------------------------------------------------------------------

    @staticmethod
    def _check_name(name: str) -> None:
        if _NAME.match(name) is None:
            raise _invalid(f"name '{name}' must be of the form projects/{{project_id}}/databases/{{database_id}}.")

    def _require(self, name: str) -> Database:
        database = self._databases.get(name)
        if database is None:
            match = _NAME.match(name)
            assert match is not None
            raise FakeError(
                grpc.StatusCode.NOT_FOUND,
                f"Database '{match['database']}' does not exist in {match['parent']}.",
            )
        return database

    def _read(self, name: str) -> Database:
        database = _copy(self._databases[name])
        database.earliest_version_time = self.clock() - database.version_retention_period
        return database


def start_firestore_admin_fake(
    *, create_delay: float = 0.0, delete_delay: float = 0.0, clock: Callable[[], datetime] = _utc_now,
) -> FirestoreAdminFake:
    """A started fake on loopback: ``.endpoint``, ``.client()``, ``.databases``, ``.stop()``."""
    fake = FirestoreAdminFake(create_delay=create_delay, delete_delay=delete_delay, clock=clock)
    fake.start()
    return fake
