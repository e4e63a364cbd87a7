"""Streaming pull on the daemon's subscriptions; every message goes through the engine.

The callback is thin: wrap the message, let the engine commit (or record a reject), then
ack; nack only on transient failure so Pub/Sub redelivers and finally dead-letters. Flow
control bounds what is in flight. Shutdown cancels the streams and waits for callbacks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import structlog
from google.cloud import pubsub_v1
from google.cloud.pubsub_v1.subscriber.message import Message
from google.cloud.pubsub_v1.subscriber.scheduler import ThreadScheduler

from daemon.config import Settings
from daemon.engine import Engine, Inbound, Verdict
from daemon.pubsub import sub_path

log = structlog.get_logger("podium.intake")


class PullIntake:
    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        self.client = pubsub_v1.SubscriberClient()
        self._futures: dict[str, pubsub_v1.subscriber.futures.StreamingPullFuture] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        s = self.settings
        routes: dict[str, tuple[str, Callable[[Inbound], Verdict]]] = {
            s.commands_subscription: ("commands", self.engine.on_command),
            s.events_subscription: ("events", self.engine.on_event),
            s.dead_letter_subscription: ("dead-letter", self.engine.on_dead_letter),
        }
        if s.backend == "gcp":
            routes[s.cloud_builds_subscription] = ("cloud-builds", self.engine.on_cloud_build)
        flow = pubsub_v1.types.FlowControl(max_messages=s.max_messages)
        for sub, (source, handle) in routes.items():
            scheduler = ThreadScheduler(ThreadPoolExecutor(max_workers=16, thread_name_prefix=f"pull-{source}"))
            future = self.client.subscribe(
                sub_path(s.project, sub),
                callback=self._callback(source, handle),
                flow_control=flow,
                scheduler=scheduler,
                await_callbacks_on_shutdown=True,
            )
            self._futures[sub] = future
        log.info("pulling", subscriptions=list(routes))

    def _callback(self, source: str, handle: Callable[[Inbound], Verdict]) -> Callable[[Message], None]:
        def callback(message: Message) -> None:
            inbound = Inbound(
                message_id=message.message_id,
                data=message.data,
                attributes=dict(message.attributes),
                delivery_attempt=message.delivery_attempt,
                source=source,
            )
            if handle(inbound) is Verdict.ACK:
                message.ack()
            else:
                message.nack()

        return callback

    def healthy(self) -> bool:
        return bool(self._futures) and all(not f.done() for f in self._futures.values())

    def stop(self, timeout: float = 5.0) -> None:
        for future in self._futures.values():
            future.cancel()
        for sub, future in self._futures.items():
            try:
                future.result(timeout=timeout)
            except Exception as exc:  # noqa: BLE001 - cancelled or already broken
                log.debug("stream closed", subscription=sub, error=repr(exc))
        self.client.close()
