"""Cloud Storage for tests: gcp-storage-emulator (PyPI ``gcp-storage-emulator``) run in-process.

``start_storage_fake()`` serves the emulator's JSON API on 127.0.0.1 with an ephemeral port,
keeping everything in memory; ``.client(project)`` is a real ``google.cloud.storage.Client``
pointed at it with anonymous credentials. The emulator is built with its own
``gcp_storage_emulator.server.create_server("127.0.0.1", 0, in_memory=True)``; it exposes no
public way to learn the bound port, so it is read from ``server._api._httpd`` (a
``RuntimeError`` says so if that ever moves). Unlike the other fakes in this package this is a
third-party emulator, so the rules below are the emulator's, not ones this module enforces.

What it does (checked by tests/unit/test_fake_storage_and_bigquery.py): bucket insert/get
(409 "You already own this bucket" on a duplicate, 404 for a missing bucket), object uploads
(multipart), downloads, and bucket ``getIamPolicy``/``setIamPolicy`` that store
and return the policy JSON.

What it does NOT do (read from its source, gcp_storage_emulator 2026.7.19):

* Preconditions: ``ifGenerationMatch`` / ``ifMetagenerationMatch`` (and the ``...NotMatch``
  forms) are ignored on upload, download and delete, so ``if_generation_match=0`` on an
  existing object overwrites it instead of answering 412 PreconditionFailed. Code relying on
  "create only if absent" cannot be tested against this emulator.
* IAM, per ``handlers/buckets.py``: "store/return only, not enforced (#229)". No etag check
  (a stale etag is accepted, and the stored etag is whatever the client sent, ``CAE=`` before
  the first set, ``CAI=`` if none was sent), ``optionsRequestedPolicyVersion`` "is accepted and
  ignored" (the answer stays version 1; conditions are not downgraded), roles and members are
  not validated, and ``testIamPermissions`` grants every permission asked for.
* No authentication or authorization at all; bucket names are not checked against the GCS
  naming rules (upper case is accepted); no project scoping of bucket names.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from dataclasses import dataclass

from gcp_storage_emulator.server import Server, create_server
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage  # type: ignore[attr-defined,unused-ignore]

_HOST = "127.0.0.1"


@dataclass
class StorageFake:
    """A running emulator: ``endpoint`` is ``http://127.0.0.1:PORT``."""

    endpoint: str
    _server: Server

    def client(self, project: str) -> storage.Client:
        """A real Storage client for ``project`` that talks to this emulator."""
        return storage.Client(project=project, credentials=AnonymousCredentials(),
                              client_options={"api_endpoint": self.endpoint})

    def stop(self) -> None:
        """Shut the HTTP server down and wait for its thread to end."""
        stopper = threading.Thread(target=self._server.stop, name="storage-fake-stop", daemon=True)
        stopper.start()
        # serve_forever() only notices shutdown() when select() wakes, every 0.5 s by default;
        # an empty connection wakes it at once.
        host, port = self.endpoint.removeprefix("http://").rsplit(":", 1)
        deadline = time.monotonic() + 5
        while stopper.is_alive() and time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection((host, int(port)), 0.2):
                pass
            stopper.join(timeout=0.02)
        # APIThread overrides join() to mean "shut down"; wait for the thread itself too.
        threading.Thread.join(self._server._api, timeout=5)


def start_storage_fake() -> StorageFake:
    """Start the emulator in memory on an ephemeral loopback port."""
    logging.getLogger("gcp_storage_emulator").setLevel(logging.ERROR)  # it warns per response
    server = create_server(_HOST, 0, in_memory=True)
    # The emulator's API thread is not a daemon; a test that forgets stop() must not hang exit.
    server._api.daemon = True
    server.start()  # returns once the HTTPServer is bound
    httpd = getattr(server._api, "_httpd", None)
    if httpd is None:  # the emulator's internals changed: fail loudly rather than guess a port
        server.stop()
        raise RuntimeError("gcp_storage_emulator: cannot find the bound HTTP server")
    port = httpd.server_address[1]
    return StorageFake(endpoint=f"http://{_HOST}:{port}", _server=server)
