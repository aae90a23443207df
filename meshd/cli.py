"""The `meshd` command: `run`, `check`, `dtab explain`, `--version`. Parsing only; no logic here."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import pathlib
import sys
from collections.abc import Sequence

from meshd import __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    handler = {"run": _run, "check": _check, "dtab": _dtab, "tls": _tls}[args.command]
    return handler(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshd", description="A service-mesh proxy in the spirit of linkerd 1.x.")
    parser.add_argument("--version", action="version", version=f"meshd {__version__}")
    commands = parser.add_subparsers(dest="command")

    run = commands.add_parser("run", help="run the proxy")
    run.add_argument("-c", "--config", required=True, help="the meshd YAML config file")
    run.add_argument("--workers", type=int, default=1, help="worker processes sharing the listen ports (default 1)")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    check = commands.add_parser("check", help="validate a config file (exit 0 if valid)")
    check.add_argument("-c", "--config", required=True)

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
    config = _load(args.config)
    if config is None:
        return 1
    from meshd.config.model import MeshdConfig
    from routing.rules import RoutesError, load_routes_file

    assert isinstance(config, MeshdConfig)
    base = pathlib.Path(args.config).resolve().parent
    problems = 0
    for router in config.routers:
        if router.routes:
            routes_path = base / router.routes
            try:
                load_routes_file(routes_path, router.routes_max_bytes)
            except (OSError, RoutesError) as exc:
                print(f"routers[{router.label}].routes: {exc}", file=sys.stderr)
                problems += 1
    problems += _check_tls_files(config, base, pathlib.Path(args.config))
    if problems:
        return 1
    print(f"{args.config}: ok")
    return 0


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
    if args.workers > 1:
        from meshd.workers import run_workers

        code: int = run_workers(config, base, args.workers)
        return code
    import uvloop

    from meshd.daemon import Daemon
    from meshd.runtime import Runtime

    daemon = Daemon(config, Runtime(base_dir=base), tune_gc=True)
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
    namers = {}
    router: Router | None = None
    try:
        for namer_config in config.namers:
            namer = namer_config.build(runtime)
            namers[namer.prefix] = namer
            await namer.start()
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
        for namer in namers.values():
            await namer.close()


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
