"""Response classifiers: every kind x method x status x (hint, honour) and kind x method x written."""

from __future__ import annotations

import pytest

from meshd.retry.classifiers import (
    CLASSIFIERS,
    AllSuccessfulConfig,
    ResponseClass,
    RetryableIdempotent5XXConfig,
    success_class,
)

S, R, F = ResponseClass.SUCCESS, ResponseClass.RETRYABLE_FAILURE, ResponseClass.FAILURE

METHODS = ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE", "POST", "PATCH", "CONNECT", "PROPFIND", "get"]
STATUSES = [100, 101, 200, 201, 204, 301, 304, 400, 404, 429, 499, 500, 501, 502, 503, 504, 599, 600, 999]

# The spec, restated independently of the code (linkerd 1 ResponseClassifiers + ClassifiedRetries.Default).
READ = {"GET", "HEAD", "OPTIONS", "TRACE"}
RETRYABLE_METHODS = {
    "nonRetryable5XX": set(),
    "retryableRead5XX": READ,
    "retryableIdempotent5XX": READ | {"PUT", "DELETE"},
    "allSuccessful": set(),
}
FIVE_XX_FAILS = {
    "nonRetryable5XX": True,
    "retryableRead5XX": True,
    "retryableIdempotent5XX": True,
    "allSuccessful": False,
}


def expected_response(kind: str, method: str, status: int, hint: bool, honour: bool) -> ResponseClass:
    if not 500 <= status <= 599:
        return S  # 1xx-4xx (and nonsense codes) are the service answering: success, as in linkerd
    if hint and honour:
        return R
    if not FIVE_XX_FAILS[kind]:
        return S
    return R if method in RETRYABLE_METHODS[kind] else F


def expected_error(kind: str, method: str, written: bool) -> ResponseClass:
    if not written:
        return R  # never reached the upstream: safe to send again, whatever the method
    return R if method in RETRYABLE_METHODS[kind] else F


@pytest.mark.parametrize("honour", [False, True])
@pytest.mark.parametrize("kind", sorted(CLASSIFIERS))
def test_response_table(kind, honour):
    classifier = CLASSIFIERS[kind](honor_retryable_header=honour).build()
    checked = 0
    for method in METHODS:
        for status in STATUSES:
            for hint in (False, True):
                got = classifier.classify_response(method, status, hint)
                assert got is expected_response(kind, method, status, hint, honour), (method, status, hint)
                checked += 1
    assert checked == len(METHODS) * len(STATUSES) * 2


@pytest.mark.parametrize("kind", sorted(CLASSIFIERS))
def test_error_table(kind):
    classifier = CLASSIFIERS[kind]().build()
    for method in METHODS:
        for written in (False, True):
            assert classifier.classify_error(method, written) is expected_error(kind, method, written), (
                method,
                written,
            )


def test_default_classifier_retries_idempotent_but_never_post_after_write():
    classifier = RetryableIdempotent5XXConfig().build()
    assert classifier.classify_response("PUT", 503, False) is R
    assert classifier.classify_response("POST", 503, False) is F
    assert classifier.classify_error("POST", written=True) is F
    assert classifier.classify_error("POST", written=False) is R
    assert classifier.classify_error("DELETE", written=True) is R


def test_retryable_header_is_ignored_unless_honoured():
    assert RetryableIdempotent5XXConfig().build().classify_response("POST", 503, True) is F
    assert (
        RetryableIdempotent5XXConfig(honor_retryable_header=True).build().classify_response("POST", 503, True)
        is R
    )
    # A hint on a non-5xx answer means nothing.
    assert (
        RetryableIdempotent5XXConfig(honor_retryable_header=True).build().classify_response("POST", 200, True)
        is S
    )


def test_methods_are_case_sensitive():
    # RFC 9110 §9.1: method names are case-sensitive; "get" is not GET and is never retried after write.
    classifier = RetryableIdempotent5XXConfig().build()
    assert classifier.classify_response("get", 503, False) is F
    assert classifier.classify_error("get", written=True) is F


def test_all_successful_still_counts_errors_as_failures():
    classifier = AllSuccessfulConfig().build()
    assert classifier.classify_response("GET", 500, False) is S
    assert classifier.classify_error("GET", written=True) is F


def test_success_class_header_values():
    assert success_class(S) == "1.0"
    assert success_class(R) == "0.0"
    assert success_class(F) == "0.0"
    assert [c.is_failure for c in (S, R, F)] == [False, True, True]


@pytest.mark.parametrize("kind", sorted(CLASSIFIERS))
def test_registry_kind_matches_class_and_default_builds(kind):
    config = CLASSIFIERS[kind]()
    assert type(config).KIND == kind
    classifier = config.build()
    assert classifier.name == kind
    assert kind in repr(classifier)


def test_honor_retryable_header_must_be_a_boolean():
    with pytest.raises(ValueError, match="honorRetryableHeader"):
        RetryableIdempotent5XXConfig(honor_retryable_header="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["nonRetryable5XX", "retryableRead5XX", "retryableIdempotent5XX"])
@pytest.mark.parametrize("hint", [False, True])
def test_508_loop_detected_is_never_retryable(kind, hint):
    classifier = CLASSIFIERS[kind](honor_retryable_header=True).build()
    assert classifier.classify_response("GET", 508, hint) is ResponseClass.FAILURE


def test_508_is_a_success_for_all_successful():
    assert CLASSIFIERS["allSuccessful"]().build().classify_response("GET", 508, True) is ResponseClass.SUCCESS
