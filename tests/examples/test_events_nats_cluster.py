"""NATS JetStream as a replicated log: a 3-node cluster on loopback, one node SIGKILLed under load.

The stream has three replicas, so JetStream acknowledges a publish only once a majority of nodes stored it.
The test publishes while it kills the stream's leader, counts every publish that was acknowledged, retries the
ones that were not (same ids: the retry is stored once), and then checks end to end that the log holds every
acknowledged event exactly once and that a consumer group created before the kill receives all of them.
"""

from __future__ import annotations

import time

import nats
import pytest

from examples.bank.events.log import LogSettings, LogUnavailable, NewEvent
from examples.bank.events.nats_log import NatsLog, stream_name
from tests.support.nats_server import cluster_nodes, nats_server_binary, single_node
from tests.support.waiting import wait_until

TOPIC = "orders"
EVENTS = 300
KILL_AFTER = 100


async def test_a_sigkilled_node_loses_no_acknowledged_event(tmp_path):
    nodes = cluster_nodes(nats_server_binary(), tmp_path)
    for node in nodes:
        node.start()
    urls = [node.url for node in nodes]
    log = NatsLog(urls, LogSettings(ack_wait_secs=2.0), replicas=3)
    watcher = None
    try:

        async def cluster_ready() -> bool:
            try:
                await log.publish(TOPIC, [NewEvent("warm-up", {})])
            except LogUnavailable:
                return False
            return True

        await wait_until(
            cluster_ready, timeout=30, interval=0.2, message="the JetStream cluster to take a publish"
        )
        assert await log.fetch(TOPIC, "audit", limit=1, wait_secs=1.0)  # the group exists before the kill

        watcher = await nats.connect(servers=urls)
        leader = (await watcher.jetstream().stream_info(stream_name(TOPIC))).cluster
        assert leader is not None and leader.leader is not None
        victim = next(node for node in nodes if node.name == leader.leader)

        acknowledged: set[str] = set()
        unanswered: list[str] = []
        for n in range(EVENTS):
            if n == KILL_AFTER:
                victim.kill()
            try:
                await log.publish(TOPIC, [NewEvent(f"e{n}", {"n": n})])
                acknowledged.add(f"e{n}")
            except LogUnavailable:
                unanswered.append(f"e{n}")
        assert not victim.running
        assert len(acknowledged) >= KILL_AFTER

        async def retried() -> bool:
            while unanswered:
                try:
                    await log.publish(TOPIC, [NewEvent(unanswered[0], {})])
                except LogUnavailable:
                    return False
                unanswered.pop(0)
            return True

        await wait_until(retried, timeout=30, interval=0.2, message="the retried publishes")

        stored = [event.id for event in await log.read(TOPIC, from_offset=1, limit=EVENTS + 10)]
        assert acknowledged <= set(stored), f"lost: {sorted(acknowledged - set(stored))[:10]}"
        assert len(stored) == len(set(stored)) == EVENTS + 1  # each id once, retries included

        delivered: set[str] = set()

        async def consumed() -> bool:
            try:
                batch = await log.fetch(TOPIC, "audit", limit=100, wait_secs=0.5)
                await log.ack(TOPIC, "audit", [d.receipt for d in batch])
            except LogUnavailable:
                return False
            delivered.update(d.event.id for d in batch)
            return len(delivered) >= EVENTS + 1

        await wait_until(
            consumed, timeout=30, interval=0.05, message="the audit group to receive every event"
        )
        assert delivered == set(stored)
    finally:
        if watcher is not None:
            await watcher.close()
        await log.close()
        for node in nodes:
            node.kill()


async def test_publishing_to_an_unreachable_log_fails_fast(tmp_path):
    node = single_node(nats_server_binary(), tmp_path)  # never started: its port refuses connections
    log = NatsLog([node.url], LogSettings())
    started = time.monotonic()
    try:
        with pytest.raises(LogUnavailable, match="cannot reach NATS"):
            await log.publish(TOPIC, [NewEvent("e1", {})])
    finally:
        await log.close()
    assert time.monotonic() - started < 3.0
