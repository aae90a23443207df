"""The `meshd` command: `run`, `check`, `dtab explain`, `routes diff`, `convert`, `--version`. Parsing only; no logic here."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

from meshd import __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    handler = {"run": _run, "check": _check, "dtab": _dtab, "routes": _routes, "convert": _convert, "tls": _tls}[args.command]
    return handler(args)


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's help formatter, but for its width: argparse's own imports `shutil` for
    `get_terminal_size`, and shutil imports zlib, bz2 and lzma, 0.5 MB of RSS in every meshd
    process, since `add_subparsers` builds a formatter on every start, `meshd run` too
    (docs/benchmarks-memory.md). The width is worked out as shutil does it: `COLUMNS`, else the
    terminal on stdout, else 80 columns; less 2, as argparse does."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position, _columns() - 2 if width is None else width)


def _columns() -> int:
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns > 0:
        return columns
    stdout = sys.__stdout__
    try:
        return (os.get_terminal_size(stdout.fileno()).columns if stdout is not None else 0) or 80
    except (ValueError, OSError):  # closed, detached, or not a terminal
        return 80


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser with `_HelpFormatter`; `add_subparsers` makes its subcommands' parsers
    of the same class."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="meshd", description="A service-mesh proxy in the spirit of linkerd 1.x.")
    parser.add_argument("--version", action="version", version=f"meshd {__version__}")
    commands = parser.add_subparsers(dest="command")

    run = commands.add_parser("run", help="run the proxy")
    run.add_argument("-c", "--config", required=True, help="the meshd YAML config file")
    run.add_argument("--workers", type=int, default=1, help="worker processes sharing the listen ports (default 1)")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.add_argument(
        "--handover-socket",
        metavar="PATH",
        help="serve a zero-downtime upgrade: a newer meshd started with --takeover PATH takes the "
        "listening sockets over, then this one drains and exits (docs/operations.md)",
    )
    run.add_argument(
        "--takeover",
        metavar="PATH",
        help="start by taking the listening sockets over from the meshd serving --handover-socket PATH",
    )

    check = commands.add_parser(
        "check",
        help="validate a config file and its routing files (exit 0 if valid)",
        description="Report every problem of a meshd.yaml and the routing files its routers name (or of one "
        "routing file given with --routes), in one run and one format: the YAML path, the file's line and "
        "column, the reason. Warnings (a weighted branch or a rule's destination that can never bind with "
        "the namers configured) do not fail the check unless --strict is given.",
    )
    check.add_argument("-c", "--config", help="the meshd YAML config file")
    check.add_argument(
        "--routes",
        action="append",
        default=[],
        metavar="FILE",
        help="a routing file to check (repeatable); with -c, against that config's first router and namers",
    )
    check.add_argument("--router", help="with --routes: the router whose dtab and namers to check against")
    check.add_argument("--strict", action="store_true", help="warnings fail the check too (exit 1), for CI")

    tls = commands.add_parser("tls", help="development certificates (docs/tls.md): a CA, then one certificate per node")
    tls_commands = tls.add_subparsers(dest="tls_command", required=True)
    ca = tls_commands.add_parser("ca", help="create a development CA (ca.crt, ca.key) in a directory")
    ca.add_argument("--dir", required=True, help="where to write ca.crt and ca.key")
    ca.add_argument("--name", default="meshd development CA", help="the CA's common name")
    ca.add_argument("--days", type=int, default=365)
    cert = tls_commands.add_parser("cert", help="create a certificate and key signed by the CA in --dir")
    cert.add_argument("name", help="file name stem: writes <name>.crt and <name>.key")
    cert.add_argument("--dir", required=True, help="the directory holding ca.crt and ca.key; the pair is written there")
    cert.add_argument("--dns", action="append", default=[], help="a DNS name (repeatable)")
    cert.add_argument("--ip", action="append", default=[], help="an IP address (repeatable)")
    cert.add_argument("--spiffe", action="append", default=[], help="a URI SAN such as spiffe://bank.local/ns/bank/sa/payments (repeatable)")
    cert.add_argument("--days", type=int, default=90)

    dtab = commands.add_parser("dtab", help="dtab tools")
    dtab_commands = dtab.add_subparsers(dest="dtab_command", required=True)
    explain = dtab_commands.add_parser("explain", help="explain how a logical name is bound")
    explain.add_argument("path", help="the logical name, e.g. /svc/accounts")
    explain.add_argument("-c", "--config", required=True)
    explain.add_argument("--router", help="router label (default: the first)")
    explain.add_argument("--dtab", default="", help="extra dentries, as an l5d-dtab header would add")
    explain.add_argument("--json", action="store_true", help="print JSON instead of text")
    convert = commands.add_parser(
        "convert",
        help="translate a linkerd 1 config into a meshd.yaml",
        description="Read a linkerd 1 config (or a Kubernetes manifest with a ConfigMap holding one) and print "
        "a meshd.yaml. What could not be carried over is listed on stderr and as comments at the top.",
    )
    convert.add_argument("linkerd", help="the linkerd 1 config file")
    convert.add_argument("-o", "--output", help="write the meshd.yaml here instead of to stdout")

    routes = commands.add_parser("routes", help="routing-file tools")
    routes_commands = routes.add_subparsers(dest="routes_command", required=True)
    diff = routes_commands.add_parser(
        "diff",
        help="where traffic goes for a set of names, with the old and with the new routing file",
        description="Bind each name through the router's dtab followed by OLD's entries, then NEW's, with the "
        "config's namers, and show each destination's share of requests before and after. The names are "
        "those given, or every rule prefix and dtab prefix (without '*') of the two files.",
    )
    diff.add_argument("old", help="the routing file in force")
    diff.add_argument("new", help="the edited routing file")
    diff.add_argument("names", nargs="*", help="logical names to compare, e.g. /svc/accounts (default: see above)")
    diff.add_argument("-c", "--config", required=True, help="the meshd YAML config file (namers, router dtab)")
    diff.add_argument("--router", help="router label (default: the first)")
    diff.add_argument("--json", action="store_true", help="print JSON instead of text")
    diff.add_argument("--exit-code", action="store_true", help="exit 1 when some name's traffic changes")
    return parser


def _load(path: str) -> object:
    from meshd.config.errors import ConfigError
    from meshd.config.loader import load_config_file
    from meshd.config.model import MeshdConfig

    try:
        return load_config_file(path, MeshdConfig)
    except ConfigError as exc:
        print(exc.format(), file=sys.stderr)
        return None


def _check(args: argparse.Namespace) -> int:
    from meshd.config.checks import run_check

    if args.config is None and not args.routes:
        print("meshd check: give -c meshd.yaml, --routes routes.yaml, or both", file=sys.stderr)
        return 2
    report = run_check(args.config, args.routes, router=args.router)
    for block in report.blocks:
        print(block, file=sys.stderr)
    tls_problems = 0
    if args.config is not None and not report.errors:
        # the TLS files the config names (docs/tls.md): missing, unreadable, mismatched, expired
        from meshd.config.errors import ConfigError
        from meshd.config.loader import load_config_file
        from meshd.config.model import MeshdConfig

        try:
            config = load_config_file(args.config, MeshdConfig)
        except ConfigError:
            config = None
        if config is not None:
            config_path = pathlib.Path(args.config)
            tls_problems = _check_tls_files(config, config_path.resolve().parent, config_path)
    if report.errors or tls_problems or (args.strict and report.warnings):
        if args.strict and report.warnings and not report.errors:
            count = report.warnings
            print(f"--strict: {count} warning{'s' if count != 1 else ''} fail the check", file=sys.stderr)
        return 1
    for name in report.checked:
        print(f"{name}: ok")
    for note in report.notes:
        print(f"note: {note}")
    if report.warnings:
        count = report.warnings
        print(f"{count} warning{'s' if count != 1 else ''} (shown above); --strict makes warnings fail the check")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from meshd.convert import ConvertError, convert

    try:
        text = pathlib.Path(args.linkerd).read_text(encoding="utf-8")
        result = convert(text)
    except (OSError, UnicodeDecodeError) as exc:
        print(f"{args.linkerd}: cannot read the file: {exc}", file=sys.stderr)
        return 1
    except ConvertError as exc:
        print(f"{args.linkerd}: {exc}", file=sys.stderr)
        return 1
    output = result.to_yaml(args.linkerd)
    if args.output:
        pathlib.Path(args.output).write_text(output, encoding="utf-8")
    else:
        sys.stdout.write(output)
    count = len(result.notes)
    print(f"{args.linkerd}: converted; {count} thing{'s' if count != 1 else ''} not carried over"
          + (":" if count else ""), file=sys.stderr)
    for note in result.notes:
        print(f"  {note}", file=sys.stderr)
    return 0


def _routes(args: argparse.Namespace) -> int:
    from meshd.config.model import MeshdConfig
    from meshd.routes_diff import default_names, diff, load_pair, render

    config = _load(args.config)
    if config is None:
        return 2
    assert isinstance(config, MeshdConfig)
    routers = [r for r in config.routers if args.router is None or r.label == args.router]
    if not routers:
        print(f"no router {args.router!r} (routers: {', '.join(r.label for r in config.routers)})", file=sys.stderr)
        return 2
    router = routers[0]
    old, new, report = load_pair(args.old, args.new, router.routes_max_bytes)
    if old is None or new is None:
        for block in report.blocks:
            print(block, file=sys.stderr)
        return 2
    names = list(args.names) or default_names(old, new)
    for name in names:
        if not name.startswith("/"):
            print(f"{name}: a logical name starts with '/', e.g. /svc/accounts", file=sys.stderr)
            return 2
    base = pathlib.Path(args.config).resolve().parent
    diffs = asyncio.run(diff(config, router, base, old, new, names))
    if args.json:
        print(json.dumps({"router": router.label, "names": [d.to_json() for d in diffs]}, indent=2))
    else:
        print(render(router.label, diffs))
    return 1 if args.exit_code and any(d.changed for d in diffs) else 0


def _check_tls_files(config: object, base: pathlib.Path, config_path: pathlib.Path) -> int:
    """Print every TLS file problem (missing, unreadable, no certificate, key not matching its
    certificate, expired) with its YAML path and line; return how many there were."""
    import time

    from meshd.config.model import ClientTlsConfig, MeshdConfig, ServerTlsConfig
    from meshd.config.yaml_lines import line_of

    assert isinstance(config, MeshdConfig)
    sections: list[tuple[str, ServerTlsConfig | ClientTlsConfig]] = []
    for i, router in enumerate(config.routers):
        for j, server in enumerate(router.servers):
            if server.tls is not None:
                sections.append((f"routers[{i}].servers[{j}].tls", server.tls))
        if router.client.tls is not None:
            sections.append((f"routers[{i}].client.tls", router.client.tls))
        for j, override in enumerate(router.clients):
            if override.tls is not None:
                sections.append((f"routers[{i}].clients[{j}].tls", override.tls))
    if not sections:
        return 0
    from meshd.tls.certs import check_files

    text = config_path.read_text(encoding="utf-8")
    problems = 0

    def resolve(path: str | None) -> pathlib.Path | None:
        if path is None:
            return None
        p = pathlib.Path(path)
        return p if p.is_absolute() else base / p

    for where, tls in sections:
        found = check_files(resolve(tls.cert_path), resolve(tls.key_path), resolve(tls.ca_path), time.time())
        for role, message in found:
            key = f"{where}.{role}"
            line = line_of(text, key)
            print(f"{config_path}: {key}" + (f": line {line}" if line else "") + f": {message}", file=sys.stderr)
            problems += 1
    return problems


def _tls(args: argparse.Namespace) -> int:
    from meshd.tls.certs import make_ca, make_cert, read_pair, write_pair

    directory = pathlib.Path(args.dir)
    if args.tls_command == "ca":
        write_pair(make_ca(args.name, days=args.days), directory / "ca.crt", directory / "ca.key")
        print(f"wrote {directory / 'ca.crt'} and {directory / 'ca.key'} (keep ca.key out of the cluster)")
        return 0
    try:
        ca = read_pair(directory / "ca.crt", directory / "ca.key")
    except OSError as exc:
        print(f"cannot read the CA in {directory}: {exc} (run `meshd tls ca --dir {directory}` first)", file=sys.stderr)
        return 1
    if not (args.dns or args.ip or args.spiffe):
        print("give at least one --dns, --ip or --spiffe name", file=sys.stderr)
        return 2
    issued = make_cert(ca, dns=args.dns, ips=args.ip, uris=args.spiffe, days=args.days)
    write_pair(issued, directory / f"{args.name}.crt", directory / f"{args.name}.key")
    print(f"wrote {directory / (args.name + '.crt')} and {directory / (args.name + '.key')}")
    return 0


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = _load(args.config)
    if config is None:
        return 1
    from meshd.config.model import MeshdConfig

    assert isinstance(config, MeshdConfig)
    if args.workers < 1:
        print("--workers must be at least 1", file=sys.stderr)
        return 2
    base = pathlib.Path(args.config).resolve().parent
    from meshd.daemon import raise_open_file_limit

    raise_open_file_limit()
    if args.workers > 1 and (args.handover_socket or args.takeover):
        print("--handover-socket and --takeover need a single process (no --workers)", file=sys.stderr)
        return 2
    if args.workers > 1:
        from meshd.workers import run_workers

        code: int = run_workers(config, base, args.workers, config_path=pathlib.Path(args.config).resolve())
        return code
    import uvloop

    from meshd.daemon import Daemon
    from meshd.runtime import Runtime

    inherited = None
    if args.takeover:
        from meshd.handover import HandoverError, take_over

        try:
            inherited = take_over(pathlib.Path(args.takeover))
        except HandoverError as exc:
            print(f"meshd: {exc}", file=sys.stderr)
            return 1
    daemon = Daemon(
        config,
        Runtime(base_dir=base),
        tune_gc=True,
        config_path=pathlib.Path(args.config).resolve(),
        inherited=inherited,
        handover_path=pathlib.Path(args.handover_socket) if args.handover_socket else None,
    )
    try:
        uvloop.run(daemon.run_until_signalled())
    except Exception as exc:  # start-up failures (port in use, bad routing file): one clear line
        logging.getLogger("meshd").error("meshd failed: %s", exc)
        return 1
    return 0


def _dtab(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 1
    from meshd.config.model import MeshdConfig

    assert isinstance(config, MeshdConfig)
    base = pathlib.Path(args.config).resolve().parent
    result = asyncio.run(_explain(config, base, args.path, args.router, args.dtab))
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(_render(result))
    return 1 if "error" in result else 0


async def _explain(config: object, base: pathlib.Path, path: str, label: str | None, extra: str) -> dict[str, object]:
    """Build the config's namers and the chosen router (with its routing file), explain, tear down."""
    from meshd.config.model import MeshdConfig
    from meshd.discovery.start import close_namers, start_namers
    from meshd.explain import dentry_origins, explain
    from meshd.router import Router
    from meshd.runtime import Runtime
    from routing.rules import Routes, RoutesError, load_routes_file

    assert isinstance(config, MeshdConfig)
    routers = [r for r in config.routers if label is None or r.label == label]
    if not routers:
        known = ", ".join(r.label for r in config.routers)
        return {"path": path, "error": f"no router {label!r} (routers: {known})"}
    router_config = routers[0]
    runtime = Runtime(base_dir=base)
    routes: Routes | None = None
    if router_config.routes:
        routes_path = runtime.resolve_path(router_config.routes)
        try:
            routes = load_routes_file(routes_path, router_config.routes_max_bytes)
        except RoutesError as exc:
            return {"path": path, "router": router_config.label, "error": exc.short, "errorContext": str(exc)}
        except (OSError, UnicodeDecodeError) as exc:
            return {"path": path, "router": router_config.label, "error": f"{routes_path}: cannot read: {exc}"}
    namers = await start_namers(config.namers, runtime)
    router: Router | None = None
    try:
        router = Router(router_config, runtime, namers)
        if routes is not None:
            router.set_routes_dtab(routes.dtab)
        result = await explain(
            path,
            router.dtab.get(),
            namers,
            lambda id: router.addr_of(id).get(),
            local_dtab=extra,
            origins=dentry_origins(router.label, router.own_dtab, routes),
        )
        result["router"] = router.label
        return result
    finally:
        if router is not None:
            router.close()
        await close_namers(namers)


def _render(result: dict[str, object]) -> str:
    router = f"router {result['router']}: " if result.get("router") else ""
    lines = [f"{router}{result.get('path')}"]
    dentries = result.get("dentries") or []
    assert isinstance(dentries, list)
    if dentries:
        lines.append("dentries (later ones are tried first):")
        width = max(len(str(d["dentry"])) for d in dentries)
        for d in dentries:
            lines.append(f"  #{d['index']:<2} {str(d['dentry']):<{width}}  from {d['from']}")
        lines.append("")
    if "explanation" in result:
        lines.extend(_without_dtab_listing(str(result["explanation"])) if dentries else [str(result["explanation"])])
    elif "error" in result:  # (an explanation ends with the error already)
        lines.append(f"error: {result.get('errorContext') or result['error']}")
    outcomes = result.get("outcomes") or []
    assert isinstance(outcomes, list)
    if outcomes:
        lines.append("")
        lines.append("outcomes:")
    for outcome in outcomes:
        assert isinstance(outcome, dict)
        p = outcome["probability"]
        if "client" in outcome:
            addr = outcome["addr"]
            assert isinstance(addr, dict)
            eps = ", ".join(f"{e['address']} (w={e['weight']:g})" for e in addr.get("endpoints", []))
            lines.append(f"  {float(p) * 100:6.2f}%  {outcome['client']}  [{addr['state']}] {eps}")
        else:
            lines.append(f"  {float(p) * 100:6.2f}%  {outcome['result']} (fails these requests)")
    return "\n".join(lines)


def _without_dtab_listing(explanation: str) -> list[str]:
    """The explanation minus its leading `dtab:` block, which the `dentries` listing already shows."""
    lines = explanation.split("\n")
    if len(lines) > 2 and lines[1] == "dtab:" and "" in lines:
        blank = lines.index("")
        return lines[blank + 1 :]
    return lines
