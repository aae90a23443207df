"""The events service: the bank's event log behind plain HTTP, so any language needs only an HTTP client.

Endpoints (JSON in and out; every call reaches it through meshd with `Host: events`):

- `POST /topics/{topic}` with `{"events": [{"id", "payload"}, ...]}` (or one `{"id", "payload"}`) publishes;
  the id is the idempotency key, so a retried publish is stored once (`"duplicate": true` in the answer);
- `POST /topics/{topic}/groups/{group}/fetch` with `{"max": 10, "wait_ms": 1000}` hands out events to one
  member of a consumer group; each comes with a `receipt` and its delivery count;
- `POST /topics/{topic}/groups/{group}/ack` (and `/nack`) with `{"receipts": [...]}` settles deliveries; an
  unsettled one is delivered again after the ack wait;
- `POST /topics/{topic}/replay` with `{"group", "offset"}` or `{"group", "time"}` starts the group again there;
- `GET /topics/{topic}/groups/{group}` the group's lag, `GET /groups` every group's, `GET /metrics` the same
  as Prometheus text; `GET /topics/{topic}/events?from=1&limit=100` reads without a group.

An event delivered `max_deliveries` times without being acknowledged is, at its next delivery, moved to the
dead-letter topic `dlq.<topic>.<group>` (same id and payload, plus `origin`) and acknowledged on the original
topic, so one poison event cannot stall its group. Dead-letter topics are read like any topic.

Bad input answers 400 with a message; a body over `MAX_BODY_BYTES` or an event payload over the configured
size answers 413; an unreachable engine answers 503, quickly, so a publisher can keep the event and retry.

Run `python -m examples.bank.events --port P --db events.db --replica events-1 [--backend nats --nats URL]`.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from aiohttp import web

from examples.bank.events.log import (
    EventLog,
    LogSettings,
    LogUnavailable,
    NewEvent,
    UnknownReceipt,
    dead_letter_topic,
    is_dead_letter_topic,
    valid_group,
    valid_topic,
)
from examples.bank.options import ServiceOptions, parse_options
from examples.bank.replica import create_replica_app

MAX_BODY_BYTES: Final = 1024 * 1024
MAX_BATCH: Final = 500
MAX_ID_CHARS: Final = 200
MAX_WAIT_MS: Final = 5000
DEFAULT_MAX_EVENT_BYTES: Final = 64 * 1024
DEFAULT_MAX_DELIVERIES: Final = 5

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BadRequest(ValueError):
    """Malformed input: answered 400 with the message."""


class TooLarge(ValueError):
    """An oversized body or event: answered 413 with the message."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EventsOptions:
    """How this replica's log is built; the defaults run the embedded SQLite engine."""

    backend: str = "sqlite"
    nats_servers: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    stream_replicas: int = 1
    settings: LogSettings = LogSettings()
    max_deliveries: int = DEFAULT_MAX_DELIVERIES
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES

    def __post_init__(self) -> None:
        if self.backend not in ("sqlite", "nats"):
            raise ValueError(f"backend must be sqlite or nats, got {self.backend!r}")
        if self.max_deliveries < 1:
            raise ValueError(f"max_deliveries must be at least 1, got {self.max_deliveries}")
        if not 1 <= self.max_event_bytes <= MAX_BODY_BYTES:
            raise ValueError(
                f"max_event_bytes must be between 1 and {MAX_BODY_BYTES}, got {self.max_event_bytes}"
            )


class EventStats:
    """This replica's counters since it started (the lag comes from the log itself, shared by replicas)."""

    def __init__(self) -> None:
        self.published: Counter[str] = Counter()
        self.duplicates: Counter[str] = Counter()
        self.delivered: Counter[tuple[str, ...]] = Counter()
        self.redelivered: Counter[tuple[str, ...]] = Counter()
        self.dead_lettered: Counter[tuple[str, ...]] = Counter()

    def __repr__(self) -> str:
        return f"EventStats(published={sum(self.published.values())})"


LOG: Final = web.AppKey[EventLog]("event_log")
OPTIONS: Final = web.AppKey("events_options", EventsOptions)
STATS: Final = web.AppKey("event_stats", EventStats)


async def open_log(service: ServiceOptions, options: EventsOptions) -> EventLog:
    if options.backend == "nats":
        from examples.bank.events.nats_log import NatsLog

        return NatsLog(options.nats_servers, options.settings, replicas=options.stream_replicas)
    from examples.bank.events.sqlite_log import SqliteLog

    return await SqliteLog.open(service.db, options.settings)


def create_app(
    service: ServiceOptions,
    options: EventsOptions | None = None,
    *,
    log_factory: Callable[[], Awaitable[EventLog]] | None = None,
) -> web.Application:
    options = options if options is not None else EventsOptions()
    app = create_replica_app(service)
    app.middlewares.append(_errors)
    app[OPTIONS] = options
    app[STATS] = EventStats()

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        log = await (log_factory() if log_factory is not None else open_log(service, options))
        app[LOG] = log
        yield
        await log.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/topics/{topic}", _publish)
    app.router.add_get("/topics/{topic}/events", _read)
    app.router.add_post("/topics/{topic}/replay", _replay)
    app.router.add_post("/topics/{topic}/groups/{group}/fetch", _fetch)
    app.router.add_post("/topics/{topic}/groups/{group}/ack", _ack)
    app.router.add_post("/topics/{topic}/groups/{group}/nack", _nack)
    app.router.add_get("/topics/{topic}/groups/{group}", _group_lag)
    app.router.add_get("/groups", _all_groups)
    app.router.add_get("/metrics", _metrics)
    return app


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except (BadRequest, UnknownReceipt) as exc:
        return web.json_response({"error": str(exc)}, status=400)
    except TooLarge as exc:
        return web.json_response({"error": str(exc)}, status=413)
    except LogUnavailable as exc:
        return web.json_response({"error": f"event log unavailable: {exc}"}, status=503)


async def _publish(request: web.Request) -> web.Response:
    topic = _topic(request)
    if is_dead_letter_topic(topic):
        raise BadRequest("dead-letter topics are written by the events service only")
    body = await _body(request)
    items = body.get("events") if "events" in body else [body]
    if not isinstance(items, list) or not items:
        raise BadRequest("events must be a non-empty list of {id, payload} objects")
    if len(items) > MAX_BATCH:
        raise TooLarge(f"at most {MAX_BATCH} events per publish, got {len(items)}")
    limit = request.app[OPTIONS].max_event_bytes
    events = [_new_event(item, index, limit) for index, item in enumerate(items)]
    if len({event.id for event in events}) != len(events):
        raise BadRequest("the same id appears twice in one publish")
    published = await request.app[LOG].publish(topic, events)
    stats = request.app[STATS]
    stats.published[topic] += sum(not p.duplicate for p in published)
    stats.duplicates[topic] += sum(p.duplicate for p in published)
    return web.json_response({"topic": topic, "published": [p.to_json() for p in published]})


async def _fetch(request: web.Request) -> web.Response:
    topic, group = _topic(request), _group(request)
    body = await _body(request, empty_ok=True)
    limit = _int(body, "max", default=10, low=1, high=request.app[OPTIONS].settings.max_fetch)
    wait_ms = _int(body, "wait_ms", default=0, low=0, high=MAX_WAIT_MS)
    log, options, stats = request.app[LOG], request.app[OPTIONS], request.app[STATS]
    deliveries = await log.fetch(topic, group, limit=limit, wait_secs=wait_ms / 1000.0)
    if not is_dead_letter_topic(topic):
        dead = [d for d in deliveries if d.deliveries > options.max_deliveries]
        if dead:
            letters = [
                NewEvent(
                    d.event.id,
                    d.event.payload,
                    {
                        "topic": topic,
                        "group": group,
                        "offset": d.event.offset,
                        "deliveries": d.deliveries - 1,
                    },
                )
                for d in dead
            ]
            await log.publish(dead_letter_topic(topic, group), letters)
            await log.ack(topic, group, [d.receipt for d in dead])
            stats.dead_lettered[topic, group] += len(dead)
            deliveries = [d for d in deliveries if d.deliveries <= options.max_deliveries]
    stats.delivered[topic, group] += len(deliveries)
    stats.redelivered[topic, group] += sum(d.deliveries > 1 for d in deliveries)
    return web.json_response({"topic": topic, "group": group, "events": [d.to_json() for d in deliveries]})


async def _ack(request: web.Request) -> web.Response:
    topic, group = _topic(request), _group(request)
    receipts = _receipts(await _body(request))
    return web.json_response({"acked": await request.app[LOG].ack(topic, group, receipts)})


async def _nack(request: web.Request) -> web.Response:
    topic, group = _topic(request), _group(request)
    receipts = _receipts(await _body(request))
    return web.json_response({"nacked": await request.app[LOG].nack(topic, group, receipts)})


async def _replay(request: web.Request) -> web.Response:
    topic = _topic(request)
    body = await _body(request)
    group = body.get("group")
    if not isinstance(group, str) or not valid_group(group):
        raise BadRequest("group must be a group name (a-z, 0-9, '-')")
    offset, at_time = body.get("offset"), body.get("time")
    if (offset is None) == (at_time is None):
        raise BadRequest("give exactly one of offset (an integer from 1) and time (unix seconds)")
    if offset is not None and (isinstance(offset, bool) or not isinstance(offset, int) or offset < 1):
        raise BadRequest("offset must be an integer from 1")
    if at_time is not None and (
        isinstance(at_time, bool) or not isinstance(at_time, int | float) or at_time < 0
    ):
        raise BadRequest("time must be unix seconds")
    start = await request.app[LOG].reset(
        topic, group, offset=offset, at_time=None if at_time is None else float(at_time)
    )
    return web.json_response({"topic": topic, "group": group, "next_offset": start})


async def _read(request: web.Request) -> web.Response:
    topic = _topic(request)
    start = _int(dict(request.query), "from", default=1, low=1, high=2**62, text=True)
    limit = _int(dict(request.query), "limit", default=100, low=1, high=1000, text=True)
    events = await request.app[LOG].read(topic, from_offset=start, limit=limit)
    return web.json_response({"topic": topic, "events": [event.to_json() for event in events]})


async def _group_lag(request: web.Request) -> web.Response:
    lag = await request.app[LOG].lag(_topic(request), _group(request))
    return web.json_response(lag.to_json())


async def _all_groups(request: web.Request) -> web.Response:
    return web.json_response({"groups": [lag.to_json() for lag in await request.app[LOG].groups()]})


async def _metrics(request: web.Request) -> web.Response:
    stats = request.app[STATS]
    lines = [
        "# HELP events_consumer_lag Events a consumer group has not acknowledged yet (never delivered + in flight).",
        "# TYPE events_consumer_lag gauge",
    ]
    groups = await request.app[LOG].groups()
    lines += [f'events_consumer_lag{{topic="{g.topic}",group="{g.group}"}} {g.lag}' for g in groups]
    lines += [
        "# HELP events_consumer_in_flight Events delivered to a group and not acknowledged yet.",
        "# TYPE events_consumer_in_flight gauge",
    ]
    lines += [
        f'events_consumer_in_flight{{topic="{g.topic}",group="{g.group}"}} {g.in_flight}' for g in groups
    ]
    lines += _counter(
        "events_published_total",
        "Events stored by publishes through this replica.",
        {(t,): n for t, n in stats.published.items()},
        ("topic",),
    )
    lines += _counter(
        "events_duplicates_total",
        "Publishes of an id the topic already held (stored once).",
        {(t,): n for t, n in stats.duplicates.items()},
        ("topic",),
    )
    lines += _counter(
        "events_delivered_total",
        "Deliveries handed out by this replica.",
        dict(stats.delivered),
        ("topic", "group"),
    )
    lines += _counter(
        "events_redelivered_total",
        "Deliveries of an event the group had been given before.",
        dict(stats.redelivered),
        ("topic", "group"),
    )
    lines += _counter(
        "events_dead_lettered_total",
        "Events moved to the group's dead-letter topic.",
        dict(stats.dead_lettered),
        ("topic", "group"),
    )
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


def _counter(
    name: str, help_text: str, values: Mapping[tuple[str, ...], int], labels: tuple[str, ...]
) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
    for key, value in sorted(values.items()):
        rendered = ",".join(f'{label}="{part}"' for label, part in zip(labels, key, strict=True))
        lines.append(f"{name}{{{rendered}}} {value}")
    return lines


def _topic(request: web.Request) -> str:
    topic = request.match_info["topic"]
    if not valid_topic(topic):
        raise BadRequest(
            f"bad topic name {topic!r}: lower-case letters, digits and '-', at most 63 characters"
        )
    return topic


def _group(request: web.Request) -> str:
    group = request.match_info["group"]
    if not valid_group(group):
        raise BadRequest(
            f"bad group name {group!r}: lower-case letters, digits and '-', at most 63 characters"
        )
    return group


async def _body(request: web.Request, *, empty_ok: bool = False) -> dict[str, object]:
    length = request.content_length
    if length is not None and length > MAX_BODY_BYTES:
        raise TooLarge(f"body of {length} bytes is over the limit of {MAX_BODY_BYTES}")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise TooLarge(f"body is over the limit of {MAX_BODY_BYTES} bytes") from exc
    if not raw and empty_ok:
        return {}
    try:
        value: object = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"body is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise BadRequest("body must be a JSON object")
    return {str(key): item for key, item in value.items()}


def _new_event(item: object, index: int, max_bytes: int) -> NewEvent:
    if not isinstance(item, dict):
        raise BadRequest(f"event {index} must be an object with id and payload")
    event_id, payload = item.get("id"), item.get("payload")
    if not isinstance(event_id, str) or not event_id or len(event_id) > MAX_ID_CHARS:
        raise BadRequest(f"event {index}: id must be a non-empty string of at most {MAX_ID_CHARS} characters")
    if not event_id.isprintable():
        raise BadRequest(f"event {index}: id must be printable")
    if not isinstance(payload, dict):
        raise BadRequest(f"event {index} ({event_id}): payload must be a JSON object")
    size = len(json.dumps(payload).encode())
    if size > max_bytes:
        raise TooLarge(
            f"event {index} ({event_id}): payload of {size} bytes is over the limit of {max_bytes}"
        )
    return NewEvent(event_id, {str(key): value for key, value in payload.items()})


def _receipts(body: Mapping[str, object]) -> list[str]:
    receipts = body.get("receipts")
    if not isinstance(receipts, list) or not all(isinstance(r, str) and r for r in receipts):
        raise BadRequest("receipts must be a list of the receipt strings fetch answered")
    return [str(r) for r in receipts]


def _int(
    body: Mapping[str, object], key: str, *, default: int, low: int, high: int, text: bool = False
) -> int:
    value = body.get(key, default)
    if text and isinstance(value, str):
        if not value.isdigit():
            raise BadRequest(f"{key} must be an integer")
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(f"{key} must be an integer from {low} to {high}")
    return value


def parse(argv: Sequence[str] | None = None) -> tuple[ServiceOptions, EventsOptions]:
    """The shared service options plus the engine's: `--backend sqlite|nats`, `--nats URL` (repeat for a
    cluster), `--stream-replicas`, `--ack-wait SECS`, `--max-deliveries N`, `--retention-hours H`,
    `--duplicate-window SECS`, `--max-event-bytes N`."""
    parser = argparse.ArgumentParser(prog="python -m examples.bank.events", add_help=False)
    parser.add_argument("--backend", choices=("sqlite", "nats"), default="sqlite")
    parser.add_argument("--nats", action="append", default=[], help="a NATS server URL (repeatable)")
    parser.add_argument("--stream-replicas", type=int, default=1)
    parser.add_argument("--ack-wait", type=float, default=LogSettings().ack_wait_secs)
    parser.add_argument("--max-deliveries", type=int, default=DEFAULT_MAX_DELIVERIES)
    parser.add_argument("--retention-hours", type=float, default=LogSettings().retention_secs / 3600)
    parser.add_argument("--duplicate-window", type=float, default=LogSettings().duplicate_window_secs)
    parser.add_argument("--max-event-bytes", type=int, default=DEFAULT_MAX_EVENT_BYTES)
    args, rest = parser.parse_known_args(argv)
    service = parse_options("events", rest)
    try:
        options = EventsOptions(
            backend=args.backend,
            nats_servers=tuple(args.nats) or EventsOptions().nats_servers,
            stream_replicas=args.stream_replicas,
            settings=LogSettings(
                ack_wait_secs=args.ack_wait,
                retention_secs=args.retention_hours * 3600,
                duplicate_window_secs=args.duplicate_window,
            ),
            max_deliveries=args.max_deliveries,
            max_event_bytes=args.max_event_bytes,
        )
    except ValueError as exc:
        parser.error(str(exc))
    return service, options


def main(argv: Sequence[str] | None = None) -> None:
    service, options = parse(argv)
    web.run_app(
        create_app(service, options),
        host=service.host,
        port=service.port,
        print=None,
        access_log=None,
        shutdown_timeout=2.0,
    )
