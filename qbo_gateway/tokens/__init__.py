"""Tokens: every realm's OAuth access token, fresh, refreshed exactly once, never lost.

`manager` hands out access tokens; `refresh` is one locked refresh; `coordinator` makes it
one per realm in this process and across replicas; `policy` says when to refresh; `outcomes`
remembers what the last refresh of each realm did; the stores (`store_sqlite`, `store_redis`)
keep encrypted, versioned `records`; `crypto` binds each ciphertext to its realm;
`local_copy` serves the last record seen while the store is unreachable; `refresher` is the
background pass; `wiring` builds the cipher and the manager from settings.
"""
