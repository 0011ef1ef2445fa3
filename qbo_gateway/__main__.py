"""`python -m qbo_gateway` is the same as the `qbo-gateway` console script."""

from qbo_gateway.cli import main

raise SystemExit(main())
