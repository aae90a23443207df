"""Command-line options shared by every bank service: port, database file, replica name, version, meshd URL."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

DEFAULT_MESHD: Final = "http://127.0.0.1:4140"


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceOptions:
    """How one replica of one service runs.

    `db` names the service's SQLite file. Every replica of a service (including a canary version) is given
    the same file, so a replica that dies takes nothing with it.
    """

    service: str
    db: Path
    replica: str
    port: int = 0
    host: str = "127.0.0.1"
    version: str = "v1"
    meshd: str = DEFAULT_MESHD
    events: bool = False
    """Do the after-answer work on the event log (payments publishes, the others consume), not by calls."""
    grpc_port: int | None = None
    """The ledger also serves `bank.Ledger/Post` over gRPC (h2c) on this port (ledger_grpc.py)."""
    ledger_grpc: str | None = None
    """Payments posts to the ledger with gRPC at this `host:port` (meshd's HTTP/2 router) instead of HTTP."""

    def __post_init__(self) -> None:
        if not self.service:
            raise ValueError("service must not be empty")
        if not self.replica:
            raise ValueError("replica must not be empty")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, got {self.port}")
        if not self.version:
            raise ValueError("version must not be empty")
        if not self.meshd.startswith(("http://", "https://")):
            raise ValueError(f"meshd must be an http:// URL, got {self.meshd!r}")
        if self.grpc_port is not None and not 0 <= self.grpc_port <= 65535:
            raise ValueError(f"grpc port must be between 0 and 65535, got {self.grpc_port}")
        if self.ledger_grpc is not None and (":" not in self.ledger_grpc or "/" in self.ledger_grpc):
            raise ValueError(f"ledger gRPC address must be host:port, got {self.ledger_grpc!r}")


def parse_options(service: str, argv: Sequence[str] | None = None) -> ServiceOptions:
    """Parse `--port P --db FILE --replica NAME [--version v2] [--meshd URL] [--host H] [--events]
    [--grpc-port P] [--ledger-grpc HOST:PORT]`."""
    parser = argparse.ArgumentParser(prog=f"python -m examples.bank.{service}", description=f"bank {service}")
    parser.add_argument("--port", type=int, required=True, help="TCP port to listen on (0: any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--db", type=Path, required=True, help="the service's SQLite file, shared by replicas"
    )
    parser.add_argument("--replica", required=True, help="this replica's name, reported in /_stats")
    parser.add_argument("--version", default="v1", help="version reported in the x-version header")
    parser.add_argument("--meshd", default=DEFAULT_MESHD, help="the local meshd's outgoing router")
    parser.add_argument(
        "--events", action="store_true", help="after-answer work on the event log (the events service)"
    )
    parser.add_argument("--grpc-port", type=int, help="ledger: also serve bank.Ledger/Post over gRPC on this port")
    parser.add_argument(
        "--ledger-grpc", metavar="HOST:PORT", help="payments: post to the ledger with gRPC here (meshd's h2 router)"
    )
    args = parser.parse_args(argv)
    try:
        return ServiceOptions(
            service=service,
            db=args.db,
            replica=args.replica,
            port=args.port,
            host=args.host,
            version=args.version,
            meshd=args.meshd,
            events=args.events,
            grpc_port=args.grpc_port,
            ledger_grpc=args.ledger_grpc,
        )
    except ValueError as exc:
        parser.error(str(exc))
