"""gRPC response classifiers: a call's outcome is its `grpc-status`, not its HTTP status.

A gRPC server answers every call with HTTP 200 and puts the outcome in `grpc-status`: in the
trailers at the end of the response body, or, when it fails at once, in the headers of a
*trailers-only* response (one HEADERS frame with END_STREAM). So these classifiers decide in up to
two steps (`ResponseClassifier.reads_trailers` is True for them):

1. `classify_head(status, headers)` when the response head arrives: a trailers-only response
   (its head has `grpc-status`) or a non-200 HTTP status (an HTTP proxy or a non-gRPC server
   answered; mapped as gRPC clients map it, `status.http_status_to_grpc`) is decided here;
   otherwise it returns None: the trailers will decide.
2. `classify_trailers(trailers)` when the body ends: the trailers' `grpc-status`; a stream that
   ended without one is INTERNAL (what gRPC clients report for it).

Kinds (linkerd 1's `io.l5d.h2.grpc.*` without the `io.l5d.h2.` prefix, as meshd's HTTP kinds drop
`io.l5d.http.`):

| kind                       | retryable codes                 |
|----------------------------|---------------------------------|
| `grpc.default`             | UNAVAILABLE (14)                |
| `grpc.retryableStatusCodes`| the list given (`retryableStatusCodes: [14, 4]`) |
| `grpc.neverRetryable`      | none                            |
| `grpc.alwaysRetryable`     | every code but OK               |

Failures (what failure accrual counts against an endpoint) are the retryable codes plus
`failureStatusCodes`, by default UNKNOWN, DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE, DATA_LOSS: the
codes that say the server (or the path to it) broke, the ones Envoy's gRPC-to-HTTP mapping turns
into a 5xx. Every other code (NOT_FOUND, INVALID_ARGUMENT, PERMISSION_DENIED, ...) is the service
answering, a success for the endpoint's health, as a 404 is for the HTTP kinds. linkerd 1 counted
every non-OK code as a failure; that makes a replica that answers many NOT_FOUNDs look sick.

Transport errors: before the request was written, retryable (as for every kind); after it was
written, they are what a gRPC client reports as UNAVAILABLE, so retryable exactly when UNAVAILABLE
is in the retryable codes. A retry still needs the request body whole in the replay buffer: in
practice unary and small client-streaming calls.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, Final

from meshd.grpc.status import MAX_CODE, StatusCode, http_status_to_grpc, status_of
from meshd.retry.classifiers import (
    LOOP_DETECTED,
    ResponseClass,
    ResponseClassifier,
    ResponseClassifierConfig,
)

DEFAULT_FAILURE_CODES: Final = (
    int(StatusCode.UNKNOWN),
    int(StatusCode.DEADLINE_EXCEEDED),
    int(StatusCode.INTERNAL),
    int(StatusCode.UNAVAILABLE),
    int(StatusCode.DATA_LOSS),
)
_POST: Final = frozenset({"POST"})
_NONE: Final[frozenset[str]] = frozenset()
_ALL_BUT_OK: Final = tuple(range(1, MAX_CODE + 1))


class GrpcClassifier(ResponseClassifier):
    """Classifies by gRPC status code; see the module docstring for the two steps."""

    __slots__ = ("_retryable", "_failures")

    reads_trailers: ClassVar[bool] = True

    def __init__(
        self,
        *,
        name: str,
        retryable_codes: Iterable[int],
        failure_codes: Iterable[int],
        honor_retryable_header: bool,
    ) -> None:
        retryable = frozenset(int(c) for c in retryable_codes)
        super().__init__(
            name=name,
            # every gRPC call is a POST: an error after writing is retryable when UNAVAILABLE is
            retryable_methods=_POST if StatusCode.UNAVAILABLE in retryable else _NONE,
            server_errors_fail=True,
            honor_retryable_header=honor_retryable_header,
        )
        self._retryable = retryable - {0}
        self._failures = (frozenset(int(c) for c in failure_codes) | self._retryable) - {0}

    @property
    def retryable_codes(self) -> frozenset[int]:
        return self._retryable

    @property
    def failure_codes(self) -> frozenset[int]:
        """Every code classified as a failure (retryable or not)."""
        return self._failures

    def classify_code(self, code: int) -> ResponseClass:
        """The class of a call that ended with `grpc-status: code`."""
        if code in self._retryable:
            return ResponseClass.RETRYABLE_FAILURE
        if code in self._failures:
            return ResponseClass.FAILURE
        return ResponseClass.SUCCESS

    def classify_response(self, method: str, status: int, retryable_hint: bool) -> ResponseClass:
        """An HTTP status without `grpc-status`: 200 is not a failure by itself (the trailers
        decide: use `classify_head`); any other status as gRPC clients map it (503 UNAVAILABLE,
        404 UNIMPLEMENTED, ...). 508 (a routing loop another meshd refused) is never retried."""
        if status == 200:
            return ResponseClass.SUCCESS
        if status == LOOP_DETECTED:
            return ResponseClass.FAILURE
        if retryable_hint and self._honor_retryable_header and 500 <= status < 600:
            return ResponseClass.RETRYABLE_FAILURE
        return self.classify_code(http_status_to_grpc(status))

    def classify_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> ResponseClass | None:
        """Step 1, on the response head: the class of a trailers-only response or of a non-200
        status; None when the call goes on (a 200 head without `grpc-status`: the trailers decide)."""
        code = status_of(headers)
        if code is not None:
            cls = self.classify_code(code)
            if (
                cls is ResponseClass.FAILURE
                and self._honor_retryable_header
                and any(n.lower() == b"l5d-retryable" and v.strip().lower() == b"true" for n, v in headers)
            ):
                return ResponseClass.RETRYABLE_FAILURE
            return cls
        if status == 200:
            return None
        hint = any(n.lower() == b"l5d-retryable" and v.strip().lower() == b"true" for n, v in headers)
        return self.classify_response("POST", status, hint)

    def classify_trailers(self, trailers: list[tuple[bytes, bytes]] | None) -> ResponseClass:
        """Step 2, when the body ends: the trailers' `grpc-status` (none at all: INTERNAL)."""
        code = status_of(trailers)
        return self.classify_code(StatusCode.INTERNAL if code is None else code)

    def __repr__(self) -> str:
        codes = ",".join(str(c) for c in sorted(self._retryable))
        return f"GrpcClassifier({self._name}, retryable=[{codes}])"


def _check_codes(key: str, codes: object) -> None:
    if not isinstance(codes, tuple) or not all(
        isinstance(c, int) and not isinstance(c, bool) and 0 < c <= MAX_CODE for c in codes
    ):
        raise ValueError(f"{key}: must be a list of gRPC status codes 1..{MAX_CODE} (14 is UNAVAILABLE), got {list(codes) if isinstance(codes, tuple) else codes!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class GrpcClassifierConfig(ResponseClassifierConfig):
    """What every `grpc.*` kind shares: `failureStatusCodes`, the non-retryable failures."""

    KIND: ClassVar[str] = "grpc"
    failure_status_codes: tuple[int, ...] = DEFAULT_FAILURE_CODES

    def __post_init__(self) -> None:
        ResponseClassifierConfig.__post_init__(self)
        _check_codes("failureStatusCodes", self.failure_status_codes)

    def retryable(self) -> tuple[int, ...]:
        return ()

    def build(self) -> GrpcClassifier:
        return GrpcClassifier(
            name=self.KIND,
            retryable_codes=self.retryable(),
            failure_codes=self.failure_status_codes,
            honor_retryable_header=self.honor_retryable_header,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class GrpcDefaultConfig(GrpcClassifierConfig):
    """`{kind: grpc.default}`: UNAVAILABLE is retryable (linkerd's `io.l5d.h2.grpc.default`)."""

    KIND: ClassVar[str] = "grpc.default"

    def retryable(self) -> tuple[int, ...]:
        return (int(StatusCode.UNAVAILABLE),)


@dataclass(frozen=True, slots=True, kw_only=True)
class GrpcRetryableStatusCodesConfig(GrpcClassifierConfig):
    """`{kind: grpc.retryableStatusCodes, retryableStatusCodes: [14, 4]}`: the codes listed."""

    KIND: ClassVar[str] = "grpc.retryableStatusCodes"
    retryable_status_codes: tuple[int, ...]

    def __post_init__(self) -> None:
        GrpcClassifierConfig.__post_init__(self)
        _check_codes("retryableStatusCodes", self.retryable_status_codes)

    def retryable(self) -> tuple[int, ...]:
        return self.retryable_status_codes


@dataclass(frozen=True, slots=True, kw_only=True)
class GrpcNeverRetryableConfig(GrpcClassifierConfig):
    """`{kind: grpc.neverRetryable}`: no code is retried (only failures before writing)."""

    KIND: ClassVar[str] = "grpc.neverRetryable"


@dataclass(frozen=True, slots=True, kw_only=True)
class GrpcAlwaysRetryableConfig(GrpcClassifierConfig):
    """`{kind: grpc.alwaysRetryable}`: every code but OK is a retryable failure."""

    KIND: ClassVar[str] = "grpc.alwaysRetryable"

    def retryable(self) -> tuple[int, ...]:
        return _ALL_BUT_OK


GRPC_CLASSIFIERS: Final[dict[str, type[ResponseClassifierConfig]]] = {
    "grpc.default": GrpcDefaultConfig,
    "grpc.retryableStatusCodes": GrpcRetryableStatusCodesConfig,
    "grpc.neverRetryable": GrpcNeverRetryableConfig,
    "grpc.alwaysRetryable": GrpcAlwaysRetryableConfig,
}
"""gRPC classifier kinds -> config classes; the config model adds them to the HTTP kinds."""
