"""Live data for the dashboard: Firestore ``on_snapshot`` listeners fanned out to event streams.

A *feed* is one key — ``runs`` (the most recently updated runs) or ``run:<id>`` (one run
document and its audit log) — with its Firestore listeners, started by its first subscriber and
stopped when its last one leaves, so any number of tabs on one run cost one set of listeners.
Each listener callback turns the snapshot into JSON once and offers it to every subscriber.

A *subscriber* is one open event stream (one browser tab). It keeps only the latest payload of
each kind (``run``, ``events``, ``runs``): a slow client skips intermediate states instead of
queueing them, so its memory is bounded by one snapshot per kind. The hub caps the number of
subscribers (``PODIUM_DASHBOARD_MAX_STREAMS``); one more is refused (503), not queued.

The safety net, as ``podium watch`` has one: every few seconds the hub restarts a listener
whose stream died, and re-reads the document of a run it shows as not finished (one read; its
audit log is re-read only if that document had changed unseen), since a listen stream of the
emulator under load has been seen to drop an update. That is the server's business: the
browser never polls, it is pushed to.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog
from google.cloud import firestore

from daemon.config import Settings
from daemon.dashboard.views import audit_record, run_detail, run_summary, to_json

log = structlog.get_logger("podium.dashboard")

RUNS_KEY = "runs"
RUNS_LIMIT = 200  # the runs list: the most recently updated
EVENTS_LIMIT = 300  # the run page's audit log: the latest records
RECHECK_SECONDS = 5.0
SETTLED = frozenset({"succeeded", "failed", "cancelled", "torn_down"})

# (kind, JSON) -> whether it differed from the feed's last payload of that kind
Emit = Callable[[str, str], bool]


def run_key(run_id: str) -> str:
    return f"run:{run_id}"


class Listener(Protocol):
    def alive(self) -> bool: ...

    def stop(self) -> None: ...


class Source(Protocol):
    """Where feeds come from: Firestore in the daemon, a fake in unit tests."""

    def listen(self, key: str, emit: Emit) -> Listener: ...

    def refresh(self, key: str, latest: Mapping[str, str], emit: Emit) -> None: ...

    def exists(self, run_id: str) -> bool: ...

    def close(self) -> None: ...


class Subscriber:
    """One event stream. ``offer`` may be called from any thread; ``next`` on the stream's loop."""

    def __init__(self, key: str, loop: asyncio.AbstractEventLoop) -> None:
        self.key = key
        self._loop = loop
        self._pending: dict[str, str] = {}
        self._wake = asyncio.Event()
        self.closed = False

    def offer(self, kind: str, data: str) -> None:
        self._call(self._put, kind, data)

    def close(self) -> None:
        self._call(self._close)

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # its loop is closed: the stream is gone already
            self._loop.call_soon_threadsafe(fn, *args)

    def _put(self, kind: str, data: str) -> None:
        self._pending[kind] = data  # the latest of each kind only
        self._wake.set()

    def _close(self) -> None:
        self.closed = True
        self._wake.set()

    async def next(self, timeout: float) -> list[tuple[str, str]] | None:
        """What arrived since the last call ([] after ``timeout`` with nothing new); None once closed."""
        if not self._pending and not self.closed:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                return []
        self._wake.clear()
        if self.closed:
            return None
        batch = list(self._pending.items())
        self._pending.clear()
        return batch


class Feed:
    def __init__(self, key: str) -> None:
        self.key = key
        self.subscribers: set[Subscriber] = set()
        self.latest: dict[str, str] = {}
        self._lock = threading.Lock()
        self._listener: Listener | None = None
        self._stopped = False

    def add(self, sub: Subscriber) -> None:
        with self._lock:
            self.subscribers.add(sub)
            for kind, data in self.latest.items():  # what the others already saw
                sub.offer(kind, data)

    def emit(self, kind: str, data: str) -> bool:
        with self._lock:
            if self._stopped or self.latest.get(kind) == data:
                return False
            self.latest[kind] = data
            subs = list(self.subscribers)
        for sub in subs:
            sub.offer(kind, data)
        return True

    def start(self, source: Source) -> None:
        try:
            listener = source.listen(self.key, self.emit)
        except Exception as exc:  # noqa: BLE001 - Firestore unreachable: the recheck tries again
            log.warning("dashboard listener failed to start", key=self.key, error=repr(exc))
            self.emit("problem", to_json({"message": f"cannot listen to Firestore now: {exc}"}))
            return
        with self._lock:
            stopped = self._stopped
            if not stopped:
                self._listener = listener
        if stopped:  # the last subscriber left while it started
            listener.stop()
        elif "problem" in self.latest:
            self.emit("problem", "null")  # listening again

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            listener, self._listener = self._listener, None
        if listener is not None:
            listener.stop()

    def check(self, source: Source) -> None:
        """The safety net: restart a dead listener, re-read what a dropped update may have hidden."""
        with self._lock:
            if self._stopped:
                return
            listener = self._listener
        if listener is None or not listener.alive():
            if listener is not None:
                log.warning("dashboard listener died; restarting", key=self.key)
                listener.stop()
            self.start(source)
        source.refresh(self.key, dict(self.latest), self.emit)


class Hub:
    def __init__(self, source: Source, max_streams: int, recheck_seconds: float = RECHECK_SECONDS) -> None:
        self.source = source
        self.max_streams = max_streams
        self.recheck_seconds = recheck_seconds
        self._feeds: dict[str, Feed] = {}
        self._count = 0
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._stopper = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dashboard-stop")
        self._rechecker: threading.Thread | None = None

    @property
    def streams(self) -> int:
        return self._count

    def feeds(self) -> list[str]:
        with self._lock:
            return list(self._feeds)

    def subscribe(self, key: str, loop: asyncio.AbstractEventLoop) -> Subscriber | None:
        """A new stream on ``key`` (None: the hub is full or closed). Blocks while a first
        subscriber starts the feed's listeners: call it from a worker thread."""
        with self._lock:
            if self._closed.is_set() or self._count >= self.max_streams:
                return None
            self._count += 1
            sub = Subscriber(key, loop)
            feed = self._feeds.get(key)
            new = feed is None
            if feed is None:
                feed = self._feeds[key] = Feed(key)
            feed.add(sub)
            if self._rechecker is None:
                self._rechecker = threading.Thread(target=self._recheck_loop, name="dashboard-recheck", daemon=True)
                self._rechecker.start()
        if new:
            feed.start(self.source)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        """Never blocks (it runs where a stream ends, on the event loop)."""
        with self._lock:
            feed = self._feeds.get(sub.key)
            if feed is None or sub not in feed.subscribers:
                return
            feed.subscribers.discard(sub)
            self._count -= 1
            if feed.subscribers:
                return
            del self._feeds[sub.key]
        try:
            self._stopper.submit(feed.stop)  # unsubscribing joins Firestore's threads
        except RuntimeError:  # the hub was closed meanwhile: stop it here
            feed.stop()

    def close(self) -> None:
        """End every stream and stop every listener (the daemon stops)."""
        with self._lock:
            self._closed.set()
            feeds = list(self._feeds.values())
            self._feeds.clear()
        for feed in feeds:
            for sub in list(feed.subscribers):
                sub.close()
            feed.stop()
        self._stopper.shutdown(wait=False)  # never blocks the daemon's bounded stop
        self.source.close()

    def _recheck_loop(self) -> None:
        while not self._closed.wait(self.recheck_seconds):
            with self._lock:
                feeds = list(self._feeds.values())
            for feed in feeds:
                try:
                    feed.check(self.source)
                except Exception as exc:  # noqa: BLE001 - the next round tries again
                    log.warning("dashboard recheck failed", key=feed.key, error=repr(exc))


# ---- Firestore -------------------------------------------------------------------------------


class _Watches:
    def __init__(self, *watches: Any) -> None:
        self.watches = watches

    def alive(self) -> bool:
        return all(getattr(w, "is_active", True) and not getattr(w, "_closed", False) for w in self.watches)

    def stop(self) -> None:
        for w in self.watches:
            try:
                w.unsubscribe()
            except Exception as exc:  # noqa: BLE001 - it is going away either way
                log.debug("unsubscribe failed", error=repr(exc))


class FirestoreSource:
    """Feeds from the run collection through the official client's ``on_snapshot``."""

    def __init__(self, settings: Settings, client: firestore.Client | None = None) -> None:
        self.settings = settings
        self._client = client
        self._client_lock = threading.Lock()

    @property
    def client(self) -> firestore.Client:
        with self._client_lock:  # made on first use: a daemon nobody watches opens no listener
            if self._client is None:
                self._client = firestore.Client(project=self.settings.project)
            return self._client

    def _runs(self) -> Any:
        return self.client.collection(self.settings.collection)

    def close(self) -> None:
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def exists(self, run_id: str) -> bool:
        return bool(self._runs().document(run_id).get(field_paths=["status"]).exists)

    def listen(self, key: str, emit: Emit) -> Listener:
        if key == RUNS_KEY:
            query = self._runs().order_by("updated_at", direction=firestore.Query.DESCENDING).limit(RUNS_LIMIT)

            def on_runs(snaps: list[Any], _changes: Any, _read_time: Any) -> None:
                rows = [run_summary(s.to_dict() or {}) for s in snaps]
                rows.sort(key=lambda r: (r["updated_at"] or _EPOCH, str(r["run_id"])), reverse=True)
                emit("runs", to_json(rows))

            return _Watches(query.on_snapshot(on_runs))
        run_id = key.removeprefix("run:")
        ref = self._runs().document(run_id)

        def on_doc(snaps: list[Any], _changes: Any, _read_time: Any) -> None:
            snap = snaps[0] if snaps else None
            emit("run", to_json(run_detail(snap.to_dict() if snap is not None and snap.exists else None)))

        def on_events(snaps: list[Any], _changes: Any, _read_time: Any) -> None:
            emit("events", to_json(newest_first(snaps)))

        doc_watch = ref.on_snapshot(on_doc)
        try:
            events_watch = self._audit(ref).on_snapshot(on_events)
        except Exception:
            doc_watch.unsubscribe()
            raise
        return _Watches(doc_watch, events_watch)

    def _audit(self, ref: Any) -> Any:
        return ref.collection("events").order_by("received_at", direction=firestore.Query.DESCENDING).limit(EVENTS_LIMIT)

    def refresh(self, key: str, latest: Mapping[str, str], emit: Emit) -> None:
        if key == RUNS_KEY:
            return  # a stale row is corrected by the run's next update; the run page re-reads
        shown = json.loads(latest["run"]) if "run" in latest else None
        if shown is not None and shown.get("status") in SETTLED:
            return
        snap = self._runs().document(key.removeprefix("run:")).get()
        if emit("run", to_json(run_detail(snap.to_dict() if snap.exists else None))):
            log.info("dashboard listener had missed an update", key=key)
            emit("events", to_json(newest_first(self._audit(snap.reference).stream())))


def newest_first(snaps: Any) -> list[dict[str, Any]]:
    """Audit records, newest first (a listener hands its documents over in its own order)."""
    records = [audit_record(s.id, s.to_dict() or {}) for s in snaps]
    records.sort(key=lambda r: (r["received_at"] or _EPOCH, r["version"] or 0, r["id"]), reverse=True)
    return records


_EPOCH = datetime.min.replace(tzinfo=UTC)
