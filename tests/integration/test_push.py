"""``POST /pubsub/push`` and ``GET /healthz`` over real HTTP, on a daemon that does not pull.

Every request here goes through the socket to ``DaemonHTTP`` and on to the engine, the store
and the Firestore emulator. A whole run is driven to ``succeeded`` by push alone: the test
plays Pub/Sub, pulling the events the effects published and POSTing each as an envelope.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import itertools
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1

from daemon.config import Settings
from daemon.push_auth import bearer_token, google_verify, make_verifier
from daemon.server import Daemon
from tests.integration.conftest import ARCHITECTURE_YAML, rejected, run_doc, start_body, wait_for

_ids = itertools.count(1)
PUSH_SA = "pubsub-push@podium-test.iam.gserviceaccount.com"
AUDIENCE = "https://podium.example.run.app/pubsub/push"


@pytest.fixture
def push_daemon(settings: Settings) -> Iterator[Daemon]:
    """A daemon with HTTP on an ephemeral port and no streaming pull: push is its only intake
    (``delivery="push"``: in pull mode the endpoint does not exist)."""
    daemon = Daemon(settings.model_copy(update={"delivery": "push"}), http_port=0, pull=False)
    daemon.start()
    yield daemon
    daemon.stop()


def url(daemon: Daemon, path: str = "/pubsub/push") -> str:
    return f"http://127.0.0.1:{daemon.http.port}{path}"


def sub_name(settings: Settings, which: str) -> str:
    name = {"commands": settings.commands_subscription, "events": settings.events_subscription,
            "dead": settings.dead_letter_subscription}.get(which, which)
    return f"projects/{settings.project}/subscriptions/{name}"


def envelope(settings: Settings, which: str, body: bytes | dict[str, Any], *, message_id: str | None = None,
             attributes: dict[str, str] | None = None, attempt: int | None = None) -> dict[str, Any]:
    """A wrapped push body as Pub/Sub sends it (both spellings of the id and publish time)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    mid = message_id or f"9{next(_ids):015d}"
    now = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
    message: dict[str, Any] = {"data": base64.b64encode(data).decode(), "messageId": mid, "message_id": mid,
                               "publishTime": now, "publish_time": now}
    if attributes:
        message["attributes"] = attributes
    env: dict[str, Any] = {"message": message, "subscription": sub_name(settings, which)}
    if attempt is not None:
        env["deliveryAttempt"] = attempt
    return env


def post(daemon: Daemon, body: bytes | dict[str, Any], headers: dict[str, str] | None = None) -> requests.Response:
    if isinstance(body, dict):
        return requests.post(url(daemon), json=body, headers=headers, timeout=30)
    return requests.post(url(daemon), data=body, headers={"Content-Type": "application/json", **(headers or {})},
                         timeout=30)


def envelope_id(raw: bytes) -> str:
    return "push-" + hashlib.sha256(raw).hexdigest()[:32]


def relay_events(settings: Settings, daemon: Daemon, run_id: str, db: Any, timeout: float = 60.0) -> dict[str, Any]:
    """Play Pub/Sub: pull the events topic's subscription and push each message until the run ends."""
    subscriber = pubsub_v1.SubscriberClient()
    path = sub_name(settings, "events")
    try:
        def ended() -> dict[str, Any] | None:
            try:
                response = subscriber.pull(request={"subscription": path, "max_messages": 50}, timeout=2, retry=None)
            except (gexc.DeadlineExceeded, gexc.RetryError):
                response = None
            acks = []
            for received in response.received_messages if response else []:
                m = received.message
                env = envelope(settings, "events", m.data, message_id=m.message_id, attributes=dict(m.attributes),
                               attempt=received.delivery_attempt or None)
                reply = post(daemon, env)
                assert reply.status_code == 200, reply.text
                acks.append(received.ack_id)
            if acks:
                subscriber.acknowledge(request={"subscription": path, "ack_ids": acks})
            doc = run_doc(db, settings, run_id)
            return doc if doc and doc["status"] != "running" else None

        return wait_for(ended, timeout, f"run {run_id} to end by push", interval=0.05)
    finally:
        subscriber.close()


# ---- health ------------------------------------------------------------------------------

def test_healthz(push_daemon):
    reply = requests.get(url(push_daemon, "/healthz"), timeout=10)
    assert reply.status_code == 200
    assert reply.json() == {"status": "ok"}
    assert requests.get(url(push_daemon, "/nowhere"), timeout=10).status_code == 404
    assert requests.post(url(push_daemon, "/nowhere"), data=b"{}", timeout=10).status_code == 404


# ---- delivery ----------------------------------------------------------------------------

def test_a_pulling_daemon_has_no_push_endpoint(settings, db):
    daemon = Daemon(settings, http_port=0, pull=False)  # delivery "pull", the default
    daemon.start()
    try:
        reply = post(daemon, envelope(settings, "commands", start_body("no-push")))
        assert reply.status_code == 404
        assert daemon.http.server.server_address[0] == "127.0.0.1"
    finally:
        daemon.stop()
    assert run_doc(db, settings, "no-push") is None
    assert rejected(db) == {}


def test_start_command_by_push_commits_before_200_and_the_run_finishes_by_push(settings, db, push_daemon):
    reply = post(push_daemon, envelope(settings, "commands", start_body("push-1"), attempt=1))
    assert reply.status_code == 200, reply.text
    # 200 only after the commit: the run is there the moment the answer is
    doc = run_doc(db, settings, "push-1")
    assert doc is not None and doc["status"] == "running"
    assert doc["state"] in ("generating_config", "preflight")
    final = relay_events(settings, push_daemon, "push-1", db)
    assert final["status"] == "succeeded", final.get("error")
    assert set(final["outputs"]["images"]) == {"director", "publisher", "subscriber"}


def test_snake_case_message_id_and_attribute_only_fields_are_accepted(settings, db, push_daemon):
    env = envelope(settings, "commands", start_body("push-snake"), attributes={"trace_id": "t-1"})
    del env["message"]["messageId"], env["message"]["publishTime"]
    reply = post(push_daemon, env)
    assert reply.status_code == 200, reply.text
    assert reply.json()["message_id"] == env["message"]["message_id"]
    assert run_doc(db, settings, "push-snake") is not None


def test_start_without_run_id_takes_the_message_id(settings, db, push_daemon):
    body = {"command": "start", "architecture_yaml": ARCHITECTURE_YAML}
    reply = post(push_daemon, envelope(settings, "commands", body, message_id="4242424242"))
    assert reply.status_code == 200, reply.text
    assert run_doc(db, settings, "4242424242") is not None


def test_event_for_unknown_run_is_acked_and_recorded(settings, db, push_daemon):
    event = {"run_id": "ghost", "event_id": "e1", "type": "build.succeeded", "item": "publisher"}
    env = envelope(settings, "events", event, attributes={"run_id": "ghost"})
    reply = post(push_daemon, env)
    assert reply.status_code == 200, reply.text
    record = rejected(db)[env["message"]["messageId"]]
    assert record["reason"] == "unknown_run"
    assert record["source"] == "push"
    assert record["attributes"] == {"run_id": "ghost"}
    assert json.loads(record["body"]) == event


def test_bad_message_in_a_good_envelope_is_acked_and_recorded(settings, db, push_daemon):
    env = envelope(settings, "commands", b"{nope")
    assert post(push_daemon, env).status_code == 200
    assert rejected(db)[env["message"]["messageId"]]["reason"] == "invalid_message"


def test_dead_letter_push_is_recorded(settings, db, push_daemon):
    attrs = {"CloudPubSubDeadLetterSourceDeliveryCount": "5",
             "CloudPubSubDeadLetterSourceSubscription": settings.events_subscription}
    env = envelope(settings, "dead", {"run_id": "r", "event_id": "e", "type": "build.succeeded"}, attributes=attrs)
    assert post(push_daemon, env).status_code == 200
    record = rejected(db)[env["message"]["messageId"]]
    assert record["reason"] == "dead_lettered"
    assert "5 times" in record["message"]


MALFORMED = {
    "empty": b"",
    "not-json": b"{this is not json",
    "not-utf8": b"\xff\xfe\x00\x01",
    "json-list": b"[1, 2, 3]",
    "json-string": b'"message"',
    "json-null": b"null",
    "no-message": json.dumps({"subscription": "projects/p/subscriptions/s"}).encode(),
    "message-not-object": json.dumps({"message": "hello", "subscription": "projects/p/subscriptions/s"}).encode(),
    "no-subscription": json.dumps({"message": {"data": "e30=", "messageId": "1"}}).encode(),
    "no-message-id": json.dumps({"message": {"data": "e30="}, "subscription": "projects/p/subscriptions/s"}).encode(),
    "slash-message-id": json.dumps({"message": {"data": "e30=", "messageId": "a/b"},
                                    "subscription": "projects/p/subscriptions/s"}).encode(),
    "bad-base64": json.dumps({"message": {"data": "not base64!!", "messageId": "1"},
                              "subscription": "projects/p/subscriptions/s"}).encode(),
    "data-not-string": json.dumps({"message": {"data": 12, "messageId": "1"},
                                   "subscription": "projects/p/subscriptions/s"}).encode(),
    "attributes-not-map": json.dumps({"message": {"data": "e30=", "messageId": "1", "attributes": ["a"]},
                                      "subscription": "projects/p/subscriptions/s"}).encode(),
}


def test_malformed_envelopes_are_400_and_recorded_under_a_content_id(settings, db, push_daemon):
    for name, raw in MALFORMED.items():
        reply = post(push_daemon, raw)
        assert reply.status_code == 400, (name, reply.status_code, reply.text)
        assert reply.json()["recorded_as"] == envelope_id(raw), name
    records = rejected(db)
    for name, raw in MALFORMED.items():
        record = records.get(envelope_id(raw))
        assert record is not None, name
        assert record["reason"] == "invalid_envelope", name
        assert record["source"] == "push"
        assert record["body_bytes"] == len(raw)
        assert (record["body"] or "").encode() == raw or base64.b64decode(record["body_base64"]) == raw, name
    # the same bad body again lands on the same record (the id does not depend on the process)
    post(push_daemon, MALFORMED["not-json"])
    assert len(rejected(db)) == len(MALFORMED)


def test_unknown_subscription_is_400_and_recorded(settings, db, push_daemon):
    env = envelope(settings, "someone-elses-sub", start_body("never"))
    reply = post(push_daemon, env)
    assert reply.status_code == 400
    assert "unknown subscription" in reply.json()["error"]
    assert rejected(db)[env["message"]["messageId"]]["reason"] == "unknown_subscription"
    assert run_doc(db, settings, "never") is None


def test_garbled_content_length_is_400(push_daemon):
    import socket

    with socket.create_connection(("127.0.0.1", push_daemon.http.port), timeout=10) as s:
        s.sendall(b"POST /pubsub/push HTTP/1.1\r\nHost: x\r\nContent-Length: twelve\r\n\r\n")
        head = s.recv(4096)
    assert head.startswith(b"HTTP/1.0 400") or head.startswith(b"HTTP/1.1 400"), head


# ---- transient failures ------------------------------------------------------------------

def test_store_failure_is_503_then_the_redelivery_succeeds(settings, db, push_daemon, monkeypatch):
    def unavailable(*_a: Any, **_k: Any) -> Any:
        raise gexc.ServiceUnavailable("firestore is down")

    env = envelope(settings, "commands", start_body("push-503"))
    monkeypatch.setattr(push_daemon.store, "start", unavailable)
    reply = post(push_daemon, env)
    assert reply.status_code == 503, reply.text
    assert run_doc(db, settings, "push-503") is None
    monkeypatch.undo()
    assert post(push_daemon, env).status_code == 200  # Pub/Sub's redelivery of the same envelope
    assert run_doc(db, settings, "push-503") is not None

    cancel = envelope(settings, "commands", {"command": "cancel", "run_id": "push-503"})
    monkeypatch.setattr(push_daemon.store, "apply", unavailable)
    assert post(push_daemon, cancel).status_code == 503
    assert run_doc(db, settings, "push-503")["status"] == "running"
    monkeypatch.undo()
    assert post(push_daemon, cancel).status_code == 200
    assert run_doc(db, settings, "push-503")["status"] == "cancelled"


def test_failure_to_record_a_bad_envelope_is_503_not_a_silent_drop(settings, db, push_daemon, monkeypatch):
    def unavailable(*_a: Any, **_k: Any) -> Any:
        raise gexc.ServiceUnavailable("firestore is down")

    monkeypatch.setattr(push_daemon.store, "record_rejected", unavailable)
    assert post(push_daemon, b"not json").status_code == 503
    assert post(push_daemon, envelope(settings, "commands", b"{nope")).status_code == 503
    assert post(push_daemon, envelope(settings, "other-sub", b"{}")).status_code == 503
    assert rejected(db) == {}


# ---- token verification ------------------------------------------------------------------

def fake_google(token: str, audience: str | None) -> dict[str, Any]:
    """Stands in for google.oauth2.id_token.verify_oauth2_token, keyed by the token text."""
    claims = {
        "good.token.sig": {"email": PUSH_SA, "email_verified": True, "aud": AUDIENCE},
        "other.account.sig": {"email": "intruder@evil.iam.gserviceaccount.com", "email_verified": True,
                              "aud": AUDIENCE},
        "unverified.email.sig": {"email": PUSH_SA, "email_verified": False, "aud": AUDIENCE},
        "other.audience.sig": {"email": PUSH_SA, "email_verified": True, "aud": "https://elsewhere"},
    }.get(token)
    if claims is None:
        raise ValueError("Could not verify token signature.")
    if claims["aud"] != audience:
        raise ValueError(f"Token has wrong audience {claims['aud']}, expected one of [{audience!r}]")
    return claims


def with_auth(settings: Settings, daemon: Daemon, verify: Callable[[str, str | None], Any]) -> None:
    configured = settings.model_copy(update={"push_audience": AUDIENCE, "push_service_account": PUSH_SA})
    daemon.http.verify_token = make_verifier(configured, verify=verify)


def test_token_checks_with_an_injected_verifier(settings, db, push_daemon):
    with_auth(settings, push_daemon, fake_google)
    env = envelope(settings, "commands", start_body("push-auth"))
    cases = [
        (None, 401, "missing"),
        ("Basic dXNlcjpwYXNz", 401, "malformed"),
        ("Bearer", 401, "malformed"),
        ("Bearer not-a-jwt", 401, "malformed"),
        ("Bearer forged.token.sig", 401, "signature"),
        ("Bearer other.audience.sig", 401, "audience"),
        ("Bearer other.account.sig", 403, "intruder@evil"),
        ("Bearer unverified.email.sig", 403, "not verified"),
    ]
    for header, status, needle in cases:
        reply = post(push_daemon, env, headers={"Authorization": header} if header else None)
        assert reply.status_code == status, (header, reply.status_code, reply.text)
        assert needle in reply.json()["error"], (header, reply.json())
    # nothing refused reached the engine: no run, nothing recorded
    assert run_doc(db, settings, "push-auth") is None
    assert rejected(db) == {}
    reply = post(push_daemon, env, headers={"Authorization": "bearer good.token.sig"})
    assert reply.status_code == 200, reply.text
    assert run_doc(db, settings, "push-auth") is not None
    # a refused garbage body is not written anywhere either
    assert post(push_daemon, b"garbage", headers={"Authorization": "Bearer forged.token.sig"}).status_code == 401
    assert rejected(db) == {}


class CertsRequest:
    """A google.auth transport Request that serves these certificates for any URL."""

    def __init__(self, certs: dict[str, str], status: int = 200) -> None:
        self.certs, self.status, self.calls = certs, status, 0

    def __call__(self, url: str, method: str = "GET", **_kwargs: Any) -> Any:
        self.calls += 1

        class Response:
            status = self.status
            headers: dict[str, str] = {}
            data = json.dumps(self.certs).encode()

        return Response()


def signing_pair(kid: str) -> tuple[Any, str]:
    """An RSA signer and its self-signed X.509 certificate (PEM), the form Google's v1 certs take."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID
    from google.auth import crypt

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, kid)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    signer = crypt.RSASigner.from_string(pem, key_id=kid)
    return signer, cert.public_bytes(serialization.Encoding.PEM).decode()


def test_token_checks_with_googles_real_verification_and_a_local_key(settings, db, push_daemon):
    """google.oauth2.id_token does the checking (signature, expiry, issuer, audience); only the
    certificate download is replaced."""
    from google.auth import jwt

    signer, cert = signing_pair("k1")
    stranger, _ = signing_pair("k1")  # same key id, another key: a forged signature
    transport = CertsRequest({"k1": cert})
    with_auth(settings, push_daemon, google_verify(transport))
    now = int(dt.datetime.now(dt.UTC).timestamp())
    claims = {"iss": "https://accounts.google.com", "aud": AUDIENCE, "email": PUSH_SA, "email_verified": True,
              "sub": "1234567890", "iat": now, "exp": now + 600}

    def token(signed_by: Any = signer, **changes: Any) -> dict[str, str]:
        return {"Authorization": "Bearer " + jwt.encode(signed_by, claims | changes).decode()}

    env = envelope(settings, "commands", start_body("push-jwt"))
    cases = [
        (token(aud="https://elsewhere"), 401),
        (token(iat=now - 7200, exp=now - 3600), 401),
        (token(signed_by=stranger), 401),
        (token(iss="https://evil.example"), 401),
        (token(email="intruder@evil.iam.gserviceaccount.com"), 403),
        (token(email_verified=False), 403),
    ]
    for headers, status in cases:
        reply = post(push_daemon, env, headers=headers)
        assert reply.status_code == status, (reply.status_code, reply.text)
    assert run_doc(db, settings, "push-jwt") is None
    reply = post(push_daemon, env, headers=token())
    assert reply.status_code == 200, reply.text
    assert run_doc(db, settings, "push-jwt") is not None
    assert transport.calls == len(cases) + 1

    # Google's keys unreachable: 503, so Pub/Sub tries again
    with_auth(settings, push_daemon, google_verify(CertsRequest({}, status=500)))
    assert post(push_daemon, env, headers=token()).status_code == 503


def test_verifier_selection():
    local = Settings(backend="standin")
    assert make_verifier(local) is None
    assert make_verifier(local.model_copy(update={"push_audience": AUDIENCE,
                                                  "push_service_account": PUSH_SA})) is not None
    unconfigured = make_verifier(Settings(backend="gcp"))
    assert unconfigured is not None
    status, reason = unconfigured("Bearer a.b.c") or (0, "")
    assert status == 500 and "PODIUM_PUSH_AUDIENCE" in reason and "PODIUM_PUSH_SERVICE_ACCOUNT" in reason
    assert bearer_token("Bearer a.b.c") == "a.b.c"
    assert bearer_token("bearer   a.b.c ") == "a.b.c"
    for bad in (None, "", "Bearer", "Bearer a.b", "Token a.b.c", "Bearer a.b.c extra"):
        assert bearer_token(bad) is None, bad


def test_daemon_wires_the_verifier_from_its_settings(settings):
    configured = settings.model_copy(update={"push_audience": AUDIENCE, "push_service_account": PUSH_SA,
                                             "delivery": "push"})
    daemon = Daemon(configured, http_port=0, pull=False)
    daemon.start()
    try:
        env = envelope(configured, "commands", start_body("wired"))
        reply = post(daemon, env)
        assert reply.status_code == 401
    finally:
        daemon.stop()
