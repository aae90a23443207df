"""Running a bank service as a process: parse its options, build its app, serve it until SIGTERM or SIGINT."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from aiohttp import web

from examples.bank.options import ServiceOptions, parse_options

AppFactory = Callable[[ServiceOptions], web.Application]


def serve(service: str, create_app: AppFactory, argv: Sequence[str] | None = None) -> None:
    """The `main()` of every service module."""
    options = parse_options(service, argv)
    web.run_app(
        create_app(options),
        host=options.host,
        port=options.port,
        print=None,
        access_log=None,
        shutdown_timeout=2.0,
    )
