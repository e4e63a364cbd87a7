"""Optional notifications: every applied run transition as a small JSON message on
``PODIUM_NOTIFICATIONS_TOPIC``, for chat bots and dashboards. Best effort by design:
a lost notification never blocks or fails a run (the Firestore audit log is the record).
"""

from __future__ import annotations

import json

import structlog

from daemon.config import Settings
from daemon.pubsub import EventPublisher, topic_path
from daemon.store import Applied

log = structlog.get_logger("podium.notify")


class Notifier:
    def __init__(self, settings: Settings, publisher: EventPublisher) -> None:
        self.topic = topic_path(settings.project, settings.notifications_topic) if settings.notifications_topic else None
        self.publisher = publisher

    def __call__(self, applied: Applied) -> None:
        decision = applied.decision
        if self.topic is None or decision is None or decision.from_state == decision.to_state:
            return
        body = {
            "run_id": applied.run_id,
            "from": decision.from_state,
            "to": decision.to_state,
            "status": decision.run.status,
            "version": decision.run.version,
        }
        if decision.run.error is not None:
            body["error"] = decision.run.error.model_dump()
        attrs = {"run_id": applied.run_id}
        if applied.run is not None and applied.run.trace_id:
            attrs["trace_id"] = applied.run.trace_id
        try:
            future = self.publisher.client.publish(self.topic, json.dumps(body).encode(), **attrs)
            future.add_done_callback(lambda f: f.exception() and log.warning("notification lost"))
        except Exception as exc:  # noqa: BLE001
            log.warning("notification not published", error=repr(exc))
