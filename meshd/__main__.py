"""`python -m meshd` runs the CLI."""

from meshd.cli import main

raise SystemExit(main())
