"""Response classifiers: is an answer (or an error) a success, a failure, or a failure worth retrying?

Kinds follow linkerd 1's HTTP classifiers (`io.buoyant.linkerd.protocol.http.ResponseClassifiers`),
without the `io.l5d.http.` prefix:

| kind                     | 5xx response                                  | error after writing     |
|--------------------------|-----------------------------------------------|-------------------------|
| `nonRetryable5XX`        | failure                                       | failure                 |
| `retryableRead5XX`       | retryable for GET, HEAD, OPTIONS, TRACE       | retryable, same methods |
| `retryableIdempotent5XX` | retryable for those and PUT, DELETE (default) | retryable, same methods |
| `allSuccessful`          | success                                       | failure                 |

For every kind: 1xx-4xx are successes (a 404 is the service answering, as in linkerd), and an
error *before* the request was written upstream (connect refused, pool closed) is retryable for
every method, because the upstream never saw it (Finagle's requeue of `RetryableWriteException`).
After-write errors follow linkerd's `RetryableResult`: timeouts and closed channels are retryable
on the kind's methods (Finagle `TimeoutAndWriteExceptionsOnly orElse ChannelClosedExceptionsOnly`);
every other exception falls through to `ClassifiedRetries.Default`, a non-retryable failure.

`honor_retryable_header` (YAML `honorRetryableHeader`, default false): when on, a 5xx that carries
`l5d-retryable: true` is retryable for any method and any kind. A downstream meshd/linkerd sends it
when it failed before writing the request, which is exactly our own before-write rule one hop on.
It is off by default because it lets the upstream decide that a POST may be sent twice.

This runs once per attempt: method lookups are frozenset membership, no regex, no allocation.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass
from typing import ClassVar, Final

READ_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
"""linkerd `Requests.ReadOnly`."""

IDEMPOTENT_METHODS: Final = READ_METHODS | frozenset({"PUT", "DELETE"})
"""linkerd `Requests.Idempotent` (RFC 2616 §9.1.2)."""

_NO_METHODS: Final[frozenset[str]] = frozenset()


#: 508 Loop Detected (RFC 5842), what meshd answers when `Via` shows a routing loop.
LOOP_DETECTED: Final = 508


class ResponseClass(enum.Enum):
    SUCCESS = "success"
    RETRYABLE_FAILURE = "retryable_failure"
    FAILURE = "failure"

    @property
    def is_failure(self) -> bool:
        return self is not ResponseClass.SUCCESS


_SUCCESS_CLASS: Final = {
    ResponseClass.SUCCESS: "1.0",
    ResponseClass.RETRYABLE_FAILURE: "0.0",
    ResponseClass.FAILURE: "0.0",
}


def success_class(cls: ResponseClass) -> str:
    """Value of the `l5d-success-class` response header: "1.0" for success, "0.0" for failure."""
    return _SUCCESS_CLASS[cls]


def is_server_error(status: int) -> bool:
    """Finagle's `Status.ServerError` extractor: 500 <= status < 600."""
    return 500 <= status < 600


class ResponseClassifier:
    """One classifier: which methods may be retried, and whether 5xx count as failures at all.

    Method strings are upper-case, as the codec delivers them.
    """

    __slots__ = ("_name", "_retryable_methods", "_server_errors_fail", "_honor_retryable_header")

    #: False for these HTTP classifiers: a response's head decides. True for the gRPC ones
    #: (meshd/grpc/classifiers.py), which decide from `grpc-status` in the trailers (or a
    #: trailers-only head): the retry stage and failure accrual then ask them `classify_head` and
    #: `classify_trailers` (docs/grpc.md, "Classifiers").
    reads_trailers: ClassVar[bool] = False

    def __init__(
        self,
        *,
        name: str,
        retryable_methods: frozenset[str],
        server_errors_fail: bool,
        honor_retryable_header: bool,
    ) -> None:
        self._name = name
        self._retryable_methods = retryable_methods
        self._server_errors_fail = server_errors_fail
        self._honor_retryable_header = honor_retryable_header

    @property
    def name(self) -> str:
        return self._name

    @property
    def retryable_methods(self) -> frozenset[str]:
        """Methods whose 5xx responses and after-write errors are retryable."""
        return self._retryable_methods

    def classify_response(self, method: str, status: int, retryable_hint: bool) -> ResponseClass:
        """Classify a response head; `retryable_hint` is "the upstream sent `l5d-retryable: true`"."""
        if not 500 <= status < 600:
            return ResponseClass.SUCCESS
        if status == LOOP_DETECTED:
            # Another meshd refused a request going round in circles: a retry would only go
            # round again, once per hop. Never retryable, whatever the method or hint.
            return ResponseClass.FAILURE if self._server_errors_fail else ResponseClass.SUCCESS
        if retryable_hint and self._honor_retryable_header:
            return ResponseClass.RETRYABLE_FAILURE
        if not self._server_errors_fail:
            return ResponseClass.SUCCESS
        if method in self._retryable_methods:
            return ResponseClass.RETRYABLE_FAILURE
        return ResponseClass.FAILURE

    def classify_error(self, method: str, written: bool) -> ResponseClass:
        """Classify a transport error (refused, reset, timeout, closed) on one attempt.

        `written` is False when the request never reached the upstream: retryable for any
        method. Errors that are not transport errors (e.g. an unparseable response) are not
        retryable in linkerd; do not pass them here, treat them as `ResponseClass.FAILURE`.
        """
        if not written or method in self._retryable_methods:
            return ResponseClass.RETRYABLE_FAILURE
        return ResponseClass.FAILURE

    def __repr__(self) -> str:
        hint = ", honorRetryableHeader" if self._honor_retryable_header else ""
        return f"ResponseClassifier({self._name}{hint})"


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseClassifierConfig(abc.ABC):
    """Base of every classifier kind's config: `KIND` names it in YAML, `build` makes the classifier.

    Holds the settings every kind shares.
    """

    KIND: ClassVar[str]
    honor_retryable_header: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.honor_retryable_header, bool):
            raise ValueError(
                f"honorRetryableHeader must be true or false, got {self.honor_retryable_header!r}"
            )

    @abc.abstractmethod
    def build(self) -> ResponseClassifier: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class NonRetryable5XXConfig(ResponseClassifierConfig):
    """`{kind: nonRetryable5XX}`: 5xx are failures, never retried (linkerd's default classifier)."""

    KIND: ClassVar[str] = "nonRetryable5XX"

    def build(self) -> ResponseClassifier:
        return ResponseClassifier(
            name=self.KIND,
            retryable_methods=_NO_METHODS,
            server_errors_fail=True,
            honor_retryable_header=self.honor_retryable_header,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryableRead5XXConfig(ResponseClassifierConfig):
    """`{kind: retryableRead5XX}`: 5xx are failures, retryable for GET, HEAD, OPTIONS, TRACE."""

    KIND: ClassVar[str] = "retryableRead5XX"

    def build(self) -> ResponseClassifier:
        return ResponseClassifier(
            name=self.KIND,
            retryable_methods=READ_METHODS,
            server_errors_fail=True,
            honor_retryable_header=self.honor_retryable_header,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryableIdempotent5XXConfig(ResponseClassifierConfig):
    """`{kind: retryableIdempotent5XX}`: like retryableRead5XX plus PUT and DELETE; meshd's default."""

    KIND: ClassVar[str] = "retryableIdempotent5XX"

    def build(self) -> ResponseClassifier:
        return ResponseClassifier(
            name=self.KIND,
            retryable_methods=IDEMPOTENT_METHODS,
            server_errors_fail=True,
            honor_retryable_header=self.honor_retryable_header,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class AllSuccessfulConfig(ResponseClassifierConfig):
    """`{kind: allSuccessful}`: every response is a success; errors stay failures (linkerd's
    `ClassifiedRetries.Default`), retryable only before the request was written."""

    KIND: ClassVar[str] = "allSuccessful"

    def build(self) -> ResponseClassifier:
        return ResponseClassifier(
            name=self.KIND,
            retryable_methods=_NO_METHODS,
            server_errors_fail=False,
            honor_retryable_header=self.honor_retryable_header,
        )


CLASSIFIERS: Final[dict[str, type[ResponseClassifierConfig]]] = {
    "nonRetryable5XX": NonRetryable5XXConfig,
    "retryableRead5XX": RetryableRead5XXConfig,
    "retryableIdempotent5XX": RetryableIdempotent5XXConfig,
    "allSuccessful": AllSuccessfulConfig,
}
"""Classifier kinds -> config classes. Default: `retryableIdempotent5XX` (linkerd's: nonRetryable5XX)."""
