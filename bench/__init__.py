"""meshd-bench: compares meshd with Envoy, HAProxy and nginx on one machine, under the same load.

Start with `bench/cli.py` (the `meshd-bench` command) and `docs/benchmarks.md` (what it measured).
"""
