"""Shared fixtures: uvloop, fake clock, upstream servers, and meshd running in-process."""

from __future__ import annotations

import os
import pathlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
import uvloop
import yaml
from hypothesis import settings

from meshd.clock import MONOTONIC, Clock
from meshd.config.loader import load_config
from meshd.config.model import MeshdConfig
from meshd.daemon import Daemon
from meshd.runtime import Runtime
from tests.support.clock import FakeClock, settle
from tests.support.upstreams import Handler, Upstream, ok_handler

# Under CI the property tests run a fixed set of examples, so a run is reproducible and a
# red build means a change broke something; elsewhere they explore new examples each run (and
# hypothesis keeps any failure in .hypothesis/ to replay it first next time).
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
if os.environ.get("CI") == "true":
    settings.load_profile("ci")


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, object]:
    """Run every async test on uvloop, as meshd runs in production."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(params=["nghttp2", "h2ref"])
def h2_codec(request: pytest.FixtureRequest) -> Iterator[str]:
    """Runs a test once per HTTP/2 codec backend: in-process meshd picks it through
    meshd.http2.factory, a meshd process through MESHD_H2_CODEC (set here, inherited).
    An HTTP/2 test module opts in with `pytestmark = pytest.mark.usefixtures("h2_codec")`."""
    from meshd.http2 import factory, nghttp2

    name = str(request.param)
    if name == "nghttp2" and not nghttp2.AVAILABLE:
        if os.environ.get("CI") == "true":  # under CI the binding must have been built
            raise AssertionError(nghttp2.WHY_UNAVAILABLE)
        pytest.skip(str(nghttp2.WHY_UNAVAILABLE))
    before = os.environ.get("MESHD_H2_CODEC")
    os.environ["MESHD_H2_CODEC"] = name
    try:
        assert factory.choose() == name
        yield name
    finally:
        if before is None:
            os.environ.pop("MESHD_H2_CODEC", None)
        else:
            os.environ["MESHD_H2_CODEC"] = before
        factory.reset()


@pytest.fixture(params=["fast", "slow"])
def path_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with the fast paths on and off (`MESHD_FAST_PATH`, meshd/fastpath.py): what a
    client and an upstream see must not depend on which path served."""
    monkeypatch.setenv("MESHD_FAST_PATH", "1" if request.param == "fast" else "0")
    mode: str = request.param
    return mode


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def rng() -> random.Random:
    return random.Random(1234)


@pytest.fixture
async def make_upstream() -> AsyncIterator[Callable[..., Awaitable[Upstream]]]:
    started: list[Upstream] = []

    async def make(handler: Handler = ok_handler, **kwargs: object) -> Upstream:
        up = Upstream(handler, **kwargs)  # type: ignore[arg-type]
        await up.start()
        started.append(up)
        return up

    yield make
    for up in started:
        await up.close()


class Mesh:
    """meshd running in this process: its config dir, its fs namer directory, its ports."""

    def __init__(self, daemon: Daemon, root: pathlib.Path) -> None:
        self.daemon = daemon
        self.root = root
        self.disco = root / "disco"

    @property
    def port(self) -> int:
        return self.daemon.port_of(self.daemon.routers[0].label)

    @property
    def admin_port(self) -> int:
        assert self.daemon.admin_port is not None
        return self.daemon.admin_port

    def register(self, service: str, *upstreams: Upstream | str) -> None:
        """Write the fs namer file for `service` (atomically, as an operator's tooling would)."""
        lines = [u if isinstance(u, str) else u.address_line for u in upstreams]
        tmp = self.disco / f".{service}.tmp"
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(self.disco / service)
        for namer in self.daemon.namers.values():
            scan = getattr(namer, "scan", None)
            if scan is not None:
                scan()


def base_config(**router: object) -> dict[str, object]:
    router_config: dict[str, object] = {
        "label": "outgoing",
        "servers": [{"ip": "127.0.0.1", "port": 0}],
        "dtab": "/svc => /#/fs;",
    }
    router_config.update(router)
    return {
        "admin": {"ip": "127.0.0.1", "port": 0},
        "namers": [{"kind": "fs", "rootDir": "./disco"}],
        "routers": [router_config],
    }


@pytest.fixture
async def make_mesh(tmp_path: pathlib.Path) -> AsyncIterator[Callable[..., Awaitable[Mesh]]]:
    meshes: list[Mesh] = []

    async def make(
        config: dict[str, object] | None = None,
        *,
        files: dict[str, str] | None = None,
        clock: Clock = MONOTONIC,
        **router: object,
    ) -> Mesh:
        """A meshd in-process. `clock=FakeClock()` puts all its timers and sleeps on the test's clock
        (listener, pool, timeouts, retries, and the fs namer's poll: it rescans only when advanced)."""
        root = tmp_path / f"mesh{len(meshes)}"
        (root / "disco").mkdir(parents=True)
        for name, text in (files or {}).items():
            (root / name).write_text(text)
        cfg = load_config(yaml.safe_dump(config or base_config(**router)), MeshdConfig)
        daemon = Daemon(cfg, Runtime(clock=clock, base_dir=root, rng=random.Random(7)))
        await daemon.start()
        mesh = Mesh(daemon, root)
        meshes.append(mesh)
        return mesh

    yield make
    for mesh in meshes:  # (the drain timeout is on the mesh's clock: `settle` lets it pass on a fake one)
        await settle(mesh.daemon.runtime.clock, mesh.daemon.shutdown(drain_timeout_s=2.0), 2.0)
