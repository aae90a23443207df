"""CPU per HTTP/2 exchange for each codec backend: `python -m bench.h2codec`.

The exchange is unary gRPC-shaped: request HEADERS + DATA (end), response HEADERS + DATA +
trailers, with `consumed()` giving the windows back as a proxy would. Scenarios:

- `server`: one server codec alone, fed client bytes recorded beforehand (what a proxy's
  listener side does per request); the recording is the same for every backend.
- `pair`: a client codec and a server codec of the same backend back to back (the proxy runs
  both halves: one exchange in, one out).
- `pair-hpack`: `pair` with a realistic heavy header set (a bearer token, cookies, trace and
  l5d-ctx headers, 24 fields of which two change per request), where HPACK dominates.

CPU is the process's CPU time (time.process_time) over `--exchanges` exchanges, per exchange,
best of `--repeat` runs (the least disturbed by whatever else the machine is doing). docs/
benchmarks-analysis.md ("HTTP/2 codec choice") has the figures and the decision they made.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections.abc import Callable

from meshd.http2.codec import DataReceived, H2Codec, H2Event, H2Settings, Headers
from meshd.http2.h2ref import H2RefCodec

Factory = Callable[[bool], H2Codec]

REQUEST: Headers = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"ledger:8080"),
                    (b":path", b"/bank.Ledger/Post"), (b"content-type", b"application/grpc"),
                    (b"te", b"trailers"), (b"grpc-timeout", b"5S")]
RESPONSE: Headers = [(b":status", b"200"), (b"content-type", b"application/grpc")]
TRAILERS: Headers = [(b"grpc-status", b"0"), (b"grpc-message", b"")]
REQUEST_BODY = b"\x00\x00\x00\x00\x2a" + b"r" * 42
RESPONSE_BODY = b"\x00\x00\x00\x00\x40" + b"s" * 64


def heavy_request(i: int) -> Headers:
    """24 header fields, about 1.8 KB, two of them new on every request."""
    return [
        *REQUEST,
        (b"user-agent", b"grpc-java-netty/1.62.2"),
        (b"authorization", b"Bearer " + b"eyJhbGciOiJSUzI1NiJ9." + b"x" * 600),
        (b"cookie", b"session=" + b"c" * 200),
        (b"x-request-id", f"{i:032x}".encode()),
        (b"traceparent", f"00-{i:032x}-{i:016x}-01".encode()),
        (b"grpc-accept-encoding", b"identity,deflate,gzip"),
        (b"accept-encoding", b"identity"),
        (b"l5d-ctx-trace", b"t" * 40),
        (b"l5d-ctx-deadline", b"1700000000000000000 0"),
        (b"l5d-dst-service", b"/svc/bank.Ledger"),
        (b"l5d-dst-client", b"/#/io.l5d.k8s/default/grpc/ledger"),
        (b"x-b3-traceid", b"b" * 32),
        (b"x-b3-spanid", b"s" * 16),
        (b"x-forwarded-for", b"10.0.0.1"),
        (b"x-envoy-expected-rq-timeout-ms", b"5000"),
        (b"baggage", b"tenant=bank,region=eu-west-1"),
        (b"x-custom-a", b"a" * 64),
    ]


def backends() -> dict[str, Factory]:
    from meshd.http2 import nghttp2

    found: dict[str, Factory] = {
        "h2ref": lambda client: H2RefCodec(client_side=client, settings=H2Settings())}
    if nghttp2.AVAILABLE:
        found["nghttp2"] = lambda client: nghttp2.NgHttp2Codec(client_side=client, settings=H2Settings())
    else:
        print(f"nghttp2: skipped ({nghttp2.WHY_UNAVAILABLE})", file=sys.stderr)
    return found


def _consume(codec: H2Codec, events: list[H2Event]) -> None:
    for e in events:
        if isinstance(e, DataReceived):
            codec.consumed(e.stream_id, e.flow_length)


def record_client(n: int) -> tuple[bytes, list[bytes]]:
    """The client's side of `n` exchanges as bytes (the opening, then one chunk per exchange)."""
    client = H2RefCodec(client_side=True)
    server = H2RefCodec(client_side=False)
    client.start()
    server.start()
    opening = client.data_to_send()
    client.receive(server.data_to_send())
    server.receive(opening)
    opening += client.data_to_send()
    client.receive(server.data_to_send())
    chunks = []
    for _ in range(n):
        sid = client.next_stream_id()
        client.send_headers(sid, REQUEST, end_stream=False)
        client.send_data(sid, REQUEST_BODY, end_stream=True)
        chunk = client.data_to_send()
        _consume(server, server.receive(chunk))
        server.send_headers(sid, RESPONSE, end_stream=False)
        server.send_data(sid, RESPONSE_BODY, end_stream=False)
        server.send_trailers(sid, TRAILERS)
        _consume(client, client.receive(server.data_to_send()))
        chunk += client.data_to_send()  # window updates after the response
        chunks.append(chunk)
    return opening, chunks


def run_server(make: Factory, recording: tuple[bytes, list[bytes]]) -> float:
    opening, chunks = recording
    server = make(False)
    server.start()
    server.data_to_send()
    server.receive(opening)
    server.data_to_send()
    sid = 1
    start = time.process_time()
    for chunk in chunks:
        events = server.receive(chunk)
        for e in events:
            if isinstance(e, DataReceived):
                server.consumed(e.stream_id, e.flow_length)
        server.send_headers(sid, RESPONSE, end_stream=False)
        server.send_data(sid, RESPONSE_BODY, end_stream=False)
        server.send_trailers(sid, TRAILERS)
        server.data_to_send()
        sid += 2
    return (time.process_time() - start) / len(chunks)


def run_pair(make: Factory, n: int, heavy: bool) -> float:
    client, server = make(True), make(False)
    client.start()
    server.start()
    for _ in range(3):
        server.receive(client.data_to_send())
        client.receive(server.data_to_send())
    requests = [heavy_request(i) for i in range(n)] if heavy else [REQUEST] * n
    start = time.process_time()
    for headers in requests:
        sid = client.next_stream_id()
        client.send_headers(sid, headers, end_stream=False)
        client.send_data(sid, REQUEST_BODY, end_stream=True)
        for e in server.receive(client.data_to_send()):
            if isinstance(e, DataReceived):
                server.consumed(e.stream_id, e.flow_length)
        server.send_headers(sid, RESPONSE, end_stream=False)
        server.send_data(sid, RESPONSE_BODY, end_stream=False)
        server.send_trailers(sid, TRAILERS)
        for e in client.receive(server.data_to_send()):
            if isinstance(e, DataReceived):
                client.consumed(e.stream_id, e.flow_length)
        out = client.data_to_send()
        if out:
            server.receive(out)
    return (time.process_time() - start) / n


def measure(exchanges: int, repeat: int) -> dict[str, dict[str, float]]:
    """µs of CPU per exchange: {scenario: {backend: best of `repeat`}}."""
    recording = record_client(exchanges)
    found = backends()
    results: dict[str, dict[str, float]] = {"server": {}, "pair": {}, "pair-hpack": {}}
    gc.collect()
    for name, make in found.items():
        runs: list[tuple[str, Callable[[], float]]] = [
            ("server", lambda m=make: run_server(m, recording)),  # type: ignore[misc]
            ("pair", lambda m=make: run_pair(m, exchanges, False)),  # type: ignore[misc]
            ("pair-hpack", lambda m=make: run_pair(m, exchanges, True)),  # type: ignore[misc]
        ]
        for scenario, run in runs:
            results[scenario][name] = min(run() for _ in range(repeat)) * 1e6
    return results


def table(results: dict[str, dict[str, float]]) -> str:
    names = sorted({b for r in results.values() for b in r}, key=lambda b: (b != "h2ref", b))
    lines = ["| scenario | " + " | ".join(f"{b} (µs CPU)" for b in names) + " | h2ref / nghttp2 |",
             "|:---|" + "---:|" * (len(names) + 1)]
    for scenario, row in results.items():
        ratio = (f"{row['h2ref'] / row['nghttp2']:.1f}x" if "h2ref" in row and row.get("nghttp2")
                 else "-")
        lines.append(f"| {scenario} | " + " | ".join(f"{row[b]:.1f}" for b in names if b in row)
                     + f" | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.h2codec", description=__doc__.split("\n")[0])
    parser.add_argument("--exchanges", type=int, default=2000, help="exchanges per run (2000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the best is kept (3)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    results = measure(args.exchanges, args.repeat)
    print(json.dumps(results, indent=2) if args.json else table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
