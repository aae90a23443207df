"""The replicated engine: the event log on NATS JetStream (Debian's `nats-server`, run with `-js`).

How the interface maps onto JetStream:

- a topic `t` is a stream `EV_t` (dots become `_`) holding the one subject `events.t`, with file storage,
  `num_replicas` copies (3 on a 3-node cluster: a publish is acknowledged once a majority has it, so a node
  killed with SIGKILL loses no acknowledged event), `max_age` = the retention, and `duplicate_window`;
- an event's id is the `Nats-Msg-Id` header: JetStream stores one message per id within the duplicate window
  and answers a repeat with the first one's sequence and `duplicate: true`;
- offsets are stream sequence numbers (1, 2, ...);
- a group is a durable pull consumer named after it, explicit acknowledgement, `ack_wait`, no server-side
  delivery limit (the service counts deliveries and dead-letters by itself, the same way for both engines);
- a receipt is the message's JetStream reply subject (`$JS.ACK.<stream>.<group>....`): any replica of the
  events service can acknowledge with it (`+ACK`) or give the message back (`-NAK`);
- a reset deletes the durable consumer and creates it again starting at a sequence or a time;
- lag is the consumer's `num_pending` (not delivered yet) plus `num_ack_pending` (in flight).
"""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import Sequence
from typing import Final

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType

from examples.bank.events.log import (
    Delivery,
    GroupLag,
    LogSettings,
    LogUnavailable,
    NewEvent,
    Published,
    StoredEvent,
    UnknownReceipt,
)

SUBJECT_PREFIX: Final = "events."
STREAM_PREFIX: Final = "EV_"
MSG_ID: Final = "Nats-Msg-Id"
REQUEST_TIMEOUT_SECS: Final = 2.0
CONNECT_TIMEOUT_SECS: Final = 1.0
MIN_FETCH_SECS: Final = 0.1
MAX_IN_FLIGHT: Final = 10_000
"""Deliveries a group may have unacknowledged at once; past it the group gets nothing new until some settle."""

_FAILURES: Final = (nats.errors.Error, TimeoutError, OSError)


def stream_name(topic: str) -> str:
    return STREAM_PREFIX + topic.replace(".", "_")


def topic_of_stream(stream: str) -> str:
    return stream[len(STREAM_PREFIX) :].replace("_", ".")


class NatsLog:
    """The EventLog on JetStream. Connects on first use and reconnects by itself (to any server listed)."""

    def __init__(self, servers: Sequence[str], settings: LogSettings, *, replicas: int = 1) -> None:
        if not servers:
            raise ValueError("at least one NATS server URL is needed")
        if replicas not in (1, 3, 5):
            raise ValueError(f"stream replicas must be 1, 3 or 5, got {replicas}")
        self._servers = list(servers)
        self._settings = settings
        self._replicas = replicas
        self._client: Client | None = None
        self._js: JetStreamContext | None = None
        self._connecting = asyncio.Lock()
        self._streams: set[str] = set()
        self._subscriptions: dict[tuple[str, str], JetStreamContext.PullSubscription] = {}
        self._fetching: dict[tuple[str, str], asyncio.Lock] = {}

    def __repr__(self) -> str:
        return f"NatsLog({self._servers}, replicas={self._replicas})"

    async def close(self) -> None:
        if self._client is not None:
            client, self._client, self._js = self._client, None, None
            try:
                await client.close()
            except _FAILURES:
                pass

    async def publish(self, topic: str, events: Sequence[NewEvent]) -> list[Published]:
        js = await self._stream(topic)
        answers = []
        try:
            for event in events:
                ack = await js.publish(
                    SUBJECT_PREFIX + topic,
                    _encode(event),
                    timeout=REQUEST_TIMEOUT_SECS,
                    stream=stream_name(topic),
                    headers={MSG_ID: event.id},
                )
                answers.append(Published(event.id, int(ack.seq), bool(ack.duplicate)))
        except _FAILURES as exc:
            raise LogUnavailable(f"publish to {topic}: {type(exc).__name__}: {exc}") from exc
        return answers

    async def fetch(self, topic: str, group: str, *, limit: int, wait_secs: float) -> list[Delivery]:
        # One fetch at a time per subscription: concurrent fetches would share its inbox and take each
        # other's messages.
        async with self._fetching.setdefault((topic, group), asyncio.Lock()):
            subscription = await self._subscription(topic, group)
            try:
                messages = await subscription.fetch(limit, timeout=max(wait_secs, MIN_FETCH_SECS))
            except TimeoutError:  # nothing to deliver within the wait (nats' own TimeoutError is one too)
                return []
            except _FAILURES as exc:
                self._subscriptions.pop((topic, group), None)
                raise LogUnavailable(f"fetch from {topic} for {group}: {type(exc).__name__}: {exc}") from exc
        deliveries = []
        for message in messages:
            metadata = message.metadata
            headers = message.headers or {}
            body = json.loads(message.data)
            event = StoredEvent(
                topic=topic,
                offset=int(metadata.sequence.stream),
                id=str(headers.get(MSG_ID, "")),
                payload=body.get("payload", {}),
                published_at=metadata.timestamp.timestamp(),
                origin=body.get("origin"),
            )
            deliveries.append(Delivery(event, int(metadata.num_delivered), message.reply))
        return deliveries

    async def ack(self, topic: str, group: str, receipts: Sequence[str]) -> int:
        return await self._answer(topic, group, receipts, b"+ACK")

    async def nack(self, topic: str, group: str, receipts: Sequence[str]) -> int:
        return await self._answer(topic, group, receipts, b"-NAK")

    async def reset(self, topic: str, group: str, *, offset: int | None, at_time: float | None) -> int:
        js = await self._stream(topic)
        stream = stream_name(topic)
        config = self._consumer_config(group)
        if offset is not None:
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = max(offset, 1)
        else:
            assert at_time is not None
            config.deliver_policy = DeliverPolicy.BY_START_TIME
            config.opt_start_time = datetime.datetime.fromtimestamp(at_time, tz=datetime.UTC)
        try:
            try:
                await js.delete_consumer(stream, group)
            except nats.js.errors.NotFoundError:
                pass
            self._subscriptions.pop((topic, group), None)
            await js.add_consumer(stream, config=config)
            info = await js.consumer_info(stream, group)
            last = int((await js.stream_info(stream)).state.last_seq)
        except _FAILURES as exc:
            raise LogUnavailable(f"reset {group} on {topic}: {type(exc).__name__}: {exc}") from exc
        return last - int(info.num_pending or 0) + 1

    async def read(self, topic: str, *, from_offset: int, limit: int) -> list[StoredEvent]:
        js = await self._stream(topic)
        stream = stream_name(topic)
        events = []
        try:
            state = (await js.stream_info(stream)).state
            first = max(from_offset, int(state.first_seq))
            for seq in range(first, min(int(state.last_seq), first + limit - 1) + 1):
                try:
                    raw = await js.get_msg(stream, seq)
                except nats.js.errors.NotFoundError:
                    continue  # deleted by retention
                body = json.loads(raw.data or b"{}")
                events.append(
                    StoredEvent(
                        topic=topic,
                        offset=seq,
                        id=str((raw.headers or {}).get(MSG_ID, "")),
                        payload=body.get("payload", {}),
                        published_at=raw.time.timestamp() if raw.time is not None else 0.0,
                        origin=body.get("origin"),
                    )
                )
        except _FAILURES as exc:
            raise LogUnavailable(f"read {topic}: {type(exc).__name__}: {exc}") from exc
        return events

    async def lag(self, topic: str, group: str) -> GroupLag:
        js = await self._stream(topic)
        stream = stream_name(topic)
        try:
            state = (await js.stream_info(stream)).state
            try:
                info = await js.consumer_info(stream, group)
            except nats.js.errors.NotFoundError:
                return GroupLag(topic, group, int(state.messages), 0, int(state.last_seq))
        except _FAILURES as exc:
            raise LogUnavailable(f"lag of {group} on {topic}: {type(exc).__name__}: {exc}") from exc
        return GroupLag(
            topic, group, int(info.num_pending or 0), int(info.num_ack_pending or 0), int(state.last_seq)
        )

    async def groups(self) -> list[GroupLag]:
        js = await self._connected()
        found = []
        try:
            for stream in await js.streams_info():
                name = stream.config.name or ""
                if not name.startswith(STREAM_PREFIX):
                    continue
                topic = topic_of_stream(name)
                for consumer in await js.consumers_info(name):
                    found.append(
                        GroupLag(
                            topic,
                            str(consumer.name),
                            int(consumer.num_pending or 0),
                            int(consumer.num_ack_pending or 0),
                            int(stream.state.last_seq),
                        )
                    )
        except _FAILURES as exc:
            raise LogUnavailable(f"list groups: {type(exc).__name__}: {exc}") from exc
        return sorted(found, key=lambda lag: (lag.topic, lag.group))

    async def _answer(self, topic: str, group: str, receipts: Sequence[str], verb: bytes) -> int:
        prefix = f"$JS.ACK.{stream_name(topic)}.{group}."
        for receipt in receipts:
            if not receipt.startswith(prefix):
                raise UnknownReceipt(f"not a receipt of group {group} on {topic}: {receipt!r}")
        await self._connected()
        client = self._client
        assert client is not None
        try:
            # A request, not a plain publish: JetStream answers once it has applied the acknowledgement, so
            # the lag read right after it already counts it.
            await asyncio.gather(
                *(client.request(receipt, verb, timeout=REQUEST_TIMEOUT_SECS) for receipt in receipts)
            )
        except _FAILURES as exc:
            raise LogUnavailable(f"acknowledge on {topic}: {type(exc).__name__}: {exc}") from exc
        return len(receipts)

    def _consumer_config(self, group: str) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=group,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self._settings.ack_wait_secs,
            max_deliver=-1,
            deliver_policy=DeliverPolicy.ALL,
            max_ack_pending=MAX_IN_FLIGHT,
        )

    async def _subscription(self, topic: str, group: str) -> JetStreamContext.PullSubscription:
        key = (topic, group)
        found = self._subscriptions.get(key)
        if found is not None:
            return found
        js = await self._stream(topic)
        try:
            subscription = await js.pull_subscribe(
                SUBJECT_PREFIX + topic,
                durable=group,
                stream=stream_name(topic),
                config=self._consumer_config(group),
            )
        except _FAILURES as exc:
            raise LogUnavailable(f"join {group} on {topic}: {type(exc).__name__}: {exc}") from exc
        self._subscriptions[key] = subscription
        return subscription

    async def _stream(self, topic: str) -> JetStreamContext:
        js = await self._connected()
        name = stream_name(topic)
        if name in self._streams:
            return js
        try:
            try:
                await js.stream_info(name)
            except nats.js.errors.NotFoundError:
                try:
                    await js.add_stream(
                        name=name,
                        subjects=[SUBJECT_PREFIX + topic],
                        storage=StorageType.FILE,
                        num_replicas=self._replicas,
                        max_age=self._settings.retention_secs,
                        duplicate_window=min(
                            self._settings.duplicate_window_secs, self._settings.retention_secs
                        ),
                    )
                except nats.js.errors.BadRequestError:
                    await js.stream_info(name)  # another replica created it meanwhile: it must be there now
        except _FAILURES as exc:
            raise LogUnavailable(f"stream for {topic}: {type(exc).__name__}: {exc}") from exc
        self._streams.add(name)
        return js

    async def _connected(self) -> JetStreamContext:
        async with self._connecting:
            if self._js is not None and self._client is not None and not self._client.is_closed:
                return self._js
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_SECS):
                    client = await nats.connect(
                        servers=self._servers,
                        connect_timeout=CONNECT_TIMEOUT_SECS,
                        max_reconnect_attempts=-1,
                        reconnect_time_wait=0.2,
                        allow_reconnect=True,
                    )
            except _FAILURES as exc:
                raise LogUnavailable(
                    f"cannot reach NATS at {self._servers}: {type(exc).__name__}: {exc}"
                ) from exc
            self._client, self._js = client, client.jetstream(timeout=REQUEST_TIMEOUT_SECS)
            self._subscriptions.clear()
            return self._js


def _encode(event: NewEvent) -> bytes:
    body: dict[str, object] = {"payload": dict(event.payload)}
    if event.origin is not None:
        body["origin"] = dict(event.origin)
    return json.dumps(body).encode()
