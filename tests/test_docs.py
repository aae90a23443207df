"""Docs stay true: every config key, kind and metric meshd has is documented."""

from __future__ import annotations

import pathlib
import re

import pytest

from meshd.admin.metrics import METRICS
from meshd.config.loader import iter_fields
from meshd.config.model import MeshdConfig

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"


def _config_keys_and_kinds() -> tuple[set[str], set[str]]:
    keys: set[str] = set()
    kinds: set[str] = set()
    for f in iter_fields(MeshdConfig):
        keys.add(re.split(r"[.\]]", f.pattern)[-1].split("[")[0] or f.pattern)
        kinds.update(re.findall(r"\[kind=([^\]]+)\]", f.pattern))
    return keys, kinds


def test_every_config_key_is_in_configuration_md():
    text = (DOCS / "configuration.md").read_text()
    keys, _ = _config_keys_and_kinds()
    missing = sorted(k for k in keys if f"`{k}`" not in text)
    assert not missing, f"docs/configuration.md does not mention: {missing}"


def test_every_plugin_kind_is_in_configuration_md():
    text = (DOCS / "configuration.md").read_text()
    _, kinds = _config_keys_and_kinds()
    missing = sorted(k for k in kinds if f"`{k}`" not in text)
    assert not missing, f"docs/configuration.md does not mention kinds: {missing}"


@pytest.mark.parametrize("name", sorted(METRICS))
def test_every_metric_is_in_metrics_md(name):
    assert f"`{name}" in (DOCS / "metrics.md").read_text(), f"docs/metrics.md does not document {name}"


def test_readme_starts_with_the_two_commands():
    readme = (DOCS.parent / "README.md").read_text()
    head = readme[:1500]
    assert "make demo" in head and "make test" in head
