"""Health history, alerts and probe leases shared through Redis by every replica.

The history is one small hash per realm and minute (`hb:<bucket>`, counters added with
`HINCRBY` by every replica, so the figures are the fleet's), plus one per minute for the
whole fleet; each expires once it leaves the history window, so storage stays bounded and
survives replica restarts. The last few events of a realm are a sorted set (score = time),
trimmed by age and count on every write. Alerts live in one hash: `alert:<id>` holds the record and
`active:<realm>:<kind>` points at the one active episode, so two replicas seeing the same
condition raise one alert (and only the one that created it notifies). The probe lease and
the "a live request succeeded lately" mark share the realm's hash tag, so one script
decides "busy / held / acquired" atomically, and it works on Redis Cluster.

Times come from the injected clock as arguments (tests move time; in production every
replica's wall clock is NTP-synced and the lease has slack). Redis errors become
`StateUnavailable`; `state/health_fallback.FallbackHealthStore` then serves from an
in-process store.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.commands.core import AsyncScript

from qbo_gateway.health.buckets import Counts, Series
from qbo_gateway.health.redis_scripts import ACK, ACQUIRE, RESOLVE, UPSERT
from qbo_gateway.health.store_memory import (
    BUCKET_SECONDS,
    RECENT_EVENTS,
    AlertRecord,
    HistoryEntry,
    LeaseResult,
    UpsertResult,
    lease_length,
)
from qbo_gateway.state.errors import StateUnavailable
from qbo_gateway.state.keys import RedisKeys
from qbo_gateway.state.redis_client import REDIS_DOWN_ERRORS, RedisClient

T = TypeVar("T")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _active_field(realm_id: str, kind: str) -> str:
    return f"active:{realm_id}:{kind}"


class RedisHealthStore:
    """`HealthStore` on Redis. Every method raises `StateUnavailable` when Redis is down."""

    def __init__(
        self,
        redis: RedisClient,
        *,
        history_seconds: float,
        keys: RedisKeys | None = None,
        bucket_seconds: float = BUCKET_SECONDS,
        recent_events: int = RECENT_EVENTS,
    ) -> None:
        self.history_seconds = history_seconds
        self.bucket_seconds = bucket_seconds
        self.max_entries = recent_events
        self._slots = math.ceil(history_seconds / bucket_seconds) + 1
        self._redis = redis
        self._keys = keys or RedisKeys()
        self._acquire: AsyncScript = redis.register_script(ACQUIRE)
        self._upsert: AsyncScript = redis.register_script(UPSERT)
        self._resolve: AsyncScript = redis.register_script(RESOLVE)
        self._ack: AsyncScript = redis.register_script(ACK)

    def _last_ok_key(self, realm_id: str) -> str:
        return self._keys.realm_key(realm_id, "last-live-ok")

    async def _call(self, op: Callable[[], Awaitable[T]]) -> T:
        try:
            return await op()
        except REDIS_DOWN_ERRORS as exc:
            raise StateUnavailable(f"redis: {type(exc).__name__}") from exc

    async def record(self, entries: dict[str, list[HistoryEntry]], *, now: float) -> None:
        await self.write_batch({}, {}, entries, now=now)

    async def history(self, realm_id: str, *, since: float, limit: int) -> list[HistoryEntry]:
        if limit <= 0:
            return []
        key = self._keys.health_history(realm_id)

        async def op() -> list[Any]:
            raw: list[Any] = await self._redis.zrevrangebyscore(
                key, "+inf", since, start=0, num=limit
            )
            return raw

        raw = await self._call(op)
        return [HistoryEntry.from_json(item) for item in reversed(raw)]

    async def add_counts(self, realms: dict[str, Series], fleet: Series, *, now: float) -> None:
        await self.write_batch(realms, fleet, {}, now=now)

    async def write_batch(
        self,
        realms: dict[str, Series],
        fleet: Series,
        entries: dict[str, list[HistoryEntry]],
        *,
        now: float,
    ) -> None:
        if not realms and not fleet and not entries:
            return

        async def op() -> None:
            pipe = self._redis.pipeline(transaction=False)
            for realm_id, series in realms.items():
                for bucket, counts in series.items():
                    self._add(pipe, self._keys.health_bucket(realm_id, bucket), bucket, counts, now)
            for bucket, counts in fleet.items():
                self._add(pipe, self._keys.fleet_bucket(bucket), bucket, counts, now)
            self._events(pipe, entries, now)
            await pipe.execute()

        await self._call(op)

    def _events(self, pipe: Any, entries: dict[str, list[HistoryEntry]], now: float) -> None:
        ttl_ms = int(self.history_seconds * 1000) + 60_000
        cutoff = now - self.history_seconds
        for realm_id, items in entries.items():
            if not items:
                continue
            key = self._keys.health_history(realm_id)
            members: dict[str, float] = {}
            last_live = 0.0
            for entry in items:
                # A nonce keeps two identical outcomes in one instant as two members.
                doc = entry.to_json()[:-1] + f',"n":"{uuid.uuid4().hex[:8]}"}}'
                members[doc] = entry.at
                if entry.live and entry.ok:
                    last_live = max(last_live, entry.at)
            pipe.zadd(key, members)
            pipe.zremrangebyscore(key, "-inf", f"({cutoff}")
            pipe.zremrangebyrank(key, 0, -(self.max_entries + 1))
            pipe.pexpire(key, ttl_ms)
            if last_live:
                pipe.set(self._last_ok_key(realm_id), repr(last_live), px=ttl_ms)

    def _add(self, pipe: Any, key: str, bucket: int, counts: Counts, now: float) -> None:
        for name, n in counts.items():
            pipe.hincrby(key, name, n)
        # The bucket leaves the window `history_seconds` after it ends.
        ends = (bucket + 1) * self.bucket_seconds + self.history_seconds
        pipe.pexpire(key, max(1000, int((ends - now) * 1000)))

    async def realm_series(self, realm_id: str, *, first: int, last: int) -> Series:
        return await self._series(lambda b: self._keys.health_bucket(realm_id, b), first, last)

    async def fleet_series(self, *, first: int, last: int) -> Series:
        return await self._series(self._keys.fleet_bucket, first, last)

    async def _series(self, key: Callable[[int], str], first: int, last: int) -> Series:
        numbers = list(range(max(first, last - self._slots + 1), last + 1))

        async def op() -> list[Any]:
            pipe = self._redis.pipeline(transaction=False)
            for bucket in numbers:
                pipe.hgetall(key(bucket))
            result: list[Any] = await pipe.execute()
            return result

        raw = await self._call(op) if numbers else []
        return {
            bucket: {_text(k): int(v) for k, v in doc.items()}
            for bucket, doc in zip(numbers, raw, strict=True)
            if doc
        }

    async def acquire_probe(
        self, realm_id: str, *, owner: str, now: float, interval: float
    ) -> LeaseResult:
        keys = [self._keys.monitor_lease(realm_id), self._last_ok_key(realm_id)]
        until = now + lease_length(interval)
        args: list[str | int] = [
            owner,
            repr(now),
            repr(interval),
            repr(until),
            max(1, math.ceil(interval * 2000)),
        ]

        async def op() -> Any:
            return await self._acquire(keys=keys, args=args)

        result = _text(await self._call(op))
        if result == "busy":
            return "busy"
        if result == "held":
            return "held"
        return "acquired"

    async def upsert_alert(self, alert: AlertRecord) -> UpsertResult:
        args = [_active_field(alert.realm_id, alert.kind), alert.id, alert.to_json()]

        async def op() -> Any:
            return await self._upsert(keys=[self._keys.alerts()], args=args)

        created, changed, doc = await self._call(op)
        return UpsertResult(
            AlertRecord.from_json(doc), created=bool(int(created)), changed=bool(int(changed))
        )

    async def resolve_alert(self, realm_id: str, kind: str, *, at: float) -> AlertRecord | None:
        args = [_active_field(realm_id, kind), repr(at)]

        async def op() -> Any:
            return await self._resolve(keys=[self._keys.alerts()], args=args)

        doc = await self._call(op)
        return AlertRecord.from_json(doc) if doc else None

    async def ack_alert(self, alert_id: str, *, at: float, by: str) -> AlertRecord | None:
        args = [alert_id, repr(at), by]

        async def op() -> Any:
            return await self._ack(keys=[self._keys.alerts()], args=args)

        doc = await self._call(op)
        return AlertRecord.from_json(doc) if doc else None

    async def alerts(self) -> list[AlertRecord]:
        async def op() -> dict[Any, Any]:
            raw: dict[Any, Any] = await self._redis.hgetall(self._keys.alerts())
            return raw

        raw = await self._call(op)
        return [
            AlertRecord.from_json(doc)
            for name, doc in raw.items()
            if _text(name).startswith("alert:")
        ]

    async def prune(self, *, resolved_before: float, keep_resolved: int) -> int:
        resolved = sorted(
            (a for a in await self.alerts() if not a.active), key=lambda a: a.resolved_at or 0.0
        )
        excess = max(0, len(resolved) - keep_resolved)
        drop = [
            f"alert:{a.id}"
            for i, a in enumerate(resolved)
            if i < excess or (a.resolved_at or 0.0) < resolved_before
        ]
        if not drop:
            return 0

        async def op() -> int:
            removed: int = await self._redis.hdel(self._keys.alerts(), *drop)
            return removed

        return await self._call(op)

    async def close(self) -> None:
        return None
