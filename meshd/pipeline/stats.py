"""Stats: per-router, per-service request counts by status class and a latency histogram.

The listener records every response it writes (meshd's own errors included, and the 400s it
answers to malformed requests under the service `_unidentified`), so no pipeline stage is
needed for it.

Counting is on the hot path of every request, so it uses plain ints in lists (about 0.1 µs an
increment) and leaves Prometheus formatting to scrape time (`meshd.admin.metrics` reads these).
Latency is measured from the request head to the response head.

The number of distinct service labels is bounded (`MAX_SERVICES`), so a client inventing Host
headers cannot grow memory or `/metrics` without limit: the first names seen keep their own
label for as long as meshd runs, every later one is counted under `OVERFLOW_SERVICE`. The
router's per-service series (retries, timeouts, budgets) use the same labels (`label_for`).
"""

from __future__ import annotations

from typing import Any, Final

from balancers.node import Node
from meshd.pipeline.context import RouteContext

#: Histogram bucket upper bounds, seconds (Prometheus `le`), +Inf implied.
_BOUNDS: Final[list[float]] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
BUCKETS: Final = tuple(_BOUNDS)
#: distinct `service` label values per router, in every per-service metric family
MAX_SERVICES: Final = 1000
#: the label value of every service past the first MAX_SERVICES (their counts add up in it)
OVERFLOW_SERVICE: Final = "_other"


class RequestStats:
    """Counters of one (router, service): responses by status class, and latency buckets."""

    __slots__ = ("by_class", "buckets", "latency_sum", "count")

    def __init__(self) -> None:
        self.by_class = [0, 0, 0, 0, 0, 0]  # index = status // 100
        self.buckets = [0] * (len(BUCKETS) + 1)
        self.latency_sum = 0.0
        self.count = 0

    def observe(self, status: int, seconds: float) -> None:
        self.by_class[status // 100 if status < 600 else 5] += 1
        # bisect_left by hand: compiled, a scan of the few bounds below a typical latency is
        # cheaper than a call into the bisect module. Over a list: mypyc keeps a Final tuple of
        # floats unboxed and would box all of it to iterate.
        i = 0
        for bound in _BOUNDS:
            if seconds <= bound:
                break
            i += 1
        self.buckets[i] += 1
        self.latency_sum += seconds
        self.count += 1


class RouterStats:
    __slots__ = ("router", "services", "max_services", "recent")

    def __init__(self, router: str) -> None:
        self.router = router
        self.services: dict[str, RequestStats] = {}
        #: the last requests answered, for the dashboard (the listener records them)
        self.recent = RecentRequests()
        #: MAX_SERVICES (an attribute so that tests can use a small cap)
        self.max_services = MAX_SERVICES

    def observe(self, name: str, status: int, seconds: float) -> None:
        """One response written to a client (the listener calls this for every response)."""
        stats = self.services.get(name)
        if stats is None:
            stats = self.for_service(name)
        stats.observe(status, seconds)

    def for_service(self, name: str) -> RequestStats:
        stats = self.services.get(name)
        if stats is None:
            if len(self.services) >= self.max_services:
                name = OVERFLOW_SERVICE
                stats = self.services.get(name)
                if stats is not None:
                    return stats
            stats = self.services[name] = RequestStats()
        return stats

    def label_for(self, name: str) -> str:
        """The `service` label `name`'s series are exported under: its own, or OVERFLOW_SERVICE.

        A name given its own label here keeps it (its request stats slot is taken now, before
        its first response is recorded), so all of a service's families agree on its label.
        """
        if name in self.services:
            return name
        if len(self.services) >= self.max_services:
            return OVERFLOW_SERVICE
        self.services[name] = RequestStats()
        return name


#: distinct `endpoint` label values per client in the per-endpoint attempt families; the
#: endpoints past it share one set of counters, exported as `endpoint="_other"`
MAX_ENDPOINT_SERIES: Final = 64
#: the `endpoint` label of the endpoints past MAX_ENDPOINT_SERIES
OVERFLOW_ENDPOINT: Final = "_other"


class AttemptStats:
    """Counters of the attempts sent to one endpoint (or to a client's folded or removed ones):
    attempts, failures (as the service's classifier says) and a latency histogram, from the
    attempt's start to the end of its response body.

    The client records into it when an attempt ends, with the round-trip time the balancer
    node has just measured for Peak EWMA (`Node.finish` returns it): no clock read of its own.
    """

    __slots__ = ("requests", "failures", "buckets", "latency_sum")

    def __init__(self) -> None:
        self.requests = 0
        self.failures = 0
        self.buckets = [0] * (len(BUCKETS) + 1)
        self.latency_sum = 0.0

    def observe(self, seconds: float, failure: bool) -> None:
        self.requests += 1
        if failure:
            self.failures += 1
        i = 0
        for bound in _BOUNDS:  # as in RequestStats.observe
            if seconds <= bound:
                break
            i += 1
        self.buckets[i] += 1
        self.latency_sum += seconds

    def add(self, other: AttemptStats) -> None:
        """Add `other`'s counts to these (an endpoint removed, or a client's total at scrape time)."""
        self.requests += other.requests
        self.failures += other.failures
        buckets = self.buckets
        for i, n in enumerate(other.buckets):
            buckets[i] += n
        self.latency_sum += other.latency_sum


#: requests the dashboard's "recent requests" keeps per router (the newest; older ones are overwritten)
RECENT_REQUESTS: Final = 128


class RequestSample:
    """One slot of `RecentRequests`: what the dashboard shows of a request. Made once, reused."""

    __slots__ = ("at", "seconds", "status", "attempts", "service", "node", "trace_id", "reqid")

    def __init__(self) -> None:
        #: when the request head was read, on the monotonic clock (0.0: the slot was never used)
        self.at = 0.0
        self.seconds = 0.0
        self.status = 0
        self.attempts = 0
        self.service = ""
        #: the balancer node of its last attempt (its member is the client's Endpoint), or None
        self.node: Node[Any] | None = None
        self.trace_id = ""
        self.reqid = ""


class RecentRequests:
    """The last `size` requests a router answered, in a ring of preallocated slots.

    The listener records every response here where it records the router's stats: eight
    attribute stores into the oldest slot (floats and ints stored unboxed when compiled), no
    allocation, no clock read (it passes the request's start and latency it has already
    measured). Only the admin's `/admin/requests` reads it, newest first.
    """

    __slots__ = ("samples", "size", "next", "recorded")

    def __init__(self, size: int = RECENT_REQUESTS) -> None:
        self.samples = [RequestSample() for _ in range(size)]
        self.size = size
        self.next = 0
        #: requests recorded since meshd started (the ring holds the last `size` of them)
        self.recorded = 0

    def record(self, ctx: RouteContext, service: str, status: int, started: float, seconds: float) -> None:
        i = self.next
        sample = self.samples[i]
        sample.at = started
        sample.seconds = seconds
        sample.status = status
        sample.attempts = ctx.attempts
        sample.service = service
        sample.node = ctx.last_node
        sample.trace_id = ctx.trace_id
        sample.reqid = ctx.reqid
        i += 1
        self.next = i if i < self.size else 0
        self.recorded += 1

    def newest_first(self) -> list[RequestSample]:
        """The slots in use, the newest first (the caller reads them before the loop runs again)."""
        count = self.recorded if self.recorded < self.size else self.size
        out: list[RequestSample] = []
        i = self.next
        for _ in range(count):
            i = i - 1 if i > 0 else self.size - 1
            out.append(self.samples[i])
        return out
