"""gRPC semantics on meshd's HTTP/2 path, as small pure pieces (no I/O, no clock of their own).

- `status`: the status codes, telling a gRPC request by its content-type, reading `grpc-status`,
  the gRPC spec's HTTP-status mapping and `grpc-message` percent-encoding.
- `errors`: a meshd error (MeshdError) as a trailers-only gRPC response.
- `timeout`: `grpc-timeout` parsed and formatted, and combined with meshd's deadline.
- `classifiers`: response classifiers that read `grpc-status` (kinds `grpc.*`).

The identifier for gRPC method paths is a routing library piece: `routing/identifiers/grpc.py`.
docs/grpc.md explains all of it for operators.

Where the HTTP/2 request path calls them (this package sits in meshd's bottom layer, so the
listener, pipeline and client may import it):
- timeouts stage: `timeout.request_deadline(request.headers, incoming, now_wall_ns, counters)` right
  after `l5d-ctx-deadline` is parsed (and enter the bounded path when a gRPC request has
  `grpc-timeout`); the result is the caller's deadline, expired -> RequestTimeout as today.
- each attempt, before the request head goes upstream (the client): `timeout.set_timeout(headers,
  timeout.downstream_value(ctx.deadline - clock.now()))` when `ctx.deadline` is set.
- retry stage, after an attempt's response: when `classifier.reads_trailers`, `classify_head(status,
  headers)`; None means the trailers decide: `classify_trailers(trailers)` once the body has ended
  (at once for a unary answer that arrived whole; else buffer a small unary answer, or return it
  and let accrual judge it).
- client (failure accrual): the same two calls, the second in the body's done callback.
- error responder: `status.is_grpc_request(request.headers)` -> answer `errors.grpc_error_headers(err)`
  with status 200 as one HEADERS frame with END_STREAM (trailers-only), not `error_response`.
- stats and access log: `status.status_label(status.status_of(trailers or head))`.
"""
