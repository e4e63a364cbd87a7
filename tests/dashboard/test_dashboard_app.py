"""The dashboard's server side without emulators: the ASGI app on a real socket (``DaemonHTTP``
on port 0) with a fake Firestore source and a fake publisher; the access checks, with the
token-verifier injection push uses and with google-auth's real verification on a local key."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import pytest
import requests

from daemon.config import Settings
from daemon.dashboard import Dashboard, graph
from daemon.dashboard.access import IAP_ISSUER, Gate, command_refusal, iap_verify, parse_users
from daemon.dashboard.live import Hub, Subscriber, newest_first
from daemon.dashboard.views import run_detail, run_summary, target, to_json
from daemon.http import DaemonHTTP
from machines import orchestration

AUDIENCE = "/projects/123/locations/europe-west1/services/podium"
OPS = "ops@example.com"


# ---- fakes ---------------------------------------------------------------------------------


class FakeListener:
    def __init__(self, source: FakeSource, key: str) -> None:
        self.source, self.key, self.dead = source, key, False

    def alive(self) -> bool:
        return not self.dead

    def stop(self) -> None:
        self.source.stopped.append(self.key)


class FakeSource:
    """Stands in for Firestore: a test emits what a listener would."""

    def __init__(self, runs: set[str] | None = None) -> None:
        self.runs = runs if runs is not None else {"r1"}
        self.emitters: dict[str, Callable[[str, str], bool]] = {}
        self.listeners: list[FakeListener] = []
        self.started: list[str] = []
        self.stopped: list[str] = []
        self.refreshed: list[str] = []
        self.closed = False

    def listen(self, key: str, emit: Callable[[str, str], bool]) -> FakeListener:
        self.started.append(key)
        self.emitters[key] = emit
        listener = FakeListener(self, key)
        self.listeners.append(listener)
        return listener

    def refresh(self, key: str, latest: Any, emit: Any) -> None:
        self.refreshed.append(key)

    def exists(self, run_id: str) -> bool:
        return run_id in self.runs

    def close(self) -> None:
        self.closed = True


class Served:
    def __init__(self, settings: Settings, source: FakeSource, gate: Gate | None = None) -> None:
        self.source = source
        self.published: list[dict[str, Any]] = []

        def publish(body: Any) -> str:
            self.published.append(dict(body))
            return str(1000 + len(self.published))

        self.dashboard = Dashboard(settings, source=source, publish=publish, gate=gate)
        self.http = DaemonHTTP(settings, mock.Mock(), lambda: True, port=0, dashboard=self.dashboard)
        self.http.start()
        self.base = f"http://127.0.0.1:{self.http.port}"

    def url(self, path: str) -> str:
        return self.base + path


@pytest.fixture
def source() -> FakeSource:
    return FakeSource()


@pytest.fixture
def served(source: FakeSource) -> Iterator[Served]:
    s = Served(Settings(backend="standin", dashboard_max_streams=3), source)
    yield s
    s.http.stop()


class Stream:
    """A server-sent-events client on a real connection."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.response = requests.get(url, stream=True, timeout=(5, 20), headers=headers)
        self._lines = self.response.iter_lines(decode_unicode=True) if self.response.ok else iter(())

    def next_event(self) -> tuple[str, Any]:
        kind, data, seen = "message", None, False
        for line in self._lines:
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data, seen = json.loads(line.removeprefix("data: ")), True
            elif line == "" and seen:
                return kind, data
        raise EOFError("the stream ended")

    def close(self) -> None:
        self.response.close()


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def emit(source: FakeSource, key: str, kind: str, value: Any) -> bool:
    wait_until(lambda: key in source.emitters, 5, f"a listener on {key}")
    return source.emitters[key](kind, to_json(value))


# ---- pages ---------------------------------------------------------------------------------


def test_the_page_its_files_and_the_old_endpoints_share_the_port(served: Served) -> None:
    for path in ("/dashboard/", "/dashboard/runs/r1"):
        page = requests.get(served.url(path), timeout=5)
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert '<script src="/dashboard/static/app.js"' in page.text
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY"
    script = requests.get(served.url("/dashboard/static/app.js"), timeout=5)
    assert script.status_code == 200 and "EventSource" in script.text
    assert "innerHTML" not in script.text  # run data goes into the page as text only
    assert requests.get(served.url("/dashboard/static/app.css"), timeout=5).status_code == 200
    assert requests.get(served.url("/dashboard/static/../app.py"), timeout=5).status_code == 404
    root = requests.get(served.url("/"), timeout=5, allow_redirects=False)
    assert (root.status_code, root.headers["location"]) == (307, "/dashboard/")
    assert requests.get(served.url("/healthz"), timeout=5).json() == {"status": "ok"}
    assert requests.get(served.url("/nowhere"), timeout=5).status_code == 404


def test_no_dashboard_without_one(source: FakeSource) -> None:
    http = DaemonHTTP(Settings(backend="standin"), mock.Mock(), lambda: True, port=0)
    http.start()
    try:
        assert requests.get(f"http://127.0.0.1:{http.port}/dashboard/", timeout=5).status_code == 404
    finally:
        http.stop()


def test_graph_is_the_machines_own_definition(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(graph.shutil, "which", lambda _name: None)
    graph.svg.cache_clear()
    try:
        body = requests.get(served.url("/dashboard/api/graph"), timeout=5).json()
    finally:
        graph.svg.cache_clear()
    assert body["svg"] is None  # no dot: the page draws it from the definition
    assert body["states"] == list(orchestration.STATES)
    assert body["terminal"] == list(orchestration.TERMINAL_STATES)
    edges = {(e["source"], e["trigger"], e["dest"], tuple(e["conditions"])) for e in body["edges"]}
    expanded = {(s, t["trigger"], t.get("dest") or s, tuple([t["conditions"]] if isinstance(t.get("conditions"), str)
                                                            else t.get("conditions") or ()))
                for t in orchestration.transition_table()
                for s in (t["source"] if isinstance(t["source"], list) else [t["source"]])}
    assert edges == expanded
    for state in orchestration.ACTIVE_STATES:
        assert (state, "command_cancel", "cancelled", ()) in edges
    assert ("failed", "command_retry", "building", ("failed_in_building",)) in edges
    assert body["progress_keys"][:2] == ["preflight", "build"]


def test_graphviz_svg_is_inlined_without_its_prolog(monkeypatch: pytest.MonkeyPatch) -> None:
    import graphviz

    monkeypatch.setattr(graph.shutil, "which", lambda _name: "/usr/bin/dot")
    pipe = mock.Mock(return_value=b'<?xml version="1.0"?>\n<!DOCTYPE svg>\n<svg width="9pt"><g class="node">'
                                  b"<title>pending</title></g></svg>")
    monkeypatch.setattr(graphviz.Digraph, "pipe", pipe)
    graph.svg.cache_clear()
    try:
        assert graph.svg() == '<svg width="9pt"><g class="node"><title>pending</title></g></svg>'
        assert pipe.call_args.kwargs == {"format": "svg"}
        pipe.side_effect = RuntimeError("dot crashed")
        graph.svg.cache_clear()
        assert graph.svg() is None  # the page draws it instead
    finally:
        graph.svg.cache_clear()


# ---- live streams --------------------------------------------------------------------------


def test_a_run_stream_pushes_each_new_snapshot_once(served: Served, source: FakeSource) -> None:
    first = Stream(served.url("/dashboard/api/runs/r1/stream"))
    try:
        assert first.response.headers["content-type"].startswith("text/event-stream")
        assert emit(source, "run:r1", "run", {"run_id": "r1", "state": "preflight", "status": "running"})
        assert first.next_event() == ("run", {"run_id": "r1", "state": "preflight", "status": "running"})
        assert not emit(source, "run:r1", "run", {"run_id": "r1", "state": "preflight", "status": "running"})
        emit(source, "run:r1", "events", [{"type": "command.start"}])
        assert first.next_event() == ("events", [{"type": "command.start"}])
        # a second tab on the same run shares the listener and gets the latest at once
        second = Stream(served.url("/dashboard/api/runs/r1/stream"))
        got = dict([second.next_event(), second.next_event()])
        assert got == {"run": {"run_id": "r1", "state": "preflight", "status": "running"},
                       "events": [{"type": "command.start"}]}
        assert source.started == ["run:r1"]
        emit(source, "run:r1", "run", {"run_id": "r1", "state": "succeeded", "status": "succeeded"})
        assert first.next_event()[1]["status"] == second.next_event()[1]["status"] == "succeeded"
        second.close()
    finally:
        first.close()
    # both gone: the slots are free and the listener stopped
    wait_until(lambda: served.dashboard.hub.streams == 0, 5, "the streams to be released")
    wait_until(lambda: source.stopped == ["run:r1"], 5, "the listener to stop")
    assert served.dashboard.hub.feeds() == []


def test_the_runs_stream_and_bad_run_ids(served: Served, source: FakeSource) -> None:
    stream = Stream(served.url("/dashboard/api/runs/stream"))
    try:
        emit(source, "runs", "runs", [{"run_id": "r1", "status": "running"}])
        assert stream.next_event() == ("runs", [{"run_id": "r1", "status": "running"}])
    finally:
        stream.close()
    assert requests.get(served.url("/dashboard/api/runs/a%2Fb/stream"), timeout=5).status_code in (400, 404)
    assert requests.get(served.url("/dashboard/api/runs/..x/stream"), timeout=5).status_code == 400


def test_streams_are_capped_and_a_freed_slot_is_reused(served: Served) -> None:
    streams = [Stream(served.url(f"/dashboard/api/runs/r{i}/stream")) for i in range(3)]
    try:
        assert all(s.response.status_code == 200 for s in streams)
        refused = requests.get(served.url("/dashboard/api/runs/stream"), timeout=5)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "10" and "at most 3" in refused.json()["error"]
        streams.pop().close()
        wait_until(lambda: served.dashboard.hub.streams == 2, 5, "the slot to be given back")
        streams.append(Stream(served.url("/dashboard/api/runs/stream")))
        assert streams[-1].response.status_code == 200
    finally:
        for s in streams:
            s.close()
    wait_until(lambda: served.dashboard.hub.streams == 0, 5, "every slot to be given back")


def test_stopping_the_daemon_ends_open_streams_at_once(source: FakeSource) -> None:
    served = Served(Settings(backend="standin"), source)
    stream = Stream(served.url("/dashboard/api/runs/r1/stream"))
    emit(source, "run:r1", "run", {"status": "running"})
    assert stream.next_event()[0] == "run"
    began = time.monotonic()
    served.http.stop()
    assert time.monotonic() - began < 2.5
    with pytest.raises((EOFError, requests.exceptions.RequestException)):
        stream.next_event()
    assert source.stopped == ["run:r1"] and source.closed


def test_a_subscriber_keeps_only_the_latest_of_each_kind() -> None:
    async def scenario() -> list[Any]:
        sub = Subscriber("run:r", asyncio.get_running_loop())
        for version in range(1000):  # a slow client: nothing queues up
            sub.offer("run", f'{{"version":{version}}}')
        sub.offer("events", "[]")
        await asyncio.sleep(0)
        batch = await sub.next(1)
        empty = await sub.next(0.05)
        sub.close()
        await asyncio.sleep(0)
        return [batch, empty, await sub.next(1)]

    batch, empty, closed = asyncio.run(scenario())
    assert batch == [("run", '{"version":999}'), ("events", "[]")]
    assert empty == []
    assert closed is None


def test_the_hub_restarts_a_dead_listener_and_rereads(source: FakeSource) -> None:
    hub = Hub(source, max_streams=5, recheck_seconds=0.05)
    loop = asyncio.new_event_loop()
    try:
        sub = hub.subscribe("run:r1", loop)
        assert sub is not None and source.started == ["run:r1"]
        wait_until(lambda: "run:r1" in source.refreshed, 2, "a safety-net read")
        source.listeners[0].dead = True
        wait_until(lambda: source.started == ["run:r1", "run:r1"], 2, "the listener to be restarted")
        hub.unsubscribe(sub)
        hub.unsubscribe(sub)  # twice is harmless
        assert hub.streams == 0
        wait_until(lambda: source.stopped.count("run:r1") == 2, 2, "both listeners stopped")
        hub.close()
        assert hub.subscribe("run:r1", loop) is None
    finally:
        hub.close()
        loop.close()


# ---- commands ------------------------------------------------------------------------------


def test_cancel_and_retry_publish_the_clis_commands(served: Served) -> None:
    def post(path: str, **headers: str) -> requests.Response:
        return requests.post(served.url(path), headers=headers, timeout=5)

    ok = {"X-Podium-Dashboard": "1"}
    reply = post("/dashboard/api/runs/r1/cancel", **ok)
    assert reply.status_code == 202, reply.text
    assert reply.json() == {"command": "cancel", "run_id": "r1", "message_id": "1001"}
    same_origin = {**ok, "Origin": served.base, "Sec-Fetch-Site": "same-origin"}
    assert post("/dashboard/api/runs/r1/retry", **same_origin).status_code == 202
    assert served.published == [{"command": "cancel", "run_id": "r1"}, {"command": "retry", "run_id": "r1"}]

    refusals = [
        ({}, 403, "X-Podium-Dashboard"),
        ({"X-Podium-Dashboard": "yes"}, 403, "X-Podium-Dashboard"),
        ({**ok, "Origin": "https://evil.example"}, 403, "cross-origin"),
        ({**ok, "Sec-Fetch-Site": "cross-site"}, 403, "cross-site"),
        ({**ok, "Sec-Fetch-Site": "same-site"}, 403, "cross-site"),
    ]
    for headers, status, needle in refusals:
        reply = post("/dashboard/api/runs/r1/cancel", **headers)
        assert reply.status_code == status, headers
        assert needle in reply.json()["error"], headers
    assert post("/dashboard/api/runs/ghost/cancel", **ok).status_code == 404
    assert post("/dashboard/api/runs/r1/teardown", **ok).status_code == 404  # not a dashboard button
    assert post("/dashboard/api/runs/..x/cancel", **ok).status_code == 400
    assert requests.get(served.url("/dashboard/api/runs/r1/cancel"), timeout=5).status_code == 405
    assert len(served.published) == 2  # nothing refused was published


def test_a_publish_failure_is_503_and_says_why(source: FakeSource) -> None:
    settings = Settings(backend="standin")
    dashboard = Dashboard(settings, source=source, publish=mock.Mock(side_effect=TimeoutError("pubsub down")))
    http = DaemonHTTP(settings, mock.Mock(), lambda: True, port=0, dashboard=dashboard)
    http.start()
    try:
        reply = requests.post(f"http://127.0.0.1:{http.port}/dashboard/api/runs/r1/cancel",
                              headers={"X-Podium-Dashboard": "1"}, timeout=5)
    finally:
        http.stop()
    assert reply.status_code == 503 and "pubsub down" in reply.json()["error"]


def test_command_refusal_rules() -> None:
    assert command_refusal({"x-podium-dashboard": "1", "host": "127.0.0.1:8080"}) is None
    assert command_refusal({"x-podium-dashboard": "1", "host": "127.0.0.1:8080",
                            "origin": "http://127.0.0.1:8080", "sec-fetch-site": "same-origin"}) is None
    assert command_refusal({"x-podium-dashboard": "1", "host": "podium-x.run.app",
                            "origin": "https://podium-x.run.app"}) is None  # TLS ends before Cloud Run's container
    assert command_refusal({"x-podium-dashboard": "1", "host": "127.0.0.1:8080", "origin": "null"})


# ---- who may look: loopback ----------------------------------------------------------------


def test_loopback_mode_refuses_other_hosts_and_rebound_names(served: Served) -> None:
    for path in ("/dashboard/", "/dashboard/api/runs/stream", "/dashboard/static/app.js"):
        reply = requests.get(served.url(path), headers={"Host": f"evil.example:{served.http.port}"}, timeout=5)
        assert reply.status_code == 403, path
        assert "loopback" in reply.json()["error"]
    reply = requests.post(served.url("/dashboard/api/runs/r1/cancel"), timeout=5,
                          headers={"Host": "evil.example", "X-Podium-Dashboard": "1"})
    assert reply.status_code == 403 and served.published == []
    assert requests.get(served.url("/dashboard/"), headers={"Host": f"localhost:{served.http.port}"},
                        timeout=5).status_code == 200
    gate = Gate(Settings(backend="local"))
    assert not gate.identity_required
    assert gate.check("127.0.0.1", {"host": "127.0.0.1:8080"}) == "loopback"
    assert gate.check("::1", {"host": "[::1]:8080"}) == "loopback"
    assert gate.check("127.0.0.1", {}) == "loopback"
    assert gate.check("10.1.2.3", {"host": "127.0.0.1:8080"})[0] == 403  # type: ignore[index]
    assert gate.check(None, {})[0] == 403  # type: ignore[index]
    assert gate.check("127.0.0.1", {"host": "127.0.0.1.evil.example"})[0] == 403  # type: ignore[index]


# ---- who may look: identity ----------------------------------------------------------------


def fake_google(token: str, audience: str | None) -> dict[str, Any]:
    """Stands in for google-auth's ID-token check, keyed by the token text (as tests/integration/test_push.py)."""
    claims = {
        "ops.token.sig": {"email": OPS, "email_verified": True, "aud": AUDIENCE},
        "corp.token.sig": {"email": "dev@corp.example", "email_verified": True, "aud": AUDIENCE},
        "stranger.token.sig": {"email": "someone@else.example", "email_verified": True, "aud": AUDIENCE},
        "unverified.token.sig": {"email": OPS, "email_verified": False, "aud": AUDIENCE},
        "other.audience.sig": {"email": OPS, "email_verified": True, "aud": "https://elsewhere"},
    }.get(token)
    if claims is None:
        raise ValueError("Could not verify token signature.")
    if claims["aud"] != audience:
        raise ValueError(f"Token has wrong audience {claims['aud']}")
    return claims


def fake_iap(token: str, audience: str | None) -> dict[str, Any]:
    if token != "iap.assertion.sig" or audience != AUDIENCE:
        raise ValueError("bad IAP assertion")
    return {"email": OPS, "iss": IAP_ISSUER, "aud": AUDIENCE}


GCP = Settings(backend="gcp", dashboard_audience=AUDIENCE, dashboard_users=f"{OPS}, domain:corp.example")


def test_identity_mode_checks_the_token_and_the_allow_list() -> None:
    gate = Gate(GCP, verify_iap=fake_iap, verify_oidc=fake_google)
    assert gate.identity_required
    cases: list[tuple[dict[str, str], Any]] = [
        ({}, 401),
        ({"authorization": "Basic dXNlcjpwYXNz"}, 401),
        ({"authorization": "Bearer forged.token.sig"}, 401),
        ({"authorization": "Bearer other.audience.sig"}, 401),
        ({"authorization": "Bearer stranger.token.sig"}, 403),
        ({"authorization": "Bearer unverified.token.sig"}, 403),
        ({"x-goog-iap-jwt-assertion": "forged.assertion.sig"}, 401),
        ({"authorization": "Bearer ops.token.sig"}, OPS),
        ({"authorization": "Bearer corp.token.sig"}, "dev@corp.example"),  # domain:corp.example
        ({"x-goog-iap-jwt-assertion": "iap.assertion.sig"}, OPS),
    ]
    for headers, expected in cases:
        verdict = gate.check("203.0.113.9", headers)  # Cloud Run's front end: never loopback
        got = verdict[0] if isinstance(verdict, tuple) else verdict
        assert got == expected, (headers, verdict)
    # loopback is no identity in this mode
    assert gate.check("127.0.0.1", {"host": "127.0.0.1"})[0] == 401  # type: ignore[index]
    unconfigured = Gate(Settings(backend="gcp"))
    status, reason = unconfigured.check("203.0.113.9", {"authorization": "Bearer ops.token.sig"})  # type: ignore[misc]
    assert status == 500 and "PODIUM_DASHBOARD_AUDIENCE" in reason and "PODIUM_DASHBOARD_USERS" in reason
    local_with_audience = Gate(Settings(backend="local", dashboard_audience=AUDIENCE, dashboard_users=OPS),
                               verify_oidc=fake_google)
    assert local_with_audience.check("127.0.0.1", {"authorization": "Bearer ops.token.sig"}) == OPS
    assert parse_users(" A@x.com,domain:Y.com user:b@x.com ") == (frozenset({"a@x.com", "b@x.com"}),
                                                                   frozenset({"y.com"}))


def test_identity_mode_over_http(source: FakeSource) -> None:
    served = Served(GCP, source, gate=Gate(GCP, verify_iap=fake_iap, verify_oidc=fake_google))
    try:
        assert requests.get(served.url("/dashboard/"), timeout=5).status_code == 401
        assert requests.get(served.url("/dashboard/static/app.js"), timeout=5).status_code == 401
        stranger = {"Authorization": "Bearer stranger.token.sig"}
        assert requests.get(served.url("/dashboard/api/runs/stream"), headers=stranger, timeout=5).status_code == 403
        iap = {"X-Goog-IAP-JWT-Assertion": "iap.assertion.sig"}
        assert requests.get(served.url("/dashboard/"), headers=iap, timeout=5).status_code == 200
        reply = requests.post(served.url("/dashboard/api/runs/r1/cancel"), timeout=5,
                              headers={**iap, "X-Podium-Dashboard": "1"})
        assert reply.status_code == 202
        refused = requests.post(served.url("/dashboard/api/runs/r1/cancel"), headers=stranger, timeout=5)
        assert refused.status_code == 403
        assert served.published == [{"command": "cancel", "run_id": "r1"}]
        assert requests.get(served.url("/healthz"), timeout=5).status_code == 200  # not behind the gate
    finally:
        served.http.stop()


class CertsRequest:
    """A google.auth transport serving these certificates for any URL (as test_push.py's)."""

    def __init__(self, certs: dict[str, str]) -> None:
        self.certs, self.urls = certs, []

    def __call__(self, url: str, method: str = "GET", **_kwargs: Any) -> Any:
        self.urls.append(url)
        body = json.dumps(self.certs).encode()

        class Response:
            status = 200
            headers: dict[str, str] = {}
            data = body

        return Response()


def test_iap_assertions_are_checked_by_google_auth_with_iaps_keys() -> None:
    """google.oauth2.id_token checks signature (ES256, as IAP signs), expiry and audience; the
    issuer check is ours. Only the download of IAP's keys is replaced."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    from google.auth import crypt, jwt

    def pair() -> tuple[Any, str]:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "iap")])
        now = dt.datetime.now(dt.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
                .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        return crypt.ES256Signer.from_string(pem, key_id="iap-key"), cert.public_bytes(serialization.Encoding.PEM).decode()

    signer, cert = pair()
    stranger, _ = pair()
    transport = CertsRequest({"iap-key": cert})
    verify = iap_verify(transport)
    now = int(time.time())
    claims = {"iss": IAP_ISSUER, "aud": AUDIENCE, "email": OPS, "sub": "accounts.google.com:1", "iat": now,
              "exp": now + 600}

    def token(signed_by: Any = signer, **changes: Any) -> str:
        return jwt.encode(signed_by, claims | changes).decode()

    assert verify(token(), AUDIENCE)["email"] == OPS
    assert transport.urls == ["https://www.gstatic.com/iap/verify/public_key"]
    for bad in (token(aud="/projects/9/global/backendServices/1"), token(iss="https://accounts.google.com"),
                token(signed_by=stranger), token(iat=now - 7200, exp=now - 3600)):
        with pytest.raises(ValueError):
            verify(bad, AUDIENCE)
    gate = Gate(GCP, verify_iap=verify, verify_oidc=fake_google)
    assert gate.check("203.0.113.9", {"x-goog-iap-jwt-assertion": token()}) == OPS
    assert gate.check("203.0.113.9", {"x-goog-iap-jwt-assertion": token(email="x@else.example")})[0] == 403  # type: ignore[index]


def test_a_verified_token_is_remembered_until_it_expires() -> None:
    calls: list[str] = []

    def counting(token: str, audience: str | None) -> dict[str, Any]:
        calls.append(token)
        return fake_google(token, audience) | {"exp": time.time() + 60}

    gate = Gate(GCP, verify_iap=fake_iap, verify_oidc=counting)
    for _ in range(5):
        assert gate.check("203.0.113.9", {"authorization": "Bearer ops.token.sig"}) == OPS
        assert gate.check("203.0.113.9", {"authorization": "Bearer stranger.token.sig"})[0] == 403  # type: ignore[index]
    assert calls.count("ops.token.sig") == 1
    assert calls.count("stranger.token.sig") == 5  # a refusal is not remembered


# ---- what the page is sent -----------------------------------------------------------------


def test_views_send_the_contract_fields_only() -> None:
    when = dt.datetime(2026, 12, 5, 3, 4, 5, 678000, tzinfo=dt.UTC)
    doc = {"run_id": "r1", "state": "failed", "status": "failed", "version": 7, "updated_at": when,
           "error": {"state": "preflight", "reason": "preflight_failed", "message": "tail"},
           "architecture": {"name": "demo", "project_id": "p-1", "services": {"huge": "..."}},
           "plan": {"x": 1}, "progress": {"preflight": {"a": "failed"}}, "outputs": {"urls": {"a": "http://x"}}}
    detail = run_detail(doc)
    assert detail is not None and "architecture" not in detail and "plan" not in detail
    assert detail["target"] == {"project_id": "p-1", "name": "demo"}
    assert json.loads(to_json(detail))["updated_at"] == "2026-12-05T03:04:05.678000Z"
    assert run_summary(doc)["error_reason"] == "preflight_failed"
    assert run_detail(None) is None
    assert target({"target": "p-2/other"}) == {"project_id": "p-2", "name": "other"}
    assert target({}) == {}

    class Snap:
        def __init__(self, id_: str, data: dict[str, Any]) -> None:
            self.id, self.data = id_, data

        def to_dict(self) -> dict[str, Any]:
            return self.data

    snaps = [Snap("a", {"received_at": when, "version": 1, "detail": "x" * 5000}),
             Snap("b", {"received_at": when + dt.timedelta(seconds=1), "version": 2}),
             Snap("c", {"received_at": None})]
    records = newest_first(snaps)
    assert [r["id"] for r in records] == ["b", "a", "c"]
    assert len(records[1]["detail"]) < 2100


def test_settings_for_the_dashboard_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PODIUM_DASHBOARD", "false")
    monkeypatch.setenv("PODIUM_DASHBOARD_USERS", "a@x.com")
    monkeypatch.setenv("PODIUM_DASHBOARD_MAX_STREAMS", "4")
    s = Settings()
    assert (s.dashboard, s.dashboard_users, s.dashboard_max_streams) == (False, "a@x.com", 4)
    with pytest.raises(ValueError):
        Settings(dashboard_max_streams=0)


def test_concurrent_subscribers_share_one_feed(source: FakeSource) -> None:
    hub = Hub(source, max_streams=50, recheck_seconds=60)
    loop = asyncio.new_event_loop()
    subs: list[Any] = []
    try:
        threads = [threading.Thread(target=lambda: subs.append(hub.subscribe("runs", loop))) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(subs) == 20 and all(subs) and source.started == ["runs"]
        for sub in subs:
            hub.unsubscribe(sub)
        assert hub.streams == 0
    finally:
        hub.close()
        loop.close()
