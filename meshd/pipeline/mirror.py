"""Request mirroring: a copy of a share of matching requests goes to a shadow destination.

A routing-file rule with `mirror: {dst, share, ...}` (routing.match.Mirror) copies `share` of the
requests under its `prefix` (that its `match`, when given, holds for) to `dst`, bound through the
router's dtab. The caller never waits for the copy and never sees it: the bind step calls
`Mirroring.copy` synchronously, which decides and starts a task, then routes the request as
usual. The copy's answer is read and dropped; its failures and slowness are only counted.

Bounds, per rule: at most `maxInFlight` copies under way (past it a copy is skipped and counted),
a body of at most `maxBodyBytes` (taken from the request body's replay buffer once the body has
arrived, so it is also bounded by the router's `replayBufferBytes`; a larger body is skipped and
counted), and `timeoutMs` for the whole copy (waiting for the body, binding, the answer and its
body); a copy that times out is cut and counted. A copy is sent once: it goes straight to the
shadow's client, past the service stack, so it is never retried, and its answer feeds nothing
but the shadow client's own balancer. Copies carry `l5d-mirror: <rule name>` so that the shadow
can tell them from real traffic.

Results (`meshd_mirrored_requests_total{router,rule,result}`): `success` (an answer below 500),
`failure` (5xx), `error` (no connection, reset, circuit open, nothing bound), `timeout`. Skips
(`meshd_mirror_skipped_total{router,rule,reason}`): `in_flight_limit`, `body_too_large`,
`body_incomplete` (the caller's body failed before it ended: the caller left, or stalled past the
listener's body timeout).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Protocol

from meshd.clock import MONOTONIC, Clock
from meshd.errors import MeshdError, MirrorDiscarded
from meshd.http.body import Body, Trailers
from meshd.http.messages import Request, Response
from meshd.pipeline.bind import Binder
from meshd.pipeline.context import RouteContext
from routing.match import MatchRule, Mirror
from routing.namer import BoundName
from routing.path import Path

log = logging.getLogger("meshd.mirror")

#: the header every mirrored copy carries; its value is the rule's name
MIRROR_HEADER: Final = b"l5d-mirror"


class MirrorClient(Protocol):
    def __call__(self, ctx: RouteContext) -> Awaitable[Response]: ...


class MirrorClients(Protocol):
    """What mirroring needs from the router: the client of a bound name."""

    def mirror_client(self, id: Path) -> MirrorClient: ...


class _Drop:
    """Reads a mirrored copy's answer to its end and drops the bytes."""

    __slots__ = ()

    def on_data(self, data: bytes) -> None:
        pass

    def on_end(self, trailers: Trailers | None) -> None:
        pass

    def on_error(self, exc: BaseException) -> None:
        pass


_DROP: Final = _Drop()


class Mirroring:
    """A router's mirrored copies: started by `copy`, counted by rule."""

    def __init__(
        self,
        binder: Binder,
        clients: MirrorClients,
        *,
        rng: random.Random | None = None,
        clock: Clock = MONOTONIC,
    ) -> None:
        self._binder = binder
        self._clients = clients
        self._rng = rng or random.Random()
        self._draw = self._rng.random
        self._clock = clock
        #: copies that ended, by (rule, result): success, failure, error, timeout
        self.sent: dict[tuple[str, str], int] = {}
        #: copies not made, by (rule, reason): in_flight_limit, body_too_large, body_incomplete
        self.skipped: dict[tuple[str, str], int] = {}
        #: copies under way, by rule
        self.in_flight: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def copy(self, rules: Sequence[MatchRule], path: Path, ctx: RouteContext) -> None:
        """Start the copies this request gets (one per mirror rule that applies and draws it)."""
        request = ctx.request
        for rule in rules:
            mirror = rule.mirror
            if mirror is None or self._draw() >= mirror.share:
                continue
            if not rule.prefix.matches(path) or not rule.match.holds(request):
                continue
            name = rule.name
            in_flight = self.in_flight.get(name, 0)
            if in_flight >= mirror.max_in_flight:
                self._skip(name, "in_flight_limit")
                continue
            body = request.body
            if body.received > mirror.max_body_bytes or (body.length or 0) > mirror.max_body_bytes:
                self._skip(name, "body_too_large")
                continue
            headers = list(request.headers)
            headers.append((MIRROR_HEADER, name.encode("latin-1", "replace")))
            shadow = Request(
                request.method,
                request.target,
                request.version,
                headers,
                body,  # replaced by a copy of its bytes once it has arrived
                host=request.host,
                client_ip=request.client_ip,
            )
            shadow.forwarded = request.forwarded
            self.in_flight[name] = in_flight + 1
            task = asyncio.get_running_loop().create_task(self._send(name, mirror, shadow, ctx.logical_name))
            self._tasks.add(task)
            task.add_done_callback(self._finished(name))

    def _finished(self, name: str) -> Callable[[asyncio.Task[None]], None]:
        def done(task: asyncio.Task[None]) -> None:
            self._tasks.discard(task)
            self.in_flight[name] = self.in_flight.get(name, 1) - 1

        return done

    async def _send(self, name: str, mirror: Mirror, shadow: Request, logical_name: str) -> None:
        result = "error"
        response: Response | None = None
        try:
            async with self._clock.timeout(mirror.timeout_ms / 1000.0):
                body = shadow.body
                if not body.ended:
                    await _ended(body)
                data = body.copy()
                if data is None or len(data) > mirror.max_body_bytes:
                    result = ""
                    self._skip(name, "body_incomplete" if body.error is not None else "body_too_large")
                    return
                if data or body.length is not None or body.chunked:
                    shadow.body = Body.of(data)
                else:
                    shadow.body = Body.empty()
                chooser = await self._binder.bind(mirror.dst, "")
                choice = chooser.single
                if choice is None:
                    choice = chooser.choose(self._rng)
                if not isinstance(choice, BoundName):
                    log.debug("mirror %s: %s binds to nothing", name, mirror.dst.show())
                    return
                ctx = RouteContext(shadow)
                ctx.logical_name = logical_name
                ctx.attempts = 1
                response = await self._clients.mirror_client(choice.id)(ctx)
                result = "success" if response.status < 500 else "failure"
                answer = response.body
                if not answer.ended:
                    answer.attach(_DROP)
                    await _ended(answer)
        except TimeoutError:
            result = "timeout"
        except MeshdError as exc:
            log.debug("mirror %s: %s", name, exc)
            result = "error"
        except asyncio.CancelledError:
            result = "" if response is None else result
            raise
        except Exception:  # a copy must never disturb anything else: counted, logged at debug
            log.debug("mirror %s failed", name, exc_info=True)
            result = "error"
        finally:
            if response is not None and not response.body.ended:
                response.body.cancel(MirrorDiscarded("the answer to a mirrored request is dropped"))
            if result:
                key = (name, result)
                self.sent[key] = self.sent.get(key, 0) + 1

    def _skip(self, name: str, reason: str) -> None:
        key = (name, reason)
        self.skipped[key] = self.skipped.get(key, 0) + 1

    def close(self) -> None:
        """Stop the copies under way (the router is closing)."""
        for task in list(self._tasks):
            task.cancel()


async def _ended(body: Body) -> None:
    """Wait until `body` has ended (or failed)."""
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def ended(_error: BaseException | None) -> None:
        if not done.done():
            done.set_result(None)

    body.add_done_callback(ended)
    await done
