"""A create's or update's answer kept as its entity's read (Intuit's advice for metered reads).

QBO answers a successful write with the whole entity, exactly what `GET {entity}/{Id}`
would return, so the relayed body is also stored under that read's key, fresh for a while
(`EntityFreshness.kept_read`) under the realm's epoch the write itself started: a later
write to the realm ends it like any other stored read.
"""

from __future__ import annotations

from multidict import CIMultiDict

from qbo_gateway.cache.policy import key_for
from qbo_gateway.cache.response_cache import ResponseCache
from qbo_gateway.economy.freshness import EntityFreshness
from qbo_gateway.proxy.exchange import QboRequest
from qbo_gateway.proxy.relay import Keep


def write_through(
    cache: ResponseCache, fresh: EntityFreshness, req: QboRequest, epoch: int
) -> Keep:
    """What keeps the write's answer (handed to the relay, called once the body is whole)."""
    target = req.target

    async def store(status: int, headers: CIMultiDict[str], body: bytes) -> bool:
        kept = fresh.kept_read(target.rest, target.query, body)
        if kept is None or status != 200:
            return False
        key = key_for(target.realm_id, "GET", kept.rest, [], b"", req.headers.get("Accept"))
        return await cache.store(
            key,
            status,
            list(headers.items()),
            body,
            request_cache_control=None,
            epoch=epoch,
            fresh_for=kept.fresh_for,
        )

    return Keep(cache.max_entry_bytes, store)
