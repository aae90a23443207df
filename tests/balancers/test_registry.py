"""Registries: every kind builds with its defaults, defaults match linkerd, docs name every key."""

from __future__ import annotations

import dataclasses
import pathlib
import random
import re

import pytest

from balancers.backoff import ExponentialBackoffConfig
from balancers.base import Balancer
from balancers.configs import ConsecutiveFailuresConfig, EwmaConfig, P2CConfig, SuccessRateConfig
from balancers.registry import ACCRUALS, BACKOFFS, BALANCERS, DEFAULT_ACCRUAL, DEFAULT_BALANCER

from .fakes import FakeClock, Member

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "load-balancing.md"
FAMILIES: dict[str, dict[str, type[object]]] = {
    "balancer": dict(BALANCERS),
    "accrual": dict(ACCRUALS),
    "backoff": dict(BACKOFFS),
}


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


@pytest.mark.parametrize("kind", list(BALANCERS))
@pytest.mark.parametrize("accrual", list(ACCRUALS))
def test_every_balancer_builds_with_every_accrual_and_picks(kind, accrual):
    balancer: Balancer[Member] = BALANCERS[kind]().build(FakeClock(), random.Random(0), ACCRUALS[accrual]())
    assert balancer.kind == kind
    balancer.update([Member("a"), Member("b")])
    node = balancer.pick()
    node.finish(node.start(), failure=False)
    assert balancer.statistics().picks == 1


@pytest.mark.parametrize(("family", "kind"), [(f, k) for f, reg in FAMILIES.items() for k in reg])
def test_registry_keys_are_the_config_kinds(family, kind):
    config = FAMILIES[family][kind]
    assert getattr(config, "KIND") == kind  # noqa: B009 - KIND is not on `object`
    assert dataclasses.is_dataclass(config)
    assert getattr(config, "__dataclass_params__").frozen  # noqa: B009
    assert hasattr(config, "__slots__")
    config()  # the defaults are valid


def test_defaults_follow_finagle_and_linkerd():
    assert DEFAULT_BALANCER == "ewma"
    assert DEFAULT_ACCRUAL == "consecutiveFailures"
    assert EwmaConfig() == EwmaConfig(decay_time_ms=10000, max_effort=5)
    assert P2CConfig() == P2CConfig(max_effort=5)
    assert ConsecutiveFailuresConfig() == ConsecutiveFailuresConfig(
        failures=5, backoff=ExponentialBackoffConfig(start_ms=5000, max_ms=300000)
    )
    assert SuccessRateConfig().success_rate == 0.8


@pytest.mark.parametrize(
    "make",
    [lambda: EwmaConfig(decay_time_ms=0), lambda: EwmaConfig(max_effort=0), lambda: P2CConfig(max_effort=0)],
)
def test_bad_balancer_settings_are_refused(make):
    with pytest.raises(ValueError):
        make()


@pytest.mark.parametrize(("family", "kind"), [(f, k) for f, reg in FAMILIES.items() for k in reg])
def test_docs_name_every_kind_and_config_key(family, kind):
    text = DOC.read_text()
    assert re.search(rf"`{kind}`", text), f"{kind} missing from {DOC.name}"
    config = FAMILIES[family][kind]
    assert dataclasses.is_dataclass(config)
    for field in dataclasses.fields(config):
        assert f"`{camel(field.name)}`" in text, f"{kind}.{camel(field.name)} missing from {DOC.name}"


def test_docs_name_every_metric_meshd_exports_from_statistics():
    text = DOC.read_text()
    for metric in (
        "meshd_endpoint_pending",
        "meshd_endpoint_ewma_seconds",
        "meshd_endpoint_state",
        "meshd_ejections_total",
    ):
        assert metric in text
