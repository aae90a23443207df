"""Registries: defaults build, YAML examples map onto the right classes, and everything is documented."""

from __future__ import annotations

import dataclasses
import pathlib
import random
import re

import pytest
import yaml

from meshd.retry.backoff import ExponentialBackoffConfig, RetryJitteredBackoffConfig
from meshd.retry.budget_config import RetryBudgetConfig
from meshd.retry.classifiers import RetryableRead5XXConfig
from meshd.retry.registry import (
    BACKOFFS,
    CLASSIFIERS,
    DEFAULT_BACKOFF,
    DEFAULT_BUDGET,
    DEFAULT_RESPONSE_CLASSIFIER,
)

DOC = (pathlib.Path(__file__).parents[3] / "docs" / "retries.md").read_text()


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def from_yaml(registry, text: str):
    """Stand-in for the loader's rule: `kind` picks the class, camelCase keys become snake_case fields."""
    node = yaml.safe_load(text)
    cls = registry[node.pop("kind")]
    return cls(**{snake(key): value for key, value in node.items()})


def test_defaults_are_meshds():
    assert DEFAULT_RESPONSE_CLASSIFIER.KIND == "retryableIdempotent5XX"
    assert DEFAULT_BACKOFF == RetryJitteredBackoffConfig(min_ms=10, max_ms=1000)
    assert DEFAULT_BUDGET == RetryBudgetConfig(ttl_secs=10, min_retries_per_sec=10, percent_can_retry=0.2)
    assert (
        DEFAULT_RESPONSE_CLASSIFIER.build().classify_response("PUT", 502, False).name == "RETRYABLE_FAILURE"
    )
    assert next(DEFAULT_BACKOFF.build(random.Random(0)).delays()) == 0.01
    assert DEFAULT_BUDGET.build(lambda: 0.0).balance == 100


@pytest.mark.parametrize(
    ("registry", "text", "expected"),
    [
        (
            CLASSIFIERS,
            "{kind: retryableRead5XX, honorRetryableHeader: true}",
            RetryableRead5XXConfig(honor_retryable_header=True),
        ),
        (BACKOFFS, "{kind: jittered, minMs: 20, maxMs: 2000}", RetryJitteredBackoffConfig(min_ms=20, max_ms=2000)),
        (
            BACKOFFS,
            "{kind: exponential, startMs: 100, maxMs: 800}",
            ExponentialBackoffConfig(start_ms=100, max_ms=800),
        ),
    ],
)
def test_yaml_example_parses_into_the_right_class(registry, text, expected):
    assert from_yaml(registry, text) == expected


def test_budget_yaml_example():
    node = yaml.safe_load("{ttlSecs: 30, minRetriesPerSec: 5, percentCanRetry: 0.1}")
    assert RetryBudgetConfig(**{snake(k): v for k, v in node.items()}) == RetryBudgetConfig(
        ttl_secs=30, min_retries_per_sec=5, percent_can_retry=0.1
    )


@pytest.mark.parametrize("registry", [CLASSIFIERS, BACKOFFS])
def test_every_kind_builds_by_default_and_is_documented(registry):
    for kind, cls in registry.items():
        assert cls.KIND == kind
        config = cls()
        built = config.build(random.Random(0)) if registry is BACKOFFS else config.build()
        assert built is not None
        assert f"`{kind}`" in DOC
        for f in dataclasses.fields(cls):
            assert f"`{camel(f.name)}`" in DOC or f"`service.retries.backoff.{camel(f.name)}`" in DOC, f.name


def test_config_keys_and_metrics_are_documented():
    for field in dataclasses.fields(RetryBudgetConfig):
        assert f"service.retries.budget.{camel(field.name)}" in DOC
    for key in (
        "service.responseClassifier",
        "service.retries.budget",
        "service.retries.backoff",
        "service.totalTimeoutMs",
        "client.requestAttemptTimeoutMs",
        "l5d-ctx-deadline",
    ):
        assert key in DOC
    for metric in (
        "meshd_retries_total",
        "meshd_retry_budget_exhausted_total",
        "meshd_retry_budget_balance",
        "meshd_timeouts_total",
    ):
        assert f"`{metric}`" in DOC


def test_the_yaml_example_in_the_docs_builds():
    block = re.search(r"```yaml\n(.*?)```", DOC, re.DOTALL)
    assert block is not None
    service = yaml.safe_load(block.group(1))["routers"][0]["service"]
    classifier = from_yaml(CLASSIFIERS, yaml.safe_dump(service["responseClassifier"]))
    backoff = from_yaml(BACKOFFS, yaml.safe_dump(service["retries"]["backoff"]))
    budget = RetryBudgetConfig(**{snake(k): v for k, v in service["retries"]["budget"].items()})
    assert (classifier, backoff, budget) == (DEFAULT_RESPONSE_CLASSIFIER, DEFAULT_BACKOFF, DEFAULT_BUDGET)
