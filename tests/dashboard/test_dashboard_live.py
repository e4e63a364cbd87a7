"""The dashboard's Firestore listeners and its buttons against the emulators and a real daemon
(stand-in effects, a few seconds each): the streams follow a run as the engine moves it, and
cancel/retry publish the commands the daemon records in the run's audit log."""

from __future__ import annotations

from typing import Any

import requests

from tests.dashboard.test_dashboard_app import Stream
from tests.integration.conftest import audit, publish, run_doc, start_body, wait_for


def until(stream: Stream, kind: str, predicate: Any, limit: int = 200, seen: dict[str, Any] | None = None) -> Any:
    """The first ``kind`` event matching ``predicate``; with ``seen``, the latest event of each kind
    read so far is kept there, and a matching one read earlier (while waiting for another kind)
    counts: the two listeners' updates come in either order."""
    if seen is not None and kind in seen and predicate(seen[kind]):
        return seen[kind]
    for _ in range(limit):
        got_kind, data = stream.next_event()
        if seen is not None:
            seen[got_kind] = data
        if got_kind == kind and predicate(data):
            return data
    raise AssertionError(f"no {kind} event matched")


def test_streams_follow_a_run_from_firestore(settings, db, daemon_factory):
    daemon = daemon_factory(settings)
    base = f"http://127.0.0.1:{daemon.http.port}/dashboard/api"
    run_stream = Stream(f"{base}/runs/live-1/stream")  # before the run exists
    runs_stream = Stream(f"{base}/runs/stream")
    try:
        assert until(run_stream, "run", lambda d: True) is None  # no such run yet
        publish(settings, start_body("live-1"))
        seen: dict[str, Any] = {}
        done = until(run_stream, "run", lambda d: d and d["status"] == "succeeded", seen=seen)
        assert done["state"] == "succeeded" and done["target"] == {"project_id": "podium-local", "name": "podium-demo"}
        assert "architecture" not in done
        assert done["progress"]["build"] == {"director": "succeeded", "publisher": "succeeded",
                                             "subscriber": "succeeded"}
        records = until(run_stream, "events", lambda e: e and e[0]["type"] == "director.dependent_complete", seen=seen)
        assert [r["type"] for r in records][-1] == "command.start"  # newest first
        assert len(records) == len(audit(db, settings, "live-1"))
        rows = until(runs_stream, "runs", lambda rs: any(r["run_id"] == "live-1" and r["status"] == "succeeded"
                                                           for r in rs))
        assert [r for r in rows if r["run_id"] == "live-1"][0]["target"]["name"] == "podium-demo"
    finally:
        run_stream.close()
        runs_stream.close()
    wait_for(lambda: daemon.http.dashboard.hub.streams == 0 and not daemon.http.dashboard.hub.feeds(), 10,
             "the streams and their listeners to be released")


def test_cancel_and_retry_buttons_reach_the_machine(settings, db, daemon_factory):
    daemon = daemon_factory(settings)
    daemon.effects.handlers["director.command"] = lambda ctx: []  # a director that never answers
    publish(settings, start_body("held-1"))
    wait_for(lambda: (run_doc(db, settings, "held-1") or {}).get("state") == "awaiting_director", 30,
             "awaiting_director")
    base = f"http://127.0.0.1:{daemon.http.port}/dashboard/api/runs/held-1"
    stream = Stream(f"{base}/stream")
    try:
        assert until(stream, "run", lambda d: True)["state"] == "awaiting_director"
        reply = requests.post(f"{base}/cancel", headers={"X-Podium-Dashboard": "1"}, timeout=30)
        assert reply.status_code == 202, reply.text
        cancelled = until(stream, "run", lambda d: d["status"] != "running")
        assert (cancelled["state"], cancelled["status"]) == ("cancelled", "cancelled")
        record = [e for e in audit(db, settings, "held-1") if e["type"] == "command.cancel"]
        assert [(e["message_id"], e["outcome"]) for e in record] == [(reply.json()["message_id"], "applied")]

        retry = requests.post(f"{base}/retry", headers={"X-Podium-Dashboard": "1"}, timeout=30)
        assert retry.status_code == 202, retry.text
        # what the machine does with a retry of a cancelled run is its own business; it is recorded
        wait_for(lambda: [e for e in audit(db, settings, "held-1")
                          if e["type"] == "command.retry" and e["message_id"] == retry.json()["message_id"]],
                 30, "the retry's audit record")
    finally:
        stream.close()
    assert requests.post(f"{base}/cancel", timeout=10).status_code == 403  # no header: not from the page
