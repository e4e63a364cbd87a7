"""Streaming pull on the daemon's subscriptions; every message goes through the engine.

The callback is thin: wrap the message, let the engine commit (or record a reject), then
ack; nack only on transient failure so Pub/Sub redelivers and finally dead-letters. Flow
control bounds what is in flight. Shutdown cancels the streams and waits for callbacks.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import google.cloud.pubsub_v1 as pubsub_v1  # no py.typed: imported as a module, mypy reads it as Any
import grpc
import structlog
from google.cloud.pubsub_v1.subscriber.message import Message
from google.cloud.pubsub_v1.subscriber.scheduler import ThreadScheduler
from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

from daemon.config import Settings
from daemon.engine import Engine, Inbound, Verdict
from daemon.pubsub import sub_path

log = structlog.get_logger("podium.intake")


def subscriber_client() -> pubsub_v1.SubscriberClient:
    """A subscriber client that can receive any message Pub/Sub accepts (up to 10 MB).

    On the emulator the client library opens a bare channel with gRPC's default 4 MiB receive
    limit (its production channels have none): a larger message would break every streaming
    pull response it is part of, again at each redelivery, starving the messages batched
    with it. Give the emulator channel the production limits.
    """
    host = os.environ.get("PUBSUB_EMULATOR_HOST")
    if not host:
        return pubsub_v1.SubscriberClient()
    channel = grpc.insecure_channel(
        host, options=[("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    )
    return pubsub_v1.SubscriberClient(transport=SubscriberGrpcTransport(channel=channel))


class PullIntake:
    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        self.client = subscriber_client()
        self._futures: dict[str, pubsub_v1.subscriber.futures.StreamingPullFuture] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        s = self.settings
        routes = self.engine.routes()
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
