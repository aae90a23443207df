"""The tls scenario's parts that need no load: its certificates, the meshd configs it writes (loaded
by meshd's own config loader), the Envoy configs it renders, and the s_time output it reads."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import yaml

from bench.scenarios.tls import (
    BACK_NAME,
    HOP_H2,
    HOPS,
    S_TIME_TARGET,
    Certs,
    TlsOptions,
    TwoHop,
    envoy_hop_values,
    make_certs,
    meshd_configs,
    parse_s_time,
    s_time_command,
)
from bench.targets.base import PEERS_DIR, render
from meshd.config.loader import load_config
from meshd.config.model import MeshdConfig


def test_the_certificates_make_a_mutual_tls_pair(tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(certs.back_cert, certs.back_key)
    server.load_verify_locations(certs.ca)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_cert_chain(certs.front_cert, certs.front_key)
    client.load_verify_locations(certs.ca)
    server.verify_mode = ssl.CERT_REQUIRED
    # a handshake over memory BIOs: both sides verify the other, the client checks BACK_NAME
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(c_in, c_out, server_hostname=BACK_NAME)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side in (c, s):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    c.do_handshake()
    s.do_handshake()
    assert s.getpeercert() is not None and c.version() == "TLSv1.3"


@pytest.mark.parametrize("hop", HOPS)
@pytest.mark.parametrize("tls", [True, False])
def test_meshd_configs_load_and_carry_tls_only_on_the_hop_between(tmp_path: Path, tls: bool, hop: str) -> None:
    certs = make_certs(tmp_path / "certs")
    front, back = meshd_configs(TwoHop("meshd", tls, hop), certs, front_port=4140, front_admin=9990, back_port=4141,
                                back_admin=9991, disco=tmp_path / "disco")
    front_config = load_config(yaml.safe_dump(front), MeshdConfig)
    back_config = load_config(yaml.safe_dump(back), MeshdConfig)
    (outgoing,), (incoming,) = front_config.routers, back_config.routers
    assert outgoing.dtab == "/svc => /$/inet/127.0.0.1/4141;" and outgoing.servers[0].tls is None
    assert incoming.label == "incoming" and repr(incoming.identifier.build()) == "StaticIdentifier(/svc/bench)"
    if tls:
        assert outgoing.client.tls is not None and outgoing.client.tls.server_name == BACK_NAME
        assert incoming.servers[0].tls is not None and incoming.servers[0].tls.require_client_cert
    else:
        assert outgoing.client.tls is None and incoming.servers[0].tls is None
    # HTTP/1.1 on both outer sides; between the two, what the hop says
    assert outgoing.protocol == "http" and incoming.upstream_protocol(incoming.client) == "http"
    assert outgoing.upstream_protocol(outgoing.client) == hop
    assert incoming.protocol == hop and incoming.h2.accept_http1 is (hop == HOP_H2)


@pytest.mark.parametrize("hop", HOPS)
@pytest.mark.parametrize("tls", [True, False])
def test_envoy_configs_render_to_yaml_with_tls_in_its_places(tmp_path: Path, tls: bool, hop: str) -> None:
    certs = make_certs(tmp_path)
    front_values, back_values = envoy_hop_values(TwoHop("envoy", tls, hop), certs)
    front = yaml.safe_load(render((PEERS_DIR / "envoy-tls-front.yaml.tmpl").read_text(), {
        "listen_port": "1", "admin_port": "2", "back_port": "3", **front_values}))
    back = yaml.safe_load(render((PEERS_DIR / "envoy-tls-back.yaml.tmpl").read_text(), {
        "listen_port": "3", "admin_port": "4", **back_values,
        "endpoints": "              - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 5}}}"}))
    (cluster,) = front["static_resources"]["clusters"]
    (chain,) = back["static_resources"]["listeners"][0]["filter_chains"]
    assert ("transport_socket" in cluster) is tls and ("transport_socket" in chain) is tls
    h2 = hop == HOP_H2
    if tls:
        upstream = cluster["transport_socket"]["typed_config"]
        assert upstream["sni"] == BACK_NAME
        assert upstream["common_tls_context"]["tls_certificates"][0]["certificate_chain"]["filename"] == str(certs.front_cert)
        assert upstream["common_tls_context"]["alpn_protocols"] == (["h2"] if h2 else ["http/1.1"])
        downstream = chain["transport_socket"]["typed_config"]
        assert downstream["require_client_certificate"] is True
        assert downstream["common_tls_context"]["alpn_protocols"] == (["h2", "http/1.1"] if h2 else ["http/1.1"])
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"]["socket_address"]["port_value"] == 3
    options = cluster.get("typed_extension_protocol_options", {})
    assert ("http2_protocol_options" in str(options)) is h2
    manager = chain["filters"][0]["typed_config"]
    assert manager["codec_type"] == ("AUTO" if h2 else "HTTP1")


def test_hops_option_is_checked() -> None:
    assert TlsOptions().hop_list == ("http", "h2")
    assert TlsOptions(hops="h2").hop_list == ("h2",)
    with pytest.raises(ValueError, match="hops"):
        TlsOptions(hops="h3")


def test_s_time_output_and_command() -> None:
    text = ("Collecting connection statistics for 1 seconds\ntttt\n\n"
            "543 connections in 0.52s; 1044.23 connections/user sec, bytes read 87423\n"
            "543 connections in 2 real seconds, 161 bytes read per connection\n")
    assert parse_s_time(text) == 543
    with pytest.raises(ValueError):
        parse_s_time("connect: Connection refused\n")
    argv = s_time_command("openssl", 4141, make_certs_stub(), 3)
    assert argv[:7] == ["openssl", "s_time", "-connect", "127.0.0.1:4141", "-new", "-time", "3"]
    assert argv[-2:] == ["-www", S_TIME_TARGET] and "\r\nHost: bench\r\n" in S_TIME_TARGET


def make_certs_stub() -> Certs:
    p = Path("/x")
    return Certs(p, p, p, p, p, p, p)
