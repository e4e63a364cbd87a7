"""Recorder: the service a Cloud Scheduler job calls (at its URL). Each ``POST /`` is written to every
store of its dataflow: a document in its Firestore collection, an object in its bucket and a row
in its BigQuery table (locally the SQLite file of the dataset, under ``LOCAL_BIGQUERY_DIR``).
``GET /ticks`` answers ``{"received": N, "last_job": <X-CloudScheduler-JobName>}``.

Where things are comes from the architecture's ``method: env`` links: ``TICKS_BUCKET``,
``TICKS_COLLECTION``, ``TICKS_TABLE``; ``TICKS_DATABASE`` and ``TICKS_DATASET`` are plain
``environment_vars``. Run: ``python main.py`` in this folder, with PORT and PROJECT_ID.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import sqlite3
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

log = logging.getLogger("recorder")
MAX_BODY_BYTES = 64 * 1024


class Recorder:
    def __init__(self, env: dict[str, str]) -> None:
        self.project = env["PROJECT_ID"]
        self.bucket, self.collection = env["TICKS_BUCKET"], env["TICKS_COLLECTION"]
        self.database, self.dataset = env.get("TICKS_DATABASE", "(default)"), env["TICKS_DATASET"]
        self.table = env["TICKS_TABLE"]
        self.sqlite_dir = env.get("LOCAL_BIGQUERY_DIR")
        self.received, self.last_job = 0, ""
        self._lock = threading.Lock()

    def record(self, body: bytes, job: str) -> dict[str, Any]:
        with self._lock:
            self.received += 1
            self.last_job = job
            number = self.received
        at = dt.datetime.now(dt.UTC).isoformat()
        tick = {"n": number, "job": job, "at": at, "body": body.decode(errors="replace")}
        from google.cloud import firestore, storage  # type: ignore[attr-defined,unused-ignore]

        firestore.Client(project=self.project, database=self.database).collection(
            self.collection).document(f"tick-{at}").set(tick)
        storage.Client(project=self.project).bucket(self.bucket).blob(f"ticks/{at}.json").upload_from_string(
            json.dumps(tick), content_type="application/json")
        self.insert_row({"job": job, "at": at, "body": tick["body"]})
        return tick

    def insert_row(self, row: dict[str, Any]) -> None:
        if self.sqlite_dir:  # locally: the dataset's SQLite file (see the director's bigquery_tables)
            path = Path(self.sqlite_dir) / self.project / f"{self.dataset}.sqlite"
            with sqlite3.connect(path, timeout=30) as db:
                db.execute(f'INSERT INTO "{self.table}" (job, at, body) VALUES (?, ?, ?)',
                           (row["job"], row["at"], row["body"]))
            return
        from google.cloud import bigquery

        errors = bigquery.Client(project=self.project).insert_rows_json(
            f"{self.project}.{self.dataset}.{self.table}", [row])
        if errors:
            raise RuntimeError(f"BigQuery refused the row: {errors}")


def serve(recorder: Recorder, host: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def reply(self, status: int, payload: dict[str, Any]) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path == "/healthz":
                self.reply(200, {"ok": True})
            elif self.path == "/ticks":
                self.reply(200, {"received": recorder.received, "last_job": recorder.last_job})
            else:
                self.send_error(404)

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            if self.path != "/" or not 0 <= length <= MAX_BODY_BYTES:
                self.send_error(404 if self.path != "/" else 413)
                return
            try:
                tick = recorder.record(self.rfile.read(length), self.headers.get("X-CloudScheduler-JobName", ""))
            except Exception as exc:  # the scheduler records the failure and tries at the next time
                log.warning("tick not recorded: %s", exc)
                self.reply(500, {"error": str(exc)})
                return
            self.reply(200, tick)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s recorder %(levelname)s %(message)s")
    recorder = Recorder(dict(os.environ))
    server = serve(recorder, os.environ.get("HOST", "0.0.0.0"), int(os.environ.get("PORT", "8080")))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info("recording ticks into %s, %s/%s, %s.%s", recorder.bucket, recorder.database,
             recorder.collection, recorder.dataset, recorder.table)
    stop.wait()
    server.shutdown()


if __name__ == "__main__":
    main()
