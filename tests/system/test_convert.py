"""`meshd convert` on linkerd 1 configs: the published linkerd examples for Kubernetes DaemonSets
(copies in tests/system/linkerd_examples/, origin at the top of each) and a config with every
section meshd carries over. Each result must pass `meshd check`; what is left out is said."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from meshd.convert import ConvertError, convert

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = pathlib.Path(__file__).parent / "linkerd_examples"


def meshd(*args: str, cwd: pathlib.Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "meshd", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("example", ["linkerd.yml", "linkerd-latency.yml", "servicemesh.yml"])
def test_linkerd_examples_convert_and_pass_meshd_check(example: str, tmp_path: pathlib.Path) -> None:
    done = meshd("convert", str(EXAMPLES / example), "-o", "meshd.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith(f"{EXAMPLES / example}: converted; ")
    checked = meshd("check", "-c", "meshd.yaml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.splitlines()[0] == "meshd.yaml: ok"
    text = (tmp_path / "meshd.yaml").read_text()
    notes = done.stderr.splitlines()[1:]
    for note in notes:  # every note is also a comment at the top of the file
        assert f"#   - {note.strip()}" in text


def test_daemonset_example_keeps_its_routers_dtabs_and_transformers() -> None:
    result = convert((EXAMPLES / "linkerd.yml").read_text())
    config = result.config
    assert config["namers"] == [{"kind": "k8s", "prefix": "/#/io.l5d.k8s"}]
    outgoing, incoming = config["routers"]
    assert outgoing["label"] == "outgoing" and outgoing["servers"] == [{"ip": "0.0.0.0", "port": 4140}]
    assert outgoing["dtab"].splitlines()[0] == "/srv        => /#/io.l5d.k8s/default/http;"
    assert outgoing["transformers"] == [{"kind": "daemonset", "path": "/#/io.l5d.k8s/default/incoming/l5d"}]
    assert incoming["transformers"] == [{"kind": "localnode"}]
    assert any("kubectl proxy" in n for n in result.notes)
    assert any(n.startswith("telemetry: not carried over (io.l5d.recentRequests)") for n in result.notes)


def test_servicemesh_example_says_what_it_left_out() -> None:
    result = convert((EXAMPLES / "servicemesh.yml").read_text())
    labels = [r["label"] for r in result.config["routers"]]
    # the h2 and gRPC routers carry over too (meshd has protocol: h2); none is left out
    assert labels == ["http-outgoing", "http-incoming", "h2-outgoing", "h2-incoming", "grpc-outgoing",
                      "gprc-incoming", "http-ingress", "h2-ingress"]
    assert not [n for n in result.notes if "not carried over: meshd routes" in n]
    routers = {r["label"]: r for r in result.config["routers"]}
    assert routers["grpc-outgoing"]["protocol"] == "h2"
    assert routers["grpc-outgoing"]["identifier"] == {"kind": "grpc"}  # io.l5d.header.path, segments 1
    outgoing = result.config["routers"][0]
    # the namer-level daemonset transformer of /io.l5d.k8s.http moves to the router that uses it
    assert outgoing["transformers"] == [{"kind": "daemonset", "path": "/#/io.l5d.k8s/linkerd/http-incoming/l5d"}]
    assert any("io.l5d.rewrite not carried over" in n for n in result.notes)
    assert any("/$/io.buoyant.porthostPfx is a linkerd system namer" in n for n in result.notes)
    assert any(n.endswith("tls: not carried over: meshd speaks plain HTTP to upstreams") for n in result.notes)


#: A linkerd 1 config written for this test from the shapes in linkerd's configuration reference
#: (service and client sections, retries and budgets, failure accrual, identifiers, fs namer).
FULL = textwrap.dedent("""\
    admin: {port: 9990}
    namers:
    - kind: io.l5d.fs
      rootDir: disco
    routers:
    - protocol: http
      label: web
      identifier:
        kind: io.l5d.header.token
        header: x-service
      dtab: /svc => /#/io.l5d.fs;
      bindingTimeoutMs: 5000
      servers:
      - port: 4140
      service:
        kind: io.l5d.global
        totalTimeoutMs: 2000
        responseClassifier: {kind: io.l5d.http.retryableRead5XX}
        retries:
          budget: {minRetriesPerSec: 5, percentCanRetry: 0.1, ttlSecs: 15}
          backoff: {kind: jittered, minMs: 10, maxMs: 100}
      client:
        kind: io.l5d.static
        configs:
        - prefix: /
          loadBalancer: {kind: ewma, decayTimeMs: 5000}
          failureAccrual:
            kind: io.l5d.consecutiveFailures
            failures: 3
            backoff: {kind: constant, ms: 1000}
        - prefix: "/#/io.l5d.fs/{service}"
          requestAttemptTimeoutMs: 300
          loadBalancer: {kind: aperture}
    - protocol: thrift
      label: legacy
    """)


def test_service_and_client_sections_retries_budgets_and_accrual_carry_over(tmp_path: pathlib.Path) -> None:
    result = convert(FULL)
    (web,) = result.config["routers"]
    assert web["identifier"] == {"kind": "header", "header": "x-service"}
    assert web["bindingTimeoutMs"] == 5000
    assert web["service"] == {
        "totalTimeoutMs": 2000,
        "responseClassifier": {"kind": "retryableRead5XX"},
        "retries": {"budget": {"ttlSecs": 15, "minRetriesPerSec": 5, "percentCanRetry": 0.1},
                    "backoff": {"kind": "jittered", "minMs": 10, "maxMs": 100}},
    }
    assert web["client"] == {
        "loadBalancer": {"kind": "ewma", "decayTimeMs": 5000},
        "failureAccrual": {"kind": "consecutiveFailures", "failures": 3, "backoff": {"kind": "constant", "ms": 1000}},
    }
    assert web["clients"] == [{"prefix": "/#/io.l5d.fs/*", "requestAttemptTimeoutMs": 300}]
    assert result.config["namers"] == [{"kind": "fs", "rootDir": "disco", "prefix": "/#/io.l5d.fs"}]
    assert "routers[1] (legacy): protocol thrift not carried over: meshd routes HTTP/1.1 and HTTP/2 only" in result.notes
    assert any("loadBalancer: kind aperture not carried over" in n for n in result.notes)
    (tmp_path / "disco").mkdir()
    (tmp_path / "meshd.yaml").write_text(result.to_yaml("full.yaml"))
    assert meshd("check", "--strict", "-c", "meshd.yaml", cwd=tmp_path).returncode == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: [1\n", "not valid YAML"),
        ("kind: ConfigMap\ndata: {x: 'y: 1'}\n", "no linkerd config found"),
        ("routers:\n- protocol: thrift\n  label: a\n", "no router could be carried over"),
    ],
)
def test_inputs_that_cannot_be_converted(text: str, message: str) -> None:
    with pytest.raises(ConvertError, match=message):
        convert(text)


def test_the_command_reports_an_unusable_input(tmp_path: pathlib.Path) -> None:
    (tmp_path / "l5d.yaml").write_text("routers:\n- protocol: thrift\n  label: a\n")
    done = meshd("convert", "l5d.yaml", cwd=tmp_path)
    assert done.returncode == 1 and done.stdout == ""
    assert "l5d.yaml: no router could be carried over: routers[0] (a): protocol thrift" in done.stderr


H2 = textwrap.dedent("""\
    namers:
    - kind: io.l5d.fs
      rootDir: disco
    routers:
    - protocol: h2
      label: grpc
      experimental: true
      servers:
      - port: 4142
        ip: 0.0.0.0
      identifier:
        kind: io.l5d.header.path
        segments: 1
      dtab: /svc => /#/io.l5d.fs;
      service:
        totalTimeoutMs: 2000
        responseClassifier:
          kind: io.l5d.h2.grpc.retryableStatusCodes
          retryableStatusCodes: [14, 4]
      client:
        kind: io.l5d.static
        configs:
        - prefix: /#/io.l5d.fs/bank.Audit
          requestAttemptTimeoutMs: 500
    - protocol: h2
      label: h2
      experimental: true
      servers:
      - port: 4143
      identifier:
        kind: io.l5d.header.token
        header: ":authority"
      dtab: /svc => /#/io.l5d.fs;
      service:
        kind: io.l5d.static
        configs:
        - prefix: /svc/bank.Ledger
          responseClassifier: {kind: io.l5d.h2.grpc.default}
        - prefix: /svc/web
          responseClassifier: {kind: io.l5d.h2.retryableRead5XX}
    - protocol: h2
      label: paths
      servers:
      - port: 4144
      identifier:
        kind: io.l5d.header.path
        segments: 3
      dtab: /svc => /#/io.l5d.fs;
    """)


def test_a_linkerd_h2_config_with_grpc_classifiers_carries_over(tmp_path: pathlib.Path) -> None:
    result = convert(H2)
    grpc, h2, paths = result.config["routers"]
    assert grpc["protocol"] == "h2" and grpc["servers"] == [{"ip": "0.0.0.0", "port": 4142}]
    assert grpc["identifier"] == {"kind": "grpc"}
    assert grpc["service"] == {
        "totalTimeoutMs": 2000,
        "responseClassifier": {"kind": "grpc.retryableStatusCodes", "retryableStatusCodes": [14, 4]},
    }
    assert grpc["clients"] == [{"prefix": "/#/io.l5d.fs/bank.Audit", "requestAttemptTimeoutMs": 500}]
    assert h2["identifier"] == {"kind": "header"}  # :authority is the request's Host in meshd
    assert h2["services"] == [
        {"prefix": "/svc/bank.Ledger", "responseClassifier": {"kind": "grpc.default"}},
        {"prefix": "/svc/web", "responseClassifier": {"kind": "retryableRead5XX"}},
    ]
    assert paths["identifier"] == {"kind": "path", "segments": 3}  # not a gRPC method path: the path identifier
    assert any("io.l5d.header.path became identifier grpc" in n for n in result.notes)
    assert any("became grpc.default" in n and "failureStatusCodes" in n for n in result.notes)
    (tmp_path / "disco").mkdir()
    (tmp_path / "meshd.yaml").write_text(result.to_yaml("h2.yaml"))
    checked = meshd("check", "--strict", "-c", "meshd.yaml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
