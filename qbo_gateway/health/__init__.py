"""Health: what live traffic and probes say about each realm, alerts, history and SLA figures.

Rules turn events into per-realm figures and alerts; the probe cycle checks idle realms;
stores (memory, Redis, fallback) keep history, alerts and leases; views shape what the ops
listener serves.
"""
