"""gRPC semantics on meshd's HTTP/2 path, as small pure pieces (no I/O, no clock of their own).

- `status`: the status codes, telling a gRPC request by its content-type, reading `grpc-status`,
  the gRPC spec's HTTP-status mapping and `grpc-message` percent-encoding.
- `errors`: a meshd error (MeshdError) as a trailers-only gRPC response.
- `timeout`: `grpc-timeout` parsed and formatted, and combined with meshd's deadline.
- `classifiers`: response classifiers that read `grpc-status` (kinds `grpc.*`).

The identifier for gRPC method paths is a routing library piece: `routing/identifiers/grpc.py`.
docs/grpc.md explains all of it for operators.
"""
