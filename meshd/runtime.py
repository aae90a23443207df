"""Runtime: the shared bundle handed to every builder (namers, balancers, routers)."""

from __future__ import annotations

import logging
import pathlib
import random
from dataclasses import dataclass, field

from meshd.clock import MONOTONIC, Clock
from meshd.exposition import Registry
from meshd.tls.stats import TlsStats
from meshd.tracing.spans import Tracer


@dataclass(slots=True)
class Runtime:
    """What plug-ins receive when they are built.

    `base_dir` is the directory of the config file: relative paths in the config
    (fs namer rootDir, routes files, kubeconfig) resolve against it.
    `registry` holds the metrics the admin server exports beside meshd's own (meshd/exposition.py).
    """

    clock: Clock = MONOTONIC
    rng: random.Random = field(default_factory=random.Random)
    registry: Registry = field(default_factory=Registry)
    base_dir: pathlib.Path = field(default_factory=pathlib.Path.cwd)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("meshd"))
    #: TLS handshake, failure, reload and expiry counters of every server and client (meshd/tls)
    tls: TlsStats = field(default_factory=TlsStats)
    #: distributed tracing (docs/tracing.md): set by the daemon when `tracing` has a collector;
    #: None: off, and routers leave the trace filter out of their chain
    tracer: Tracer | None = None

    def resolve_path(self, path: str) -> pathlib.Path:
        p = pathlib.Path(path)
        return p if p.is_absolute() else self.base_dir / p
