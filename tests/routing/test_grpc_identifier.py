"""Kind `grpc`: `/pkg.Service/Method` -> `/svc/pkg.Service` (or `/svc/pkg.Service/Method`)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshd.config import ConfigError, load_config
from meshd.config.model import MeshdConfig
from routing.identifiers.base import IdentificationError
from routing.identifiers.grpc import GrpcIdentifierConfig
from routing.identifiers.registry import IDENTIFIERS
from routing.path import Path
from tests.routing.test_identifiers import Head


@pytest.mark.parametrize(
    ("config", "target", "expected"),
    [
        (GrpcIdentifierConfig(), "/bank.Ledger/Post", "/svc/bank.Ledger"),
        (GrpcIdentifierConfig(), "/grpc.health.v1.Health/Check", "/svc/grpc.health.v1.Health"),
        (GrpcIdentifierConfig(), "/Greeter/SayHello", "/svc/Greeter"),
        (GrpcIdentifierConfig(segments=2), "/bank.Ledger/Post", "/svc/bank.Ledger/Post"),
        (GrpcIdentifierConfig(prefix="/grpc"), "/bank.Ledger/Post", "/grpc/bank.Ledger"),
        (GrpcIdentifierConfig(), "http://ledger:4140/bank.Ledger/Post", "/svc/bank.Ledger"),
    ],
)
def test_names_the_service(config: GrpcIdentifierConfig, target: str, expected: str) -> None:
    identified = config.build().identify(Head(method="POST", target=target))
    assert identified.path.show() == expected
    assert identified.target is None  # the upstream gets the whole method path


@pytest.mark.parametrize(
    "target", ["/", "/bank.Ledger", "/bank.Ledger/", "//Post", "/a/b/c", "/a/b?x=1", "/a/b#f", "*", "http://h"]
)
def test_refuses_what_is_not_a_grpc_method_path(target: str) -> None:
    with pytest.raises(IdentificationError, match="is not a gRPC method path"):
        GrpcIdentifierConfig().build().identify(Head(method="POST", target=target))


label = st.text(st.sampled_from("abcXYZ019._-"), min_size=1, max_size=12)


@given(label, label)
def test_any_service_and_method_is_named_by_its_service(service: str, method: str) -> None:
    identified = GrpcIdentifierConfig().build().identify(Head(method="POST", target=f"/{service}/{method}"))
    assert identified.path == Path.read("/svc").concat(Path((service,)))


@pytest.mark.parametrize("segments", [0, 3, True])
def test_segments_is_one_or_two(segments: int) -> None:
    with pytest.raises(ValueError, match="segments must be 1"):
        GrpcIdentifierConfig(segments=segments)


def test_registered_and_loaded_from_yaml() -> None:
    assert IDENTIFIERS["grpc"] is GrpcIdentifierConfig
    text = "routers:\n  - label: grpc\n    identifier: {kind: grpc, segments: 2, prefix: /grpc}\n"
    assert load_config(text, MeshdConfig).routers[0].identifier == GrpcIdentifierConfig(segments=2, prefix="/grpc")
    with pytest.raises(ConfigError) as info:
        load_config("routers:\n  - label: grpc\n    identifier: {kind: grpc, segments: 5}\n", MeshdConfig)
    assert [p.line for p in info.value.problems] == [3]
