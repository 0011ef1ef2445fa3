"""Admission: whether a request may go to QBO now (circuit breaker, rate windows, concurrency,
throttle cool-down), and whether a failed attempt may be sent again (`retry`).

`gate` is the proxy's one door; `records` holds the verdicts and the backend interface; the
backends are `backend_memory` (embedded), `backend_redis` (shared, with its Lua scripts) and
`fallback` (Redis first, this replica's share while Redis is down).
"""
