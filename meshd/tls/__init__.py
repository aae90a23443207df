"""TLS for meshd's servers and clients: contexts, handshake metering, workload identity, rotation.

docs/tls.md describes the whole feature. Nothing here runs per request: contexts are built at
start and on rotation, the metering runs per handshake, identity is read once per connection.
"""
