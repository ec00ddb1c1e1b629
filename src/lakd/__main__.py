"""`python -m lakd` == `lakd` (lets torchrun launch the CLI as a module)."""

from lakd.cli import main

raise SystemExit(main())
