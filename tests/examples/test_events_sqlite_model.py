"""The SQLite engine's consumer-group bookkeeping against a model, under any sequence of operations.

A hypothesis property: publishes (with repeated ids), fetches, acknowledgements, refusals and the passing of
the ack wait, in any order, on a fake clock. Every fetch must hand out exactly what the model says (redeliveries
first, in offset order, then new events), no event is ever with two members at once, a repeated id is stored
once, and when the consumer finally drains the topic every stored event has been acknowledged: nothing lost.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from examples.bank.events.log import LogSettings, NewEvent
from examples.bank.events.sqlite_log import SqliteLog

ACK_WAIT = 10.0

operations = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.sampled_from("abcdef")),
        st.tuples(st.just("fetch"), st.integers(1, 3)),
        st.tuples(st.just("ack"), st.integers(0, 5)),
        st.tuples(st.just("nack"), st.integers(0, 5)),
        st.tuples(st.just("tick"), st.sampled_from([1.0, ACK_WAIT])),
    ),
    max_size=30,
)


@dataclass
class Model:
    now: float = 1000.0
    ids: list[str] = field(default_factory=list)
    next_offset: int = 1
    inflight: dict[int, tuple[int, float]] = field(default_factory=dict)

    def fetch(self, limit: int) -> list[tuple[int, int]]:
        due = sorted(offset for offset, (_, visible) in self.inflight.items() if visible <= self.now)[:limit]
        taken = []
        for offset in due:
            count = self.inflight[offset][0] + 1
            self.inflight[offset] = (count, self.now + ACK_WAIT)
            taken.append((offset, count))
        while len(taken) < limit and self.next_offset <= len(self.ids):
            self.inflight[self.next_offset] = (1, self.now + ACK_WAIT)
            taken.append((self.next_offset, 1))
            self.next_offset += 1
        return taken


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=operations)
async def test_fetch_ack_and_redelivery_follow_the_model(ops):
    model = Model()
    with tempfile.TemporaryDirectory() as directory:
        log = await SqliteLog.open(
            Path(directory) / "events.db", LogSettings(ack_wait_secs=ACK_WAIT), now=lambda: model.now
        )
        try:
            outstanding: list[str] = []
            acked: set[int] = set()
            for op, argument in ops:
                if op == "publish":
                    known = argument in model.ids
                    [published] = await log.publish("t", [NewEvent(str(argument), {"id": argument})])
                    if not known:
                        model.ids.append(str(argument))
                    assert published.duplicate == known
                    assert published.offset == model.ids.index(str(argument)) + 1
                elif op == "fetch":
                    assert isinstance(argument, int)
                    got = await log.fetch("t", "g", limit=argument, wait_secs=0)
                    assert [(d.event.offset, d.deliveries) for d in got] == model.fetch(argument)
                    assert all(d.event.id == model.ids[d.event.offset - 1] for d in got)
                    outstanding.extend(d.receipt for d in got)
                elif op in ("ack", "nack") and outstanding:
                    assert isinstance(argument, int)
                    receipt = outstanding.pop(argument % len(outstanding))
                    offset = int(receipt.split(":")[0])
                    if op == "ack":
                        assert await log.ack("t", "g", [receipt]) == (1 if offset in model.inflight else 0)
                        if model.inflight.pop(offset, None) is not None:
                            acked.add(offset)
                    else:
                        await log.nack("t", "g", [receipt])
                        if offset in model.inflight:
                            model.inflight[offset] = (model.inflight[offset][0], model.now)
                elif op == "tick":
                    assert isinstance(argument, float)
                    model.now += argument
                lag = await log.lag("t", "g")
                assert (lag.pending, lag.in_flight) == (
                    len(model.ids) - model.next_offset + 1,
                    len(model.inflight),
                )

            assert [event.id for event in await log.read("t", from_offset=1, limit=100)] == model.ids
            model.now += ACK_WAIT  # the consumer comes back later and drains everything
            while batch := await log.fetch("t", "g", limit=10, wait_secs=0):
                await log.ack("t", "g", [d.receipt for d in batch])
                acked.update(d.event.offset for d in batch)
            assert acked == set(range(1, len(model.ids) + 1))
            assert (await log.lag("t", "g")).lag == 0
        finally:
            await log.close()
