"""The benchmark scenarios: each one starts its upstreams and targets, measures, and returns a result."""
