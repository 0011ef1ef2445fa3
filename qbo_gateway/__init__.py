"""qbo-gateway: a sidecar reverse proxy that makes QuickBooks Online safe to call.

The package is flat, one concept per module; `docs/architecture.md` maps it.
"""

__version__ = "0.1.0"
