"""BigQuery datasets and tables, with their schemas.

On Google Cloud through ``google-cloud-bigquery``. Locally (``LOCAL_BIGQUERY_DIR`` set by
Podium's local backend) in SQLite: one database file per dataset, ``<dir>/<project>/<dataset>.sqlite``,
so ``ATTACH '<file>' AS <dataset>`` gives the same ``dataset.table`` names in SQL. SQLite because
the services and the tests read and write those files from several processes at once, which
SQLite's locking allows (an embedded DuckDB file admits one writing process), and it ships with
Python, so nothing is installed. Columns keep BigQuery's meaning in a ``STRICT`` table: INT64 →
INTEGER, FLOAT64 → REAL, BYTES → BLOB, BOOL → INTEGER 0/1; text forms for NUMERIC (exact
decimals), dates and times (ISO 8601), GEOGRAPHY (WKT), JSON, RECORD and REPEATED columns (JSON);
REQUIRED is NOT NULL. Each file keeps a ``_podium_tables`` catalog of the declared schemas,
partitioning and labels, as BigQuery keeps table metadata.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from google.api_core import exceptions
from resource_kinds import CommandError, Spec, seconds

log = logging.getLogger("director")
LOCAL_DIR_ENV = "LOCAL_BIGQUERY_DIR"
SQLITE_TYPES = {
    "INTEGER": "INTEGER", "INT64": "INTEGER", "BOOLEAN": "INTEGER", "BOOL": "INTEGER",
    "FLOAT": "REAL", "FLOAT64": "REAL", "BYTES": "BLOB",
}  # everything else (STRING, NUMERIC, TIMESTAMP, JSON, RECORD, ...) is TEXT
CATALOG = "_podium_tables"


def local_dir() -> Path | None:
    value = os.environ.get(LOCAL_DIR_ENV)
    return Path(value) if value else None


class _Engine:
    """Where datasets and tables live: BigQuery, or SQLite files."""

    def __init__(self, project: str, client: Any = None) -> None:
        self.project = project
        self._client = client
        self.sqlite_root = local_dir()

    @property
    def client(self) -> Any:
        if self._client is None:
            from google.cloud import bigquery

            self._client = bigquery.Client(project=self.project)
        return self._client

    @staticmethod
    def create_if_missing(get: Any, create: Any, resource: Any) -> bool:
        """BigQuery get-or-create: False if ``resource`` exists (or a concurrent delivery of the
        same command created it first), True if this call created it."""
        try:
            get(resource.reference)
            return False
        except exceptions.NotFound:
            pass
        try:
            create(resource)
        except exceptions.Conflict:
            return False
        return True

    def dataset_file(self, dataset: str) -> Path:
        assert self.sqlite_root is not None
        return self.sqlite_root / self.project / f"{dataset}.sqlite"


class Datasets:
    kind, section = "bigquery_dataset", "bigquery_datasets"

    def __init__(self, engine: _Engine, region: str) -> None:
        self.engine, self.region = engine, region

    def name(self, spec: Spec) -> str:
        return str(spec["name"])

    def location(self, spec: Spec) -> str:
        return str(spec.get("location") or self.region or "US")

    def ensure(self, spec: Spec) -> bool:
        if self.engine.sqlite_root is not None:
            path = self.engine.dataset_file(spec["name"])
            if path.exists():
                return False
            path.parent.mkdir(parents=True, exist_ok=True)
            with _connect(path) as db:
                db.execute(f"CREATE TABLE IF NOT EXISTS {CATALOG} (name TEXT PRIMARY KEY, metadata TEXT NOT NULL) STRICT")
            log.info("created dataset %s (SQLite %s)", spec["name"], path)
            return True
        from google.cloud import bigquery

        dataset = bigquery.Dataset(f"{self.engine.project}.{spec['name']}")
        dataset.location = self.location(spec)
        dataset.labels = dict(spec.get("labels") or {})
        dataset.description = spec.get("description") or None
        if not self.engine.create_if_missing(self.engine.client.get_dataset, self.engine.client.create_dataset,
                                             dataset):
            return False
        log.info("created dataset %s", spec["name"])
        return True

    def delete(self, spec: Spec) -> bool:
        if self.engine.sqlite_root is not None:
            path = self.engine.dataset_file(spec["name"])
            if not path.exists():
                return False
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            return True
        try:
            self.engine.client.delete_dataset(f"{self.engine.project}.{spec['name']}", delete_contents=True)
        except exceptions.NotFound:
            return False
        log.info("deleted dataset %s", spec["name"])
        return True


class Tables:
    kind, section = "bigquery_table", "bigquery_tables"

    def __init__(self, engine: _Engine, region: str) -> None:
        self.engine, self.region = engine, region

    def name(self, spec: Spec) -> str:
        return f"{spec['dataset']}.{spec['name']}"

    def location(self, spec: Spec) -> str:
        return self.region or "US"

    def ensure(self, spec: Spec) -> bool:
        if self.engine.sqlite_root is not None:
            return self._ensure_sqlite(spec)
        from google.cloud import bigquery

        table = bigquery.Table(f"{self.engine.project}.{spec['dataset']}.{spec['name']}",
                               schema=[_bigquery_field(bigquery, f) for f in spec.get("schema") or []])
        table.labels = dict(spec.get("labels") or {})
        table.description = spec.get("description") or None
        if spec.get("time_partitioning_type") or spec.get("time_partitioning_field"):
            expiration = spec.get("time_partitioning_expiration")
            table.time_partitioning = bigquery.TimePartitioning(
                type_=spec.get("time_partitioning_type") or "DAY",
                field=spec.get("time_partitioning_field") or None,
                expiration_ms=int(seconds(expiration) * 1000) if expiration else None,
            )
        if spec.get("clustering_fields"):
            table.clustering_fields = list(spec["clustering_fields"])
        if not self.engine.create_if_missing(self.engine.client.get_table, self.engine.client.create_table, table):
            return False
        log.info("created table %s", self.name(spec))
        return True

    def _ensure_sqlite(self, spec: Spec) -> bool:
        path = self.engine.dataset_file(spec["dataset"])
        if not path.exists():
            raise CommandError(f"its dataset {spec['dataset']} does not exist")
        with _connect(path) as db:
            if db.execute(f"SELECT 1 FROM {CATALOG} WHERE name = ?", (spec["name"],)).fetchone():
                return False
            columns = [_sqlite_column(f) for f in spec.get("schema") or []]
            if columns:  # a table without a schema has metadata only, as in BigQuery
                db.execute(f"CREATE TABLE IF NOT EXISTS {_quoted(spec['name'])} ({', '.join(columns)}) STRICT")
            metadata = {k: spec.get(k) for k in ("schema", "labels", "description", "time_partitioning_type",
                                                 "time_partitioning_field", "clustering_fields", "expiration")}
            db.execute(f"INSERT INTO {CATALOG} (name, metadata) VALUES (?, ?)", (spec["name"], json.dumps(metadata)))
        log.info("created table %s (SQLite %s)", self.name(spec), path)
        return True

    def delete(self, spec: Spec) -> bool:
        if self.engine.sqlite_root is not None:
            path = self.engine.dataset_file(spec["dataset"])
            if not path.exists():
                return False
            with _connect(path) as db:
                known = db.execute(f"DELETE FROM {CATALOG} WHERE name = ?", (spec["name"],)).rowcount
                db.execute(f"DROP TABLE IF EXISTS {_quoted(spec['name'])}")
            return bool(known)
        try:
            self.engine.client.delete_table(f"{self.engine.project}.{spec['dataset']}.{spec['name']}")
        except exceptions.NotFound:
            return False
        log.info("deleted table %s", self.name(spec))
        return True


def kinds(project: str, region: str, client: Any = None) -> tuple[Datasets, Tables]:
    """Datasets and tables sharing one engine (datasets first: a table needs its dataset)."""
    engine = _Engine(project, client)
    return Datasets(engine, region), Tables(engine, region)


@contextlib.contextmanager
def _connect(path: Path) -> Iterator[sqlite3.Connection]:
    """One transaction on a dataset file: committed on success, rolled back on error, closed."""
    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")  # readers never block the writer, nor it them
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    finally:
        db.close()


def _quoted(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _sqlite_column(field: Spec) -> str:
    kind = str(field["type"]).upper()
    repeated = field.get("mode") == "REPEATED"
    sql_type = "TEXT" if repeated else SQLITE_TYPES.get(kind, "TEXT")
    not_null = " NOT NULL" if field.get("mode") == "REQUIRED" else ""
    return f"{_quoted(field['name'])} {sql_type}{not_null}"


def _bigquery_field(bigquery: Any, field: Spec) -> Any:
    return bigquery.SchemaField(
        field["name"], str(field["type"]).upper(), mode=field.get("mode") or "NULLABLE",
        description=field.get("description") or None,
        fields=[_bigquery_field(bigquery, f) for f in field.get("fields") or []],
    )
