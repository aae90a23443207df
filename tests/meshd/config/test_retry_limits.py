"""`service.retries.maxRetries` and `maxRequeues`: defaults, bounds, and per-prefix overrides."""

from __future__ import annotations

import textwrap

import pytest

from meshd.config.errors import ConfigError
from meshd.config.loader import load_config
from meshd.config.model import MeshdConfig
from routing.path import Path


def load(text: str) -> MeshdConfig:
    return load_config(textwrap.dedent(text), MeshdConfig)


def test_defaults():
    retries = load("routers:\n  - label: outgoing\n").routers[0].service.retries
    assert (retries.max_retries, retries.max_requeues) == (2, 10)


def test_service_and_services_entries_set_them():
    router = load(
        """\
        routers:
          - label: outgoing
            service:
              retries: {maxRetries: 0, maxRequeues: 3}
            services:
              - prefix: /svc/reads
                retries: {maxRetries: 5}
        """
    ).routers[0]
    default = router.service_for(Path.read("/svc/accounts")).retries
    assert (default.max_retries, default.max_requeues) == (0, 3)
    reads = router.service_for(Path.read("/svc/reads")).retries
    # an entry's `retries:` replaces the whole section: what it leaves out takes the defaults
    assert (reads.max_retries, reads.max_requeues) == (5, 10)


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (
            "service: {retries: {maxRetries: -1}}",
            "routers[0].service.retries.maxRetries: line 3: expected an integer 0-100, got -1",
        ),
        (
            "service: {retries: {maxRequeues: 101}}",
            "routers[0].service.retries.maxRequeues: line 3: expected an integer 0-100, got 101",
        ),
        (
            "service: {retries: {maxRetries: 1.5}}",
            "routers[0].service.retries.maxRetries: line 3: expected an integer 0-100, got 1.5",
        ),
        (
            "services: [{prefix: /svc/x, retries: {maxRetries: 1000}}]",
            "routers[0].services[0].retries.maxRetries: line 3: expected an integer 0-100, got 1000",
        ),
        (
            "services: [{prefix: /svc/x, retries: {maxRequeues: -2}}]",
            "routers[0].services[0].retries.maxRequeues: line 3: expected an integer 0-100, got -2",
        ),
    ],
)
def test_out_of_range_values_name_path_and_line(section, expected):
    with pytest.raises(ConfigError) as info:
        load_config(f"routers:\n  - label: outgoing\n    {section}\n", MeshdConfig)
    assert [str(p) for p in info.value.problems] == [expected]
