"""A minimal OTLP/HTTP trace sink for the throughput scenario's tracing rows.

`python -m bench.trace_sink --port N` answers every `POST /v1/traces` with 200 and an empty
body (an empty `ExportTraceServiceResponse`: all spans accepted) and decodes nothing, so that
what the benchmark measures is meshd's cost of tracing, not a collector's. On SIGTERM it prints
the requests and bytes it took to stdout (the bench's log of it).
"""

from __future__ import annotations

import argparse
import asyncio
import signal

_OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n"


class _Counts:
    requests = 0
    body_bytes = 0


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, counts: _Counts) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            counts.requests += 1
            counts.body_bytes += length
            writer.write(_OK)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    counts = _Counts()
    server = await asyncio.start_server(lambda r, w: _serve(r, w, counts), "127.0.0.1", port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
    print(f"trace sink: {counts.requests} export requests, {counts.body_bytes} bytes", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(main(parser.parse_args().port))
