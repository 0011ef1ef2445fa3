"""The ops listener: probes, metrics, the health API, admin actions and the client status page."""
