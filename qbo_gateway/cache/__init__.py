"""The read cache: the last good answer of each read, served fresh when allowed and stale
(clearly marked) when QBO fails.

`read_through` wraps one logical QBO call; `records` holds what a stored read is and the
backend interface; `backend_memory` and `backend_redis` keep the entries.
"""
