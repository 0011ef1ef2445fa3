"""The ops listener: probes, metrics, the health API, admin actions and the client status page.

Everything an operator or an orchestrator asks of a replica, on its own port so the proxy
port serves callers only: `listener` (probes, `/metrics`, admin refresh), `health_api` (the
`/health/...` routes), `read_guard` (the optional read token), `wiring` (the app, built).
"""
