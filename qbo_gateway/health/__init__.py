"""Health: what live traffic and probes say about each realm, alerts, history and SLA figures.

`wiring.build_health` builds the parts once; callers take the part they need (the request
path and token manager the `observer`, the ops routes the views, alerts and probe cycle).
Rules turn events into per-realm figures and alerts; the probe cycle checks the idle realms
most in doubt (`probe_doubt`) within the read economy's monthly probe budget, and token
health comes from the token store, never from a probe; stores (memory, Redis, fallback)
keep history, alerts and leases; views shape what the ops listener serves.
"""
