"""A stateful HTTP fake of the BigQuery v2 REST API: datasets, tables and table IAM policies.

``start_bigquery_fake()`` serves ``/bigquery/v2/...`` on 127.0.0.1 (ephemeral port) from a
stdlib ``ThreadingHTTPServer``; ``.client(project)`` is a real ``google.cloud.bigquery.Client``
with anonymous credentials and ``client_options={"api_endpoint": endpoint}``. Methods the fake
does not implement answer 501 (``MethodNotImplemented``) rather than something plausible.

Rules, with where they are documented:

* Errors use the JSON error body the API answers, so ``google.api_core.exceptions`` picks the
  class from the HTTP code: ``{"error": {"code", "message", "status", "errors": [{"message",
  "domain": "global", "reason"}]}}`` -- https://cloud.google.com/bigquery/docs/errors
  ("Error response format": ``code``, ``message``, ``errors[].domain/reason/message``) and
  https://cloud.google.com/apis/design/errors (``status`` is the ``google.rpc.Code`` name).
  Reasons as in the error table there: ``invalid`` 400, ``notFound`` 404, ``duplicate`` 409;
  none of them is one the client's DEFAULT_RETRY retries.
* Dataset IDs: "The ID must contain only letters (a-z, A-Z), numbers (0-9), or underscores
  (_). The maximum length is 1,024 characters."
  (https://cloud.google.com/bigquery/docs/reference/rest/v2/datasets#DatasetReference).
* Table IDs: "The ID can contain Unicode characters in category L (letter), M (mark), N
  (number), Pc (connector, including underscore), Pd (dash), and Zs (space) ... The maximum
  length is 1,024 characters" (https://cloud.google.com/bigquery/docs/reference/rest/v2/TableReference).
  Older revisions of that page said letters, digits and underscores only; the fake follows the
  current text, so ``events-2024`` is a valid table ID but ``a.b`` is not. Partition
  decorators (``t$20240101``) are rejected on create.
* datasets.insert / tables.insert of an existing ID -> 409 ``duplicate`` ("Already Exists:
  Dataset p:d"); get/patch/delete of a missing one -> 404 ``notFound`` ("Not found: ...");
  tables.insert into a missing dataset -> 404. The reference in the body must name the
  project/dataset of the URL.
* datasets.delete: "Before you can delete a dataset, you must delete all its tables, either
  manually or by specifying deleteContents"
  (https://cloud.google.com/bigquery/docs/reference/rest/v2/datasets/delete) -> 400
  ``resourceInUse`` "Dataset p:d is still in use" (the answer the real API gives, as recorded
  in bigrquery's test snapshots).
* Dataset ``etag`` / datasets.patch: the client sends the dataset's etag as ``If-Match``
  ("the update will only succeed if the dataset on the server has the same ETag",
  ``Client.update_dataset``); a stale one -> 412 (PreconditionFailed). The body's reason
  ``conditionNotMet`` is the Google JSON-API convention for If-Match failures; BigQuery's
  pages do not spell out this body.
  Every successful patch yields a new etag and ``lastModifiedTime``. Patch replaces the
  top-level fields it carries ("only replaces fields that are provided", datasets/patch).
* ``access`` entries (https://cloud.google.com/bigquery/docs/reference/rest/v2/datasets#Dataset.FIELDS.access):
  each names exactly one of ``userByEmail``, ``groupByEmail``, ``domain``, ``specialGroup``,
  ``iamMember`` ("[Pick one]"; ``view``/``routine``/``dataset`` entries are accepted verbatim,
  "The role field is not required when this field is set"). ``role`` is required otherwise and
  must be ``READER``/``WRITER``/``OWNER`` or an IAM role ``roles/...`` ("An IAM role ID that
  should be granted ... The following legacy mappings will be applied: OWNER
  roles/bigquery.dataOwner WRITER roles/bigquery.dataEditor READER roles/bigquery.dataViewer").
  ``specialGroup`` is one of projectOwners, projectReaders, projectWriters,
  allAuthenticatedUsers; emails, domains and ``iamMember`` are checked with
  ``iam_policy.valid_member`` (``user:``/``group:``/``domain:`` forms). Entries are stored as
  sent; the real API "will return only the legacy format" for the three mapped roles --
  pass ``legacy_roles=True`` to emulate that rewrite. "If unspecified at dataset creation
  time, BigQuery adds default dataset access" for projectReaders/projectWriters/projectOwners
  (and the creator, here ``creator`` if given).
* Table ``schema``: every field needs a ``name`` and a ``type`` among the documented ones
  (STRING, BYTES, INTEGER/INT64, FLOAT/FLOAT64, NUMERIC, BIGNUMERIC, BOOLEAN/BOOL, TIMESTAMP,
  DATE, TIME, DATETIME, GEOGRAPHY, RECORD/STRUCT, JSON, INTERVAL, RANGE), ``mode`` among
  NULLABLE/REQUIRED/REPEATED, RECORD fields need sub-``fields``, and names are unique
  case-insensitively within a record (https://cloud.google.com/bigquery/docs/reference/rest/v2/tables#TableFieldSchema).
* tables.getIamPolicy / setIamPolicy / testIamPermissions
  (https://cloud.google.com/bigquery/docs/reference/rest/v2/tables/getIamPolicy: "Returns an
  empty policy if the resource exists and does not have a policy set") reuse
  ``iam_policy.PolicyStore``: its etag, version, condition, member and update-mask rules,
  with gRPC codes mapped to HTTP by google.rpc.Code's documented "HTTP Mapping" -- a stale
  etag is ABORTED, "HTTP Mapping: 409 Conflict", so ``google.api_core.exceptions.Conflict``
  with ``status`` ``ABORTED`` in the body. Deleting a table drops its policy.

Not modelled: authentication/authorization, jobs and queries, table data, table patch/update,
listing, dataset ``defaultTableExpirationMs`` effects, the rule that a dataset keeps at least
one OWNER, and access-policy versions/conditions on dataset access entries.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import itertools
import json
import re
import threading
import time
import unicodedata
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import grpc
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery  # type: ignore[attr-defined,unused-ignore]
from google.iam.v1 import iam_policy_pb2
from google.protobuf import json_format

from .grpc_server import FakeError
from .iam_policy import PolicyStore, valid_member

_HOST = "127.0.0.1"
_PREFIX = "/bigquery/v2"

_DATASET_ID = re.compile(r"^[A-Za-z0-9_]{1,1024}$")
_TABLE_ID_EXTRA_CATEGORIES = ("Pc", "Pd", "Zs")  # besides every L*, M* and N* category
_LEGACY_ROLES = ("READER", "WRITER", "OWNER")
_IAM_ROLE = re.compile(r"^roles/[A-Za-z0-9_.]+$")
_LEGACY_MAPPING = {
    "roles/bigquery.dataOwner": "OWNER",
    "roles/bigquery.dataEditor": "WRITER",
    "roles/bigquery.dataViewer": "READER",
}
_SPECIAL_GROUPS = ("projectOwners", "projectReaders", "projectWriters", "allAuthenticatedUsers")
_MEMBER_KINDS = ("userByEmail", "groupByEmail", "domain", "specialGroup", "iamMember")
_ROLELESS_KINDS = ("view", "routine", "dataset")
_FIELD_TYPES = frozenset({
    "STRING", "BYTES", "INTEGER", "INT64", "FLOAT", "FLOAT64", "NUMERIC", "BIGNUMERIC",
    "BOOLEAN", "BOOL", "TIMESTAMP", "DATE", "TIME", "DATETIME", "GEOGRAPHY", "RECORD", "STRUCT",
    "JSON", "INTERVAL", "RANGE",
})
_FIELD_MODES = ("NULLABLE", "REQUIRED", "REPEATED")
# Output-only Dataset/Table fields: ignored when a client sends them back.
_DATASET_OUTPUT_ONLY = frozenset({"kind", "id", "selfLink", "etag", "creationTime",
                                  "lastModifiedTime", "datasetReference", "type"})
_TABLE_OUTPUT_ONLY = frozenset({"kind", "id", "selfLink", "etag", "creationTime",
                                "lastModifiedTime", "tableReference", "type", "numBytes",
                                "numLongTermBytes", "numRows", "location"})

# google.rpc.Code "HTTP Mapping" (https://cloud.google.com/apis/design/errors); the reasons are
# BigQuery's where its error table has one.
_GRPC_TO_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "failedPrecondition"),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "unauthorized"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "accessDenied"),
    grpc.StatusCode.NOT_FOUND: (404, "notFound"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "duplicate"),
    grpc.StatusCode.ABORTED: (409, "aborted"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rateLimitExceeded"),
    grpc.StatusCode.UNIMPLEMENTED: (501, "notImplemented"),
    grpc.StatusCode.INTERNAL: (500, "internalError"),
    grpc.StatusCode.UNAVAILABLE: (503, "backendError"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout"),
}


class ApiError(Exception):
    """An error answer: HTTP code, ``google.rpc.Code`` name, BigQuery ``reason``, message."""

    def __init__(self, code: int, status: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.status, self.reason, self.message = code, status, reason, message

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "status": self.status,
                          "errors": [{"message": self.message, "domain": "global",
                                      "reason": self.reason}]}}


def _invalid(message: str) -> ApiError:
    return ApiError(400, "INVALID_ARGUMENT", "invalid", message)


def _not_found(what: str) -> ApiError:
    return ApiError(404, "NOT_FOUND", "notFound", f"Not found: {what}")


def _from_fake_error(error: FakeError) -> ApiError:
    http, reason = _GRPC_TO_HTTP.get(error.code, (500, "internalError"))
    return ApiError(http, error.code.name, reason, error.message)


def _check_dataset_id(dataset_id: str) -> None:
    if not _DATASET_ID.match(dataset_id):
        raise _invalid(f'Invalid dataset ID "{dataset_id}". Dataset IDs must be alphanumeric '
                       "(plus underscores) and must be at most 1024 characters long.")


def _check_table_id(table_id: str) -> None:
    categories = [unicodedata.category(ch) for ch in table_id]
    ok = all(cat[0] in "LMN" or cat in _TABLE_ID_EXTRA_CATEGORIES for cat in categories)
    if not ok or not 0 < len(table_id) <= 1024:
        raise _invalid(f"Invalid table ID \"{table_id}\". Table IDs must contain only letters, "
                       "marks, numbers, connectors, dashes or spaces, at most 1024 characters.")


def _check_schema(fields: Any, where: str = "schema") -> None:
    if not isinstance(fields, list):
        raise _invalid(f"{where}.fields must be a list.")
    seen: set[str] = set()
    for field in fields:
        if not isinstance(field, dict) or not field.get("name"):
            raise _invalid(f"A field in {where} has no name.")
        name = str(field["name"])
        if name.lower() in seen:
            raise _invalid(f"Field {name} already exists in {where}.")
        seen.add(name.lower())
        kind = str(field.get("type", "")).upper()
        if kind not in _FIELD_TYPES:
            raise _invalid(f"Invalid field type {field.get('type')!r} for field {name}.")
        if field.get("mode") is not None and str(field["mode"]).upper() not in _FIELD_MODES:
            raise _invalid(f"Invalid field mode {field['mode']!r} for field {name}.")
        if kind in ("RECORD", "STRUCT"):
            if not field.get("fields"):
                raise _invalid(f"Field {name} is type RECORD but has no schema.")
            _check_schema(field["fields"], f"{where}.{name}")


def _checked_access(entries: Any, legacy_roles: bool) -> list[dict[str, Any]]:
    """The access entries to store, or ApiError 400 for one the API rejects."""
    if not isinstance(entries, list):
        raise _invalid("Dataset access must be a list of access entries.")
    checked = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise _invalid("Each dataset access entry must be an object.")
        kinds = [k for k in (*_MEMBER_KINDS, *_ROLELESS_KINDS) if entry.get(k) is not None]
        if len(kinds) != 1:
            raise _invalid("Exactly one of userByEmail, groupByEmail, domain, specialGroup, "
                           f"iamMember, view, routine or dataset must be set; got {kinds}.")
        kind = kinds[0]
        stored = copy.deepcopy(entry)
        if kind in _ROLELESS_KINDS:
            checked.append(stored)
            continue
        role = entry.get("role")
        if not isinstance(role, str) or not (role in _LEGACY_ROLES or _IAM_ROLE.match(role)):
            raise _invalid(f"Invalid dataset access role {role!r}: use READER, WRITER, OWNER "
                           "or an IAM role roles/....")
        value = entry[kind]
        if not isinstance(value, str):
            raise _invalid(f"Access entry {kind} must be a string.")
        member = {"userByEmail": f"user:{value}", "groupByEmail": f"group:{value}",
                  "domain": f"domain:{value}", "iamMember": value}.get(kind)
        if kind == "specialGroup":
            if value not in _SPECIAL_GROUPS:
                raise _invalid(f"Invalid special group {value!r}.")
        elif member is None or not valid_member(member):
            raise _invalid(f"Invalid {kind} {value!r} in dataset access entry.")
        if legacy_roles and role in _LEGACY_MAPPING:
            stored["role"] = _LEGACY_MAPPING[role]
        checked.append(stored)
    return checked


def _now_ms() -> str:
    return str(int(time.time() * 1000))


def _ref(ref: Any, parts: int) -> tuple[str, ...]:
    """("p", "d") / ("p", "d", "t") from a "p.d[.t]" string or a client reference object."""
    if isinstance(ref, str):
        split = tuple(ref.split(".", parts - 1))
    elif parts == 2:
        split = (ref.project, ref.dataset_id)
    else:
        split = (ref.project, ref.dataset_id, ref.table_id)
    if len(split) != parts:
        raise ValueError(f"expected a {'project.dataset' if parts == 2 else 'project.dataset.table'}"
                         f" reference, got {ref!r}")
    return split


class _State:
    """Datasets and tables by reference; one lock guards everything."""

    def __init__(self, endpoint: str, legacy_roles: bool, creator: str | None) -> None:
        self.endpoint = endpoint
        self.legacy_roles = legacy_roles
        self.creator = creator
        self.lock = threading.Lock()
        self.datasets: dict[tuple[str, str], dict[str, Any]] = {}
        self.tables: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._etags = itertools.count(1)
        self.policies = PolicyStore(exists=self._table_exists)

    # --- helpers --------------------------------------------------------------------------

    def _table_exists(self, resource: str) -> bool:
        match = re.fullmatch(r"projects/([^/]+)/datasets/([^/]+)/tables/([^/]+)", resource)
        return match is not None and (match[1], match[2], match[3]) in self.tables

    def new_etag(self, key: str) -> str:
        digest = hashlib.md5(f"{key}#{next(self._etags)}".encode()).digest()
        return base64.b64encode(digest).decode()

    def dataset(self, project: str, dataset_id: str) -> dict[str, Any]:
        _check_dataset_id(dataset_id)
        found = self.datasets.get((project, dataset_id))
        if found is None:
            raise _not_found(f"Dataset {project}:{dataset_id}")
        return found

    def table(self, project: str, dataset_id: str, table_id: str) -> dict[str, Any]:
        self.dataset(project, dataset_id)
        _check_table_id(table_id)
        found = self.tables.get((project, dataset_id, table_id))
        if found is None:
            raise _not_found(f"Table {project}:{dataset_id}.{table_id}")
        return found

    # --- datasets -------------------------------------------------------------------------

    def insert_dataset(self, project: str, body: dict[str, Any]) -> dict[str, Any]:
        reference = body.get("datasetReference") or {}
        dataset_id = reference.get("datasetId")
        if not isinstance(dataset_id, str):
            raise _invalid("Required parameter is missing: datasetReference.datasetId")
        if reference.get("projectId", project) != project:
            raise _invalid(f"Dataset project {reference.get('projectId')} does not match "
                           f"the request project {project}.")
        _check_dataset_id(dataset_id)
        if "access" in body:
            access = _checked_access(body["access"], self.legacy_roles)
        else:
            access = [{"role": "WRITER", "specialGroup": "projectWriters"},
                      {"role": "OWNER", "specialGroup": "projectOwners"},
                      {"role": "READER", "specialGroup": "projectReaders"}]
            if self.creator:
                access.append({"role": "OWNER", "userByEmail": self.creator})
        if (project, dataset_id) in self.datasets:
            raise ApiError(409, "ALREADY_EXISTS", "duplicate",
                           f"Already Exists: Dataset {project}:{dataset_id}")
        now = _now_ms()
        resource = {k: copy.deepcopy(v) for k, v in body.items() if k not in _DATASET_OUTPUT_ONLY}
        resource.update({
            "kind": "bigquery#dataset",
            "id": f"{project}:{dataset_id}",
            "selfLink": f"{self.endpoint}{_PREFIX}/projects/{project}/datasets/{dataset_id}",
            "datasetReference": {"projectId": project, "datasetId": dataset_id},
            "access": access,
            "etag": self.new_etag(f"{project}:{dataset_id}"),
            "creationTime": now,
            "lastModifiedTime": now,
            "location": body.get("location") or "US",
            "type": "DEFAULT",
        })
        self.datasets[(project, dataset_id)] = resource
        return resource

    def patch_dataset(self, project: str, dataset_id: str, body: dict[str, Any],
                      if_match: str | None) -> dict[str, Any]:
        current = self.dataset(project, dataset_id)
        if if_match is not None and if_match != current["etag"]:
            raise ApiError(412, "FAILED_PRECONDITION", "conditionNotMet",
                           "Precondition check failed.")
        reference = body.get("datasetReference")
        if reference and (reference.get("projectId", project) != project
                          or reference.get("datasetId", dataset_id) != dataset_id):
            raise _invalid("datasetReference cannot be changed.")
        if body.get("location") not in (None, current["location"]):
            raise _invalid("Cannot change dataset location.")
        updated = copy.deepcopy(current)
        for key, value in body.items():
            if key in _DATASET_OUTPUT_ONLY:
                continue
            if key == "access":
                value = _checked_access(value if value is not None else [], self.legacy_roles)
            if value is None:
                updated.pop(key, None)
            else:
                updated[key] = copy.deepcopy(value)
        updated["etag"] = self.new_etag(f"{project}:{dataset_id}")
        updated["lastModifiedTime"] = _now_ms()
        self.datasets[(project, dataset_id)] = updated
        return updated

    def delete_dataset(self, project: str, dataset_id: str, delete_contents: bool) -> None:
        self.dataset(project, dataset_id)
        inside = [key for key in self.tables if key[:2] == (project, dataset_id)]
        if inside and not delete_contents:
            raise ApiError(400, "FAILED_PRECONDITION", "resourceInUse",
                           f"Dataset {project}:{dataset_id} is still in use")
        for key in inside:
            self._drop_table(key)
        del self.datasets[(project, dataset_id)]

    # --- tables ---------------------------------------------------------------------------

    def insert_table(self, project: str, dataset_id: str, body: dict[str, Any]) -> dict[str, Any]:
        dataset = self.dataset(project, dataset_id)
        reference = body.get("tableReference") or {}
        table_id = reference.get("tableId")
        if not isinstance(table_id, str):
            raise _invalid("Required parameter is missing: tableReference.tableId")
        if (reference.get("projectId", project), reference.get("datasetId", dataset_id)) != (
                project, dataset_id):
            raise _invalid("tableReference must name the dataset of the request URL.")
        _check_table_id(table_id)
        if "schema" in body:
            _check_schema((body["schema"] or {}).get("fields", []))
        key = (project, dataset_id, table_id)
        if key in self.tables:
            raise ApiError(409, "ALREADY_EXISTS", "duplicate",
                           f"Already Exists: Table {project}:{dataset_id}.{table_id}")
        now = _now_ms()
        resource = {k: copy.deepcopy(v) for k, v in body.items() if k not in _TABLE_OUTPUT_ONLY}
        resource.update({
            "kind": "bigquery#table",
            "id": f"{project}:{dataset_id}.{table_id}",
            "selfLink": f"{self.endpoint}{_PREFIX}/projects/{project}/datasets/{dataset_id}"
                        f"/tables/{table_id}",
            "tableReference": {"projectId": project, "datasetId": dataset_id, "tableId": table_id},
            "etag": self.new_etag(f"{project}:{dataset_id}.{table_id}"),
            "creationTime": now,
            "lastModifiedTime": now,
            "type": "VIEW" if "view" in body else "TABLE",
            "numRows": "0",
            "numBytes": "0",
            "location": dataset["location"],
        })
        self.tables[key] = resource
        return resource

    def delete_table(self, project: str, dataset_id: str, table_id: str) -> None:
        self.table(project, dataset_id, table_id)
        self._drop_table((project, dataset_id, table_id))

    def _drop_table(self, key: tuple[str, str, str]) -> None:
        del self.tables[key]
        self.policies.forget(_policy_resource(*key))


def _policy_resource(project: str, dataset_id: str, table_id: str) -> str:
    return f"projects/{project}/datasets/{dataset_id}/tables/{table_id}"


_DATASETS = re.compile(r"^/projects/(?P<p>[^/]+)/datasets$")
_DATASET = re.compile(r"^/projects/(?P<p>[^/]+)/datasets/(?P<d>[^/]+)$")
_TABLES = re.compile(r"^/projects/(?P<p>[^/]+)/datasets/(?P<d>[^/]+)/tables$")
_TABLE = re.compile(r"^/projects/(?P<p>[^/]+)/datasets/(?P<d>[^/]+)/tables/(?P<t>[^/:]+)"
                    r"(?::(?P<verb>getIamPolicy|setIamPolicy|testIamPermissions))?$")


def _route(state: _State, method: str, path: str, query: dict[str, list[str]],
           headers: Any, body: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
    """(HTTP status, JSON answer or None for an empty 204) for one request."""
    if not path.startswith(_PREFIX + "/"):
        raise ApiError(404, "NOT_FOUND", "notFound", f"Not found: {path}")
    rest = path[len(_PREFIX):]
    if match := _DATASETS.match(rest):
        if method == "POST":
            return 200, state.insert_dataset(unquote(match["p"]), body)
    elif match := _DATASET.match(rest):
        project, dataset_id = unquote(match["p"]), unquote(match["d"])
        if method == "GET":
            return 200, state.dataset(project, dataset_id)
        if method == "PATCH":
            return 200, state.patch_dataset(project, dataset_id, body, headers.get("If-Match"))
        if method == "DELETE":
            delete_contents = query.get("deleteContents", ["false"])[0].lower() == "true"
            state.delete_dataset(project, dataset_id, delete_contents)
            return 204, None
    elif match := _TABLES.match(rest):
        if method == "POST":
            return 200, state.insert_table(unquote(match["p"]), unquote(match["d"]), body)
    elif match := _TABLE.match(rest):
        project, dataset_id, table_id = unquote(match["p"]), unquote(match["d"]), unquote(match["t"])
        verb = match["verb"]
        if verb is None and method == "GET":
            return 200, state.table(project, dataset_id, table_id)
        if verb is None and method == "DELETE":
            state.delete_table(project, dataset_id, table_id)
            return 204, None
        if verb is not None and method == "POST":
            state.table(project, dataset_id, table_id)  # 404 in BigQuery's words first
            return 200, _iam(state.policies, verb, _policy_resource(project, dataset_id, table_id),
                             body)
    raise ApiError(501, "UNIMPLEMENTED", "notImplemented",
                   f"The BigQuery fake does not implement {method} {path}")


def _iam(store: PolicyStore, verb: str, resource: str, body: dict[str, Any]) -> dict[str, Any]:
    request_types = {"getIamPolicy": iam_policy_pb2.GetIamPolicyRequest,
                     "setIamPolicy": iam_policy_pb2.SetIamPolicyRequest,
                     "testIamPermissions": iam_policy_pb2.TestIamPermissionsRequest}
    try:
        request = json_format.ParseDict({**body, "resource": resource}, request_types[verb]())
    except json_format.ParseError as error:
        raise _invalid(f"Invalid JSON payload received. {error}") from error
    try:
        if verb == "getIamPolicy":
            answer: Any = store.get_iam_policy(request)
        elif verb == "setIamPolicy":
            answer = store.set_iam_policy(request)
        else:
            answer = store.test_iam_permissions(request)
    except FakeError as error:
        raise _from_fake_error(error) from error
    return json_format.MessageToDict(answer)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms stalls
    server: _Server

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        try:
            try:
                body = json.loads(raw) if raw else {}
            except ValueError as error:
                raise _invalid(f"Invalid JSON payload received. {error}") from error
            if not isinstance(body, dict):
                raise _invalid("Invalid JSON payload received: expected an object.")
            state = self.server.state
            with state.lock:
                status, answer = _route(state, self.command, url.path, parse_qs(url.query),
                                        self.headers, body)
                payload = json.dumps(copy.deepcopy(answer)).encode() if answer is not None else b""
        except ApiError as error:
            status, payload = error.code, json.dumps(error.body()).encode()
        self.send_response(status)
        if payload:
            self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: _State


@dataclass
class BigQueryFake:
    """A running fake: ``endpoint`` is ``http://127.0.0.1:PORT``."""

    endpoint: str
    _server: _Server
    _thread: threading.Thread

    def client(self, project: str) -> bigquery.Client:
        """A real BigQuery client for ``project`` that talks to this fake."""
        return bigquery.Client(project=project, credentials=AnonymousCredentials(),
                               client_options={"api_endpoint": self.endpoint})

    # --- state, for assertions ------------------------------------------------------------

    def datasets(self) -> list[str]:
        """Existing datasets as ``project.dataset``."""
        with self._server.state.lock:
            return sorted(f"{p}.{d}" for p, d in self._server.state.datasets)

    def tables(self) -> list[str]:
        """Existing tables as ``project.dataset.table``."""
        with self._server.state.lock:
            return sorted(f"{p}.{d}.{t}" for p, d, t in self._server.state.tables)

    def access(self, dataset_ref: Any) -> list[dict[str, Any]]:
        """The stored ``access`` entries of a dataset (``"p.d"`` or a DatasetReference)."""
        key = _ref(dataset_ref, 2)
        with self._server.state.lock:
            return copy.deepcopy(self._server.state.datasets[(key[0], key[1])]["access"])

    def etag(self, dataset_ref: Any) -> str:
        """The current etag of a dataset."""
        key = _ref(dataset_ref, 2)
        with self._server.state.lock:
            return str(self._server.state.datasets[(key[0], key[1])]["etag"])

    def table_policy(self, table_ref: Any) -> dict[str, Any]:
        """A table's IAM policy as the REST API renders it (etag in base64; an untouched
        table has version 1, etag ``ACAB`` and no bindings)."""
        project, dataset_id, table_id = _ref(table_ref, 3)
        resource = _policy_resource(project, dataset_id, table_id)
        return json_format.MessageToDict(self._server.state.policies.policy(resource))

    def policy_store(self) -> PolicyStore:
        """The table policies' ``PolicyStore`` (for ``deny``, ``set_count``, ...)."""
        return self._server.state.policies

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_bigquery_fake(*, legacy_roles: bool = False, creator: str | None = None) -> BigQueryFake:
    """Serve the fake on an ephemeral loopback port.

    ``legacy_roles``: rewrite roles/bigquery.dataOwner/dataEditor/dataViewer in access entries
    to OWNER/WRITER/READER as the real API does (off: entries are kept exactly as sent).
    ``creator``: the email added as OWNER to a dataset created without ``access``.
    """
    server = _Server((_HOST, 0), _Handler)
    port = server.server_address[1]
    endpoint = f"http://{_HOST}:{port}"
    server.state = _State(endpoint, legacy_roles, creator)
    # A short poll interval so stop() (shutdown) returns promptly rather than after 0.5 s.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                              name="bigquery-fake", daemon=True)
    thread.start()
    return BigQueryFake(endpoint=endpoint, _server=server, _thread=thread)
