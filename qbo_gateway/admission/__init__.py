"""Admission: whether a request may go to QBO now (circuit breaker, rate windows, concurrency,
throttle cool-down), and whether a failed attempt may be sent again (`retry`).

`gate` is the proxy's one door; `records` holds the verdicts and the backend interface; the
backends are `backend_memory` (embedded), `backend_redis` (shared, with its Lua scripts),
`fallback` (Redis first, this replica's share while Redis is down) and `leases` (Redis mode:
slices of each realm's budget leased to this replica and spent without a round trip).
"""
