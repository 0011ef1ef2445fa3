"""The read cache: the last good answer of each read, served fresh when allowed and stale
(clearly marked) when QBO fails.

`read_through` wraps one logical QBO call; `policy` decides keys, directives and what may
be stored; `response_cache` looks up, stores and answers; `records` holds what a stored read
is and the backend interface; `backend_memory`, `backend_redis` and `fallback` keep the
entries; in Redis mode `write_behind` queues the stores and writes them in batches.
"""
