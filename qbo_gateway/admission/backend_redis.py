"""Admission state in Redis, shared by every replica.

One EVALSHA admits a request (cool-down, breaker, concurrency and rate checked and
reserved atomically by `lua/admit.lua`) and one more records its outcome
(`lua/record.lua`); `lua/lease.lua` leases a slice of a realm's budget to a replica in one
more (`leases.LeasedAdmission` spends it without asking again). Every key of a realm shares
its hash tag, so the scripts work on Redis Cluster. Time comes from Redis `TIME` (one clock
for all replicas) unless a Clock is injected (tests), in which case the script gets `now`
as an argument. Redis errors become
`StateUnavailable`, which the fallback wrapper turns into local admission.
"""

from __future__ import annotations

import random as _random
import uuid
from collections.abc import Callable
from importlib import resources
from typing import Any

from redis.commands.core import AsyncScript

from qbo_gateway.admission.records import (
    Admission,
    AdmissionPolicy,
    BreakerState,
    LeaseAsk,
    LeaseGrant,
    Outcome,
    RealmLoad,
    RefusalReason,
    Verdict,
)
from qbo_gateway.clock import Clock
from qbo_gateway.state.errors import StateUnavailable
from qbo_gateway.state.keys import RedisKeys
from qbo_gateway.state.redis_client import REDIS_DOWN_ERRORS, RedisClient

_US = 1_000_000
_WAIT_POLL_US = 50_000


def _script(name: str) -> str:
    return resources.files("qbo_gateway.admission").joinpath("lua", name).read_text("utf-8")


def _us(seconds: float) -> int:
    return round(seconds * _US)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisAdmission:
    """`AdmissionBackend` on Redis: one round trip per admit, one per record."""

    def __init__(
        self,
        redis: RedisClient,
        policy: AdmissionPolicy,
        *,
        keys: RedisKeys | None = None,
        clock: Clock | None = None,
        random: Callable[[], float] = _random.random,
        lease_seconds: float = 0.5,
    ) -> None:
        self.policy = policy
        self.lease_seconds = lease_seconds  # how long a leased slice may be spent
        self._redis = redis
        self._keys = keys or RedisKeys()
        self._clock = clock
        self._random = random
        # register_script hashes locally and runs EVALSHA, loading the script only on
        # NOSCRIPT (first use, or after a Redis restart lost its script cache).
        self._admit: AsyncScript = redis.register_script(_script("admit.lua"))
        self._record: AsyncScript = redis.register_script(_script("record.lua"))
        self._lease: AsyncScript = redis.register_script(_script("lease.lua"))
        # The breaker must outlive the longest open time; past that an idle realm's
        # breaker key expires and the realm starts closed again.
        self._breaker_ttl_ms = int((policy.max_recovery_seconds + policy.lease_seconds) * 2000)

    async def load_scripts(self) -> None:
        """SCRIPT LOAD both scripts once at start-up, so no request pays for NOSCRIPT.

        Optional: without it the first EVALSHA of each script loads it on NOSCRIPT.
        """
        try:
            for script in (self._admit, self._record, self._lease):
                script.sha = await self._redis.script_load(script.script)
        except REDIS_DOWN_ERRORS as exc:
            raise StateUnavailable("redis admission unavailable") from exc

    def _now_arg(self) -> str:
        return "" if self._clock is None else str(_us(self._clock.now()))

    async def _now(self) -> float:
        if self._clock is not None:
            return self._clock.now()
        seconds, micros = await self._redis.time()
        return float(seconds) + micros / _US

    async def admit(self, realm_id: str, *, batch: bool = False) -> Admission:
        p, k = self.policy, self._keys
        keys = [
            k.breaker(realm_id),
            k.rate(realm_id),
            k.batch(realm_id),
            k.inflight(realm_id),
            k.cooldown(realm_id),
        ]
        args: list[str | int] = [
            self._now_arg(),
            uuid.uuid4().hex,
            "1" if batch else "0",
            p.per_minute,
            p.per_second,
            p.concurrency,
            p.batch_per_minute,
            _us(p.max_wait),
            _us(p.lease_seconds),
            _WAIT_POLL_US,
            self._breaker_ttl_ms,
        ]
        try:
            reply = await self._admit(keys=keys, args=args)
        except REDIS_DOWN_ERRORS as exc:
            raise StateUnavailable("redis admission unavailable") from exc
        verdict, delay, reason, retry_after, lease_id, gen, probe, transition = reply
        lease = _text(lease_id)
        why = _text(reason)
        moved = _text(transition)
        return Admission(
            Verdict(_text(verdict)),
            delay=int(delay) / _US,
            reason=RefusalReason(why) if why else None,
            retry_after=int(retry_after) / _US if why else None,
            lease_id=lease or None,
            generation=int(gen),
            probe=bool(int(probe)),
            transition=BreakerState(moved) if moved else None,
        )

    async def record(
        self,
        realm_id: str,
        admission: Admission,
        outcome: Outcome,
        *,
        retry_after: float | None = None,
    ) -> BreakerState | None:
        p, k = self.policy, self._keys
        keys = [k.breaker(realm_id), k.inflight(realm_id), k.cooldown(realm_id)]
        args: list[str | int] = [
            self._now_arg(),
            admission.lease_id or "",
            admission.generation,
            outcome.value,
            "1" if admission.probe else "0",
            "" if retry_after is None else _us(retry_after),
            repr(self._random()),
            p.failure_threshold,
            _us(p.recovery_seconds),
            _us(p.throttle_cooldown),
            self._breaker_ttl_ms,
            _us(p.max_recovery_seconds),
        ]
        try:
            reply = await self._record(keys=keys, args=args)
        except REDIS_DOWN_ERRORS as exc:
            raise StateUnavailable("redis admission unavailable") from exc
        moved = _text(reply)
        return BreakerState(moved) if moved else None

    async def lease(self, realm_id: str, holder: str, ask: LeaseAsk) -> LeaseGrant | None:
        p, k = self.policy, self._keys
        keys = [
            k.breaker(realm_id),
            k.rate(realm_id),
            k.batch(realm_id),
            k.inflight(realm_id),
            k.cooldown(realm_id),
            k.leasers(realm_id),
        ]
        returned = ";".join(f"{r.stamp}:{r.rate}:{r.batch_stamp}:{r.batch}" for r in ask.returned)
        # Stamps may lie up to a lease past the reservations admit.lua keeps for a minute.
        keep_ms = int((60 + max(p.max_wait, self.lease_seconds)) * 1000) + 1000
        args: list[str | int] = [
            self._now_arg(),
            holder,
            ask.rate,
            ask.batch,
            ask.members,
            p.per_minute,
            p.per_second,
            p.concurrency,
            p.batch_per_minute,
            _us(self.lease_seconds),
            _us(p.lease_seconds),
            keep_ms,
            returned,
            ",".join(ask.returned_members),
            ",".join(ask.held_members),
            f"{holder}:{uuid.uuid4().hex[:12]}:",
            "" if ask.successes is None else ask.successes,
        ]
        try:
            reply = await self._lease(keys=keys, args=args)
        except REDIS_DOWN_ERRORS as exc:
            raise StateUnavailable("redis admission unavailable") from exc
        refusal, gen, stamp, n_rate, batch_stamp, n_batch, members, lost, _end = reply
        why = _text(refusal)
        return LeaseGrant(
            refusal=RefusalReason(why) if why else None,
            generation=int(gen),
            stamp=_text(stamp),
            rate=int(n_rate),
            batch_stamp=_text(batch_stamp),
            batch=int(n_batch),
            members=tuple(_text(m) for m in members),
            lost=tuple(_text(m) for m in lost),
        )

    async def record_successes(self, realm_id: str, generation: int) -> None:
        """Successes need no lease freed: one record of the newest generation says it all."""
        await self.record(
            realm_id, Admission(Verdict.ADMIT, generation=generation), Outcome.SUCCESS
        )

    async def load(self, realm_id: str) -> RealmLoad:
        k = self._keys
        try:
            now = await self._now()
            now_us = _us(now)
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hmget(k.breaker(realm_id), "state", "failures", "open_until", "gen")
                pipe.get(k.cooldown(realm_id))
                pipe.lrange(k.rate(realm_id), 0, -1)
                pipe.zcount(k.inflight(realm_id), f"({now_us}", "+inf")
                b, cooldown, stamps, in_flight = await pipe.execute()
        except REDIS_DOWN_ERRORS as exc:
            raise StateUnavailable("redis admission unavailable") from exc
        state = BreakerState(_text(b[0])) if b[0] else BreakerState.CLOSED
        times = [int(s) for s in stamps]
        cooldown_us = int(cooldown) if cooldown else 0
        return RealmLoad(
            breaker=state,
            consecutive_failures=int(b[1] or 0),
            open_until=int(b[2]) / _US if state is BreakerState.OPEN and b[2] else None,
            cooldown_until=cooldown_us / _US if cooldown_us > now_us else None,
            requests_last_minute=sum(1 for t in times if now_us - 60 * _US < t <= now_us),
            requests_last_second=sum(1 for t in times if now_us - _US < t <= now_us),
            in_flight=int(in_flight),
            generation=int(b[3] or 0),
        )

    async def reset_breaker(self, realm_id: str) -> None:
        key = self._keys.breaker(realm_id)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hincrby(key, "gen", 1)
                pipe.hset(
                    key,
                    mapping={
                        "state": "closed",
                        "failures": 0,
                        "failed_probes": 0,
                        "probe_id": "",
                        "open_until": 0,
                    },
                )
                pipe.pexpire(key, self._breaker_ttl_ms)
                await pipe.execute()
        except REDIS_DOWN_ERRORS as exc:
            raise StateUnavailable("redis admission unavailable") from exc

    async def close(self) -> None:
        """The Redis client belongs to the composition root, which closes it."""
