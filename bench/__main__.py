"""`python -m bench` runs the `meshd-bench` command."""

from bench.cli import main

raise SystemExit(main())
