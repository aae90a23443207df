"""The TLS and authorization keys of the config: defaults, and every invariant reported at its
YAML path and line."""

from __future__ import annotations

import pytest

from meshd.config import ConfigError, load_config
from meshd.config.model import MeshdConfig, server_name_for
from meshd.config.yaml_lines import line_of
from routing.path import Path

HEAD = "routers:\n  - label: r\n"


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(HEAD + text, MeshdConfig)
    return [str(p) for p in info.value.problems]


def test_defaults() -> None:
    config = load_config(
        HEAD + "    servers: [{port: 1, tls: {certPath: a.crt, keyPath: a.key}}]\n    client: {tls: {}}\n", MeshdConfig
    )
    server = config.routers[0].servers[0].tls
    assert server is not None and server.ca_path is None and not server.require_client_cert
    assert server.handshake_timeout_ms == 10_000
    client = config.routers[0].client.tls
    assert client is not None and client.server_name is None and client.ca_path is None and client.cert_path is None
    assert config.routers[0].authorization is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "    servers:\n      - tls:\n          certPath: a\n          keyPath: b\n          requireClientCert: true\n",
            "routers[0].servers[0].tls.requireClientCert: line 7: needs caPath",
        ),
        ("    client:\n      tls:\n        certPath: a\n", "routers[0].client.tls: line 4: certPath and keyPath go together"),
        (
            "    clients:\n      - prefix: /#/fs\n        tls:\n          serverName: '{service}.svc'\n",
            "routers[0].clients[0].tls.serverName: line 6: {service} in '{service}.svc': use {N}",
        ),
        ("    client:\n      tls: {serverName: 'a{1'}\n", "routers[0].client.tls.serverName: line 4: unmatched '{'"),
        ("    servers: [{tls: {certPath: a, keyPath: b, handshakeTimeoutMs: 0}}]\n", "tls.handshakeTimeoutMs: line 3: expected an integer >= 1, got 0"),
        (
            "    authorization:\n      rules:\n        - {name: a, prefix: /svc, allow: ['x*y']}\n",
            "routers[0].authorization.rules[0].allow: line 5: 'x*y': '*' may only end a pattern",
        ),
        (
            "    authorization:\n      rules:\n        - {name: a, prefix: /svc}\n        - {name: a, prefix: /x}\n",
            "routers[0].authorization.rules: line 4: rule names must be unique, repeated: a",
        ),
        ("    authorization: {default: maybe}\n", "routers[0].authorization.default: line 3:"),
    ],
)
def test_a_bad_tls_or_authorization_key_is_reported_at_its_line(text: str, expected: str) -> None:
    found = problems(text)
    assert any(expected in p for p in found), found


def test_server_name_templates_use_the_bound_names_segments() -> None:
    ledger = Path.read("/#/io.l5d.k8s/bank/http/ledger")
    assert server_name_for("{-1}.{2}.svc", ledger) == "ledger.bank.svc"
    assert server_name_for("meshd.linkerd.svc", ledger) == "meshd.linkerd.svc"
    with pytest.raises(ValueError, match="has no segment 9"):
        server_name_for("{9}", ledger)


def test_line_of_finds_a_yaml_path() -> None:
    text = "routers:\n  - label: r\n    servers:\n      - port: 1\n        tls:\n          certPath: a\n"
    assert line_of(text, "routers[0].servers[0].tls.certPath") == 6
    assert line_of(text, "routers[0].servers[1].tls") is None
    assert line_of("[", "a") is None
