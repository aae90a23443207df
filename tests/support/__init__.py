"""Test support: fake clock, upstream servers, raw connections, waiting helpers, a Kubernetes API stand-in."""
