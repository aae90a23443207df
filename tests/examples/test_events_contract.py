"""The event log's contract, run against both engines through the events service's HTTP API.

Every test here runs twice: on the embedded SQLite engine and on NATS JetStream (a real nats-server, one
node, started once for the module). Each test uses a fresh topic, so the tests do not see each other's events
on the shared NATS node. The ack wait is half a second, so redelivery after a timeout is observed for real
(polled with a deadline, never slept for).
"""

from __future__ import annotations

import io
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from examples.bank.events.log import EventLog, LogSettings
from examples.bank.events.nats_log import NatsLog
from examples.bank.events.service import MAX_BODY_BYTES, EventsOptions, create_app
from examples.bank.events.sqlite_log import SqliteLog
from examples.bank.harness import serving
from examples.bank.options import ServiceOptions
from tests.support.nats_server import NatsNode, nats_server_binary, single_node
from tests.support.waiting import wait_until

ACK_WAIT_SECS = 0.5
MAX_DELIVERIES = 2
SETTINGS = LogSettings(ack_wait_secs=ACK_WAIT_SECS)
MAX_EVENT_BYTES = 4096


class EventsClient:
    """The HTTP API, as a consumer or publisher in any language would use it."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url
        self.topic = f"t-{uuid.uuid4().hex[:10]}"

    async def call(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        async with self.session.request(method, self.url + path, json=body) as response:
            text = await response.text()
            try:
                return response.status, await response.json(content_type=None)
            except ValueError:
                return response.status, text

    async def publish(self, *events: tuple[str, dict[str, object]], topic: str | None = None) -> list[Any]:
        body = {"events": [{"id": event_id, "payload": payload} for event_id, payload in events]}
        status, answer = await self.call("POST", f"/topics/{topic or self.topic}", body)
        assert status == 200, answer
        published: list[Any] = answer["published"]
        return published

    async def fetch(
        self, group: str, *, limit: int = 10, wait_ms: int = 0, topic: str | None = None
    ) -> list[Any]:
        path = f"/topics/{topic or self.topic}/groups/{group}/fetch"
        status, answer = await self.call("POST", path, {"max": limit, "wait_ms": wait_ms})
        assert status == 200, answer
        events: list[Any] = answer["events"]
        return events

    async def ack(
        self, group: str, deliveries: list[Any], *, verb: str = "ack", topic: str | None = None
    ) -> None:
        path = f"/topics/{topic or self.topic}/groups/{group}/{verb}"
        status, answer = await self.call("POST", path, {"receipts": [d["receipt"] for d in deliveries]})
        assert status == 200, answer

    async def lag(self, group: str) -> dict[str, Any]:
        status, answer = await self.call("GET", f"/topics/{self.topic}/groups/{group}")
        assert status == 200, answer
        lag: dict[str, Any] = answer
        return lag

    async def replay(self, group: str, **where: object) -> int:
        status, answer = await self.call("POST", f"/topics/{self.topic}/replay", {"group": group, **where})
        assert status == 200, answer
        return int(answer["next_offset"])

    async def read(self, topic: str | None = None) -> list[Any]:
        status, answer = await self.call("GET", f"/topics/{topic or self.topic}/events?from=1&limit=1000")
        assert status == 200, answer
        events: list[Any] = answer["events"]
        return events

    async def drain(self, group: str, *, expect: int) -> list[Any]:
        """Fetch and acknowledge until `expect` deliveries came (or the deadline passes)."""
        got: list[Any] = []

        async def more() -> bool:
            batch = await self.fetch(group, limit=50)
            if batch:
                await self.ack(group, batch)
            got.extend(batch)
            return len(got) >= expect

        await wait_until(more, timeout=10, message=f"{expect} deliveries to {group}")
        return got


@pytest.fixture(scope="module")
def nats_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsNode]:
    node = single_node(nats_server_binary(), tmp_path_factory.mktemp("nats"))
    node.start()
    yield node
    node.kill()


def log_factory(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    if request.param == "nats":
        node: NatsNode = request.getfixturevalue("nats_node")

        async def nats_log() -> EventLog:
            return NatsLog([node.url], SETTINGS)

        return nats_log

    async def sqlite_log() -> EventLog:
        return await SqliteLog.open(tmp_path / "events.db", SETTINGS)

    return sqlite_log


@pytest.fixture(params=["sqlite", "nats"])
async def events(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[EventsClient]:
    options = EventsOptions(settings=SETTINGS, max_deliveries=MAX_DELIVERIES, max_event_bytes=MAX_EVENT_BYTES)
    service = ServiceOptions(service="events", db=tmp_path / "events.db", replica="events-1")
    app = create_app(service, options, log_factory=log_factory(request, tmp_path))
    async with serving(app) as [url], aiohttp.ClientSession() as session:
        yield EventsClient(session, url)


def ids(deliveries: list[Any]) -> list[str]:
    return [d["id"] for d in deliveries]


async def test_events_are_delivered_in_order_with_consecutive_offsets(events):
    published = await events.publish(("e1", {"n": 1}), ("e2", {"n": 2}), ("e3", {"n": 3}))
    assert [(p["id"], p["offset"], p["duplicate"]) for p in published] == [
        ("e1", 1, False),
        ("e2", 2, False),
        ("e3", 3, False),
    ]
    got = await events.fetch("g", limit=10)
    assert [(d["id"], d["offset"], d["payload"], d["deliveries"]) for d in got] == [
        ("e1", 1, {"n": 1}, 1),
        ("e2", 2, {"n": 2}, 1),
        ("e3", 3, {"n": 3}, 1),
    ]


async def test_a_retried_publish_is_stored_once(events):
    await events.publish(("e1", {"n": 1}))
    again = await events.publish(("e1", {"n": 1}), ("e2", {"n": 2}))
    assert [(p["id"], p["offset"], p["duplicate"]) for p in again] == [("e1", 1, True), ("e2", 2, False)]
    assert ids(await events.read()) == ["e1", "e2"]


async def test_acknowledged_events_are_not_delivered_again(events):
    await events.publish(("e1", {}), ("e2", {}))
    got = await events.fetch("g")
    await events.ack("g", got)
    assert await events.fetch("g") == []
    lag = await events.lag("g")
    assert (lag["lag"], lag["pending"], lag["in_flight"], lag["last_offset"]) == (0, 0, 0, 2)


async def test_an_unacknowledged_event_is_delivered_again_after_the_ack_wait(events):
    await events.publish(("e1", {}))
    [first] = await events.fetch("g")
    assert await events.fetch("g") == []  # in flight: not handed to another member before its time is up
    again: list[Any] = []

    async def redelivered() -> bool:
        again.extend(await events.fetch("g"))
        return bool(again)

    await wait_until(redelivered, timeout=10, message="redelivery after the ack wait")
    assert [(d["id"], d["offset"], d["deliveries"]) for d in again] == [("e1", 1, 2)]
    assert first["deliveries"] == 1


async def test_a_refused_event_comes_back_at_once(events):
    await events.publish(("e1", {}))
    got = await events.fetch("g")
    await events.ack("g", got, verb="nack")
    again = await events.fetch("g", wait_ms=2000)
    assert [(d["id"], d["deliveries"]) for d in again] == [("e1", 2)]


async def test_groups_are_independent_and_members_of_one_group_share_the_work(events):
    await events.publish(*[(f"e{n}", {"n": n}) for n in range(1, 5)])
    first, second = await events.fetch("ledger", limit=2), await events.fetch("ledger", limit=2)
    assert ids(first) == ["e1", "e2"] and ids(second) == ["e3", "e4"]
    assert ids(await events.fetch("feed", limit=10)) == ["e1", "e2", "e3", "e4"]


async def test_a_consumer_crashing_mid_batch_loses_nothing(events):
    await events.publish(*[(f"e{n}", {"n": n}) for n in range(1, 6)])
    batch = await events.fetch("g", limit=5)
    await events.ack("g", batch[:2])  # then the consumer dies without answering for the rest
    survivors = await events.drain("g", expect=3)
    assert ids(survivors) == ["e3", "e4", "e5"]
    assert {d["deliveries"] for d in survivors} == {2}
    assert (await events.lag("g"))["lag"] == 0


async def test_replay_from_an_offset_reproduces_the_same_consumer_state(events):
    await events.publish(*[(f"e{n}", {"amount": n * 10}) for n in range(1, 7)])

    def fold(deliveries: list[Any]) -> dict[str, int]:
        state: dict[str, int] = {}
        for d in deliveries:
            state[d["id"]] = state.get(d["id"], 0) + d["payload"]["amount"]
        return state

    first = await events.drain("g", expect=6)
    assert await events.replay("g", offset=1) == 1
    second = await events.drain("g", expect=6)
    assert fold(second) == fold(first) == {f"e{n}": n * 10 for n in range(1, 7)}
    assert [d["offset"] for d in second] == [d["offset"] for d in first] == [1, 2, 3, 4, 5, 6]
    assert await events.replay("g", offset=4) == 4
    assert ids(await events.drain("g", expect=3)) == ["e4", "e5", "e6"]


async def test_replay_from_a_time_starts_at_the_first_event_published_then(events):
    await events.publish(("early-1", {}), ("early-2", {}))
    await events.publish(("late-1", {}), ("late-2", {}))
    late = next(e for e in await events.read() if e["id"] == "late-1")
    assert await events.replay("fresh", time=late["published_at"]) == late["offset"]
    assert ids(await events.drain("fresh", expect=2)) == ["late-1", "late-2"]


async def test_an_event_failing_too_often_goes_to_the_dead_letter_topic(events):
    await events.publish(("poison", {"bad": True}), ("fine", {"bad": False}))
    for attempt in range(1, MAX_DELIVERIES + 1):
        got = await events.fetch("g", limit=1, wait_ms=2000)
        assert [(d["id"], d["deliveries"]) for d in got] == [("poison", attempt)]
        await events.ack("g", got, verb="nack")
    survivors = await events.drain("g", expect=1)
    assert ids(survivors) == ["fine"]
    dead_topic = f"dlq.{events.topic}.g"
    [letter] = await events.read(dead_topic)
    assert (letter["id"], letter["payload"]) == ("poison", {"bad": True})
    assert letter["origin"] == {
        "topic": events.topic,
        "group": "g",
        "offset": 1,
        "deliveries": MAX_DELIVERIES,
    }
    assert (await events.lag("g"))["lag"] == 0
    # Once the consumer is fixed, the dead letters are read like any topic, by a group of their own.
    again = await events.fetch("g-redrive", topic=dead_topic)
    assert [(d["id"], d["origin"]["offset"]) for d in again] == [("poison", 1)]


async def test_consumer_lag_is_reported_per_group_and_as_a_metric(events):
    await events.publish(*[(f"e{n}", {}) for n in range(1, 5)])
    got = await events.fetch("g", limit=1)
    lag = await events.lag("g")
    assert (lag["lag"], lag["pending"], lag["in_flight"]) == (4, 3, 1)
    await events.ack("g", got)
    assert (await events.lag("g"))["lag"] == 3
    status, text = await events.call("GET", "/metrics")
    assert status == 200
    assert f'events_consumer_lag{{topic="{events.topic}",group="g"}} 3' in text.splitlines()
    assert f'events_published_total{{topic="{events.topic}"}} 4' in text.splitlines()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("not json", "body is not JSON"),
        ({"events": []}, "non-empty list"),
        ({"events": [{"payload": {}}]}, "id must be a non-empty string"),
        ({"events": [{"id": "e1", "payload": [1, 2]}]}, "payload must be a JSON object"),
        ({"events": [{"id": "e1", "payload": {}}, {"id": "e1", "payload": {}}]}, "same id appears twice"),
    ],
)
async def test_a_malformed_publish_is_refused_with_400_and_a_message(events, body, message):
    if isinstance(body, str):
        async with events.session.post(f"{events.url}/topics/{events.topic}", data=body) as response:
            status, answer = response.status, await response.json()
    else:
        status, answer = await events.call("POST", f"/topics/{events.topic}", body)
    assert status == 400 and message in answer["error"]
    assert await events.read() == []


async def test_bad_names_and_receipts_are_refused_with_400(events):
    status, answer = await events.call("POST", "/topics/Bad_Name", {"id": "e1", "payload": {}})
    assert status == 400 and "bad topic name" in answer["error"]
    status, answer = await events.call("POST", f"/topics/dlq.{events.topic}.g", {"id": "e1", "payload": {}})
    assert status == 400 and "dead-letter topics" in answer["error"]
    path = f"/topics/{events.topic}/groups/g/ack"
    status, answer = await events.call("POST", path, {"receipts": ["$JS.API.STREAM.DELETE.X"]})
    assert status == 400 and "not a receipt" in answer["error"]
    status, answer = await events.call("POST", f"/topics/{events.topic}/replay", {"group": "g"})
    assert status == 400 and "exactly one of offset" in answer["error"]


async def test_an_oversized_event_or_body_is_refused_with_413(events):
    status, answer = await events.call(
        "POST", f"/topics/{events.topic}", {"id": "big", "payload": {"blob": "x" * MAX_EVENT_BYTES}}
    )
    assert status == 413 and "over the limit of 4096" in answer["error"]
    huge = b'{"id": "e", "payload": {"blob": "' + b"x" * MAX_BODY_BYTES + b'"}}'
    async with events.session.post(f"{events.url}/topics/{events.topic}", data=io.BytesIO(huge)) as response:
        assert response.status == 413
        assert "over the limit" in (await response.json())["error"]
    assert await events.read() == []
